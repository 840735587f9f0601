"""od.classify against a real tiny classification export (3 shape classes, trained 2 steps at 32 px,
built once per module through od.records, od.train and od.export).

Two steps cannot learn the shapes, but the model is real: every score printed or saved is checked
against :meth:`Classifier.probabilities` run directly on the same image.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from od import classify

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
CLASSES = ("circle", "square", "triangle")  # od.data.synthetic_classes.CLASSES[:3]


def _shape_images(folder: Path, seed: int, indices, fmt: str = "JPEG", per_class: bool = False) -> list[Path]:
    """Demo shapes (image i of the 6-class demo data, kept only when its class is one of CLASSES)."""
    from od.data.synthetic_classes import make_image

    paths = []
    for i in indices:
        img, cls = make_image(seed, i)
        assert cls in CLASSES
        d = folder / cls if per_class else folder
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{cls}_{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        img.save(p, format=fmt, quality=90) if fmt == "JPEG" else img.save(p, format=fmt)
        paths.append(p)
    return paths


def _three_class_indices(n: int) -> list[int]:
    return [i for i in range(n) if i % 6 < 3]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A real od classification export: data -> od.records -> od.train (2 steps) -> od.export.
    While it is in use, ``Classifier.load`` of it is done once and shared (each od.classify run
    would spend seconds loading the same SavedModel again); other models still load for real."""
    pytest.importorskip("official.vision")
    from od import export as od_export
    from od import records as od_records
    from od import train as od_train

    root = tmp_path_factory.mktemp("classify_model")
    _shape_images(root / "data", 0, _three_class_indices(36), per_class=True)  # 6 per class
    rec = root / "records"
    assert od_records.main([str(root / "data"), "--out", str(rec), "--label-map", str(rec / "label_map.pbtxt"),
                            "--quiet", "--workers", "1"]) == 0
    assert od_train.main(["--config", "classifier_resnet18_cpu", "--records", str(rec), "--model-dir",
                          str(root / "run"), "--steps", "2", "--quiet",
                          "--set", "task.model.input_size=[32,32,3]",
                          "--set", "task.train_data.global_batch_size=8",
                          "--set", "task.validation_data.global_batch_size=8"]) == 0
    exp = root / "exported" / "shapes"
    assert od_export.main(["--model-dir", str(root / "run"), "--out", str(exp), "--quiet"]) == 0
    assert (exp / "saved_model" / "saved_model.pb").is_file()

    from od.model.classifier import Classifier

    real_load, loaded = Classifier.load, {}

    def load_once(source, id_to_name):
        if source.saved_model != str(exp / "saved_model"):
            return real_load(source, id_to_name)
        key = tuple(sorted(id_to_name.items()))
        if key not in loaded:
            loaded[key] = real_load(source, id_to_name)
        return loaded[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Classifier, "load", staticmethod(load_once))
        yield exp


@pytest.fixture(scope="module")
def classifier(export):
    """The export loaded directly, for the expected scores."""
    from od.model.classifier import Classifier
    from od.model.source import resolve_labels, resolve_model

    source = resolve_model(str(export))
    id_to_name, _ = resolve_labels(source, None)
    return Classifier.load(source, id_to_name)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Six new shapes (another seed): four JPEGs and two PNGs."""
    folder = tmp_path / "photos"
    _shape_images(folder, 7, [0, 1, 2, 6])
    _shape_images(folder, 7, [7, 8], fmt="PNG")
    return folder


def _run(args) -> int:
    return classify.main([str(a) for a in args])


def _expected(classifier, path: Path) -> np.ndarray:
    from od.data.images import open_image_rgb

    return classifier.probabilities(open_image_rgb(path))


def _blocks(stdout: str) -> dict[str, list[str]]:
    """``path: head`` line + its indented ``  name (score = s)`` lines, by path."""
    out: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("  ") and current is not None and "(score = " in line:
            out[current].append(line.strip())
        elif ": " in line and not line.startswith(" "):
            current = line.split(": ", 1)[0]
            out[current] = [line]
        else:
            current = None
    return out


def _table(stdout: str) -> dict[str, int]:
    """The summary table: predicted class -> images."""
    lines = stdout.splitlines()
    start = lines.index(next(ln for ln in lines if ln.split() == ["predicted", "images"])) + 2
    rows = {}
    for ln in lines[start:]:
        parts = ln.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        rows[parts[0]] = int(parts[1])
    return rows


# --------------------------------------------------------------------------- no model needed


def test_help_does_not_import_tensorflow():
    code = ("import sys, od.classify; od.classify.build_parser().format_help(); "
            "print('tensorflow' in sys.modules)")
    r = subprocess.run([PY, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    r = subprocess.run([PY, "-m", "od.classify", "--help"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--sort-into" in r.stdout and "--top-k" in r.stdout


def _one_error_line(err: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("od: error:")]
    assert len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in err


def test_missing_model_is_one_error_line(tmp_path, capsys):
    img = _shape_images(tmp_path, 0, [0])[0]
    assert _run([img, "--model", tmp_path / "nope"]) == 2
    _one_error_line(capsys.readouterr().err, "nope", "not found")


def test_detection_export_named_in_model_json_is_refused_before_tensorflow(tmp_path, capsys):
    exp = tmp_path / "exported" / "det"
    (exp / "saved_model").mkdir(parents=True)
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"not read")
    (exp / "model.json").write_text(json.dumps({"format": "od-export", "format_version": 1, "task": "detection",
                                                "classes": [{"id": 1, "name": "raccoon"}]}))
    img = _shape_images(tmp_path, 0, [0])[0]
    out = tmp_path / "out"
    assert _run([img, "--model", exp, "--save-json", "--out", out]) == 2
    _one_error_line(capsys.readouterr().err, str(exp), "detection", "od.detect")
    assert not out.exists()


def test_detection_savedmodel_is_one_error_line(tmp_path, capsys):
    """A bare SavedModel (no model.json) with OD API outputs: Classifier.load says it is a detector."""
    import tensorflow as tf

    class Det(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, images):
            b = tf.shape(images)[0]
            return {"detection_boxes": tf.zeros([b, 1, 4]), "detection_scores": tf.zeros([b, 1]),
                    "detection_classes": tf.zeros([b, 1]), "num_detections": tf.zeros([b])}

    m = Det()
    sm = tmp_path / "det_sm"
    tf.saved_model.save(m, str(sm), signatures={"serving_default": m.serve})
    img = _shape_images(tmp_path, 0, [0])[0]
    assert _run([img, "--model", sm]) == 2
    _one_error_line(capsys.readouterr().err, "probabilities", "od.detect")


# --------------------------------------------------------------------------- the real export


def test_top_k_lines_are_printed_highest_first(export, classifier, photos, capsys):
    assert _run([photos, "--model", export, "--top-k", "2", "--quiet"]) == 0
    cap = capsys.readouterr()
    blocks = _blocks(cap.out)
    images = sorted(photos.iterdir())
    assert sorted(blocks) == sorted(str(p) for p in images)
    for p in images:
        head, *lines = blocks[str(p)]
        probs = _expected(classifier, p)
        order = np.argsort(-probs, kind="stable")
        assert len(lines) == 2
        assert lines == [f"{CLASSES[i]} (score = {probs[i]:.5f})" for i in order[:2]]
        assert head == f"{p}: {CLASSES[order[0]]} {probs[order[0]]:.2f}"
    assert "6 image(s) classified, 0 unsure, 0 failed" in cap.out
    predicted = [b[0].split(": ", 1)[1].split()[0] for b in blocks.values()]
    assert _table(cap.out) == {c: predicted.count(c) for c in set(predicted)}


def test_top_k_above_the_class_count_is_clamped(export, photos, capsys):
    img = photos / "circle_000.jpg"
    assert _run([img, "--model", export, "--top-k", "10"]) == 0
    cap = capsys.readouterr()
    head, *lines = _blocks(cap.out)[str(img)]
    assert len(lines) == 3 and {ln.split()[0] for ln in lines} == set(CLASSES)
    assert "--top-k 10 is more than the model's 3 classes; showing 3" in cap.err


def test_threshold_one_makes_every_image_unsure(export, photos, tmp_path, capsys):
    sorted_dir = tmp_path / "sorted"
    assert _run([photos, "--model", export, "--score-threshold", "1.0", "--sort-into", sorted_dir]) == 0
    cap = capsys.readouterr()
    heads = [b[0] for b in _blocks(cap.out).values()]
    assert len(heads) == 6 and all(h.split(": ", 1)[1].startswith("unsure (") for h in heads)
    assert "0 failed" in cap.out and "6 unsure" in cap.out and _table(cap.out) == {"unsure": 6}
    assert sorted(p.name for p in (sorted_dir / "unsure").iterdir()) == sorted(p.name for p in photos.iterdir())
    assert [p.name for p in sorted_dir.iterdir()] == ["unsure"]


def test_json_and_csv_hold_the_scores_classifier_gives(export, classifier, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run([photos, "--model", export, "--out", out, "--save-json", "--save-csv", "--top-k", "2",
                 "--threshold", "0.4"]) == 0
    capsys.readouterr()
    data = json.loads((out / "classifications.json").read_text())
    assert data["classes"] == list(CLASSES) and data["top_k"] == 2 and data["score_threshold"] == 0.4
    assert data["failed"] == []
    rows = {r["path"]: r for r in csv.DictReader((out / "classifications.csv").open())}
    assert list(next(iter(rows.values()))) == ["path", "top1_class", "top1_score", "unsure", *CLASSES]
    by_path = {d["image"]: d for d in data["images"]}
    images = sorted(photos.iterdir())
    assert sorted(by_path) == sorted(rows) == sorted(str(p) for p in images)
    for p in images:
        probs = _expected(classifier, p)
        order = np.argsort(-probs, kind="stable")
        d, row = by_path[str(p)], rows[str(p)]
        assert [t["class"] for t in d["top_k"]] == [CLASSES[i] for i in order[:2]]
        assert [t["id"] for t in d["top_k"]] == [int(i) + 1 for i in order[:2]]
        np.testing.assert_allclose([t["score"] for t in d["top_k"]], probs[order[:2]], atol=1e-6)
        np.testing.assert_allclose([d["scores"][c] for c in CLASSES], probs, atol=1e-6)
        np.testing.assert_allclose([float(row[c]) for c in CLASSES], probs, atol=1e-6)
        assert abs(sum(d["scores"].values()) - 1.0) < 1e-4
        unsure = bool(probs[order[0]] < 0.4)
        assert d["unsure"] is unsure and row["unsure"] == str(unsure).lower()
        assert d["predicted"] == ("unsure" if unsure else CLASSES[order[0]])
        assert row["top1_class"] == CLASSES[order[0]] and abs(float(row["top1_score"]) - probs[order[0]]) < 1e-6
    assert not any(out.glob("*.jpg")) and not any(out.glob("*.png"))  # no --save-images: no copies


def test_save_images_draws_the_label_on_a_copy(export, photos, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out = tmp_path / "out"
    assert _run([photos, "--model", export, "--out", out, "--save-images"]) == 0
    capsys.readouterr()
    for p in sorted(photos.iterdir()):
        copy = out / p.name  # same relative name (and format)
        assert copy.is_file(), copy
        src, drawn = Image.open(p).convert("RGB"), Image.open(copy)
        assert drawn.size == src.size and drawn.format == ("PNG" if p.suffix == ".png" else "JPEG")
        a, b = np.asarray(src, np.int16), np.asarray(drawn.convert("RGB"), np.int16)
        banner = np.abs(a[:8, :30] - b[:8, :30]).mean()  # the label's top-left corner
        rest = np.abs(a[a.shape[0] // 2:] - b[b.shape[0] // 2:])
        assert banner > 20, (p, banner)
        if p.suffix == ".png":  # lossless: the label is the only change
            assert rest.max() == 0
        else:
            assert rest.mean() < 3
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_label_text():
    from od.viz.label import classification_label, draw_label

    assert classification_label("circle", 0.934) == "circle 0.93"
    assert classification_label("circle", 0.41, unsure=True) == "unsure: circle 0.41"
    img = Image.new("RGB", (60, 40), (0, 0, 0))
    out = draw_label(img, "circle 0.93", 1)
    assert out.size == img.size and img.getpixel((1, 1)) == (0, 0, 0)  # a copy
    assert out.getpixel((1, 1)) == (230, 25, 75)  # class 1's colour (od.viz.draw palette)
    assert out.getpixel((30, 39)) == (0, 0, 0)
    assert draw_label(img, "unsure: circle 0.41", None).getpixel((1, 1)) == (128, 128, 128)


def test_a_file_od_did_not_write_is_kept_unless_force(export, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "circle_000.jpg"
    mine.write_bytes(b"user's file")
    assert _run([photos, "--model", export, "--out", out, "--save-images"]) == 1
    err = capsys.readouterr().err
    assert mine.read_bytes() == b"user's file"
    assert "circle_000.jpg already exists and od.classify did not write it; pass --force" in err
    assert (out / "square_001.jpg").is_file()
    # a re-run replaces its own copies (the manifest lists them), and --force the user's file
    assert _run([photos, "--model", export, "--out", out, "--save-images", "--force"]) == 0
    assert Image.open(mine).size == Image.open(photos / "circle_000.jpg").size


def test_sort_into_copies_good_images_and_names_the_bad_ones(export, classifier, tmp_path, capsys):
    folder = tmp_path / "mixed"
    good = _shape_images(folder, 3, [0, 1, 2]) + _shape_images(folder / "sub", 3, [6])
    full = (folder / "circle_000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (folder / "notes.jpg").write_text("this is not an image\n")
    os.mkfifo(folder / "pipe.jpg")  # open() would wait for a writer
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    dest = tmp_path / "sorted"

    assert _run([folder, "--model", export, "--sort-into", dest]) == 1
    cap = capsys.readouterr()
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("od: error:")]
    for bad in ("truncated.jpg", "notes.jpg", "pipe.jpg"):
        assert any(str(folder / bad) in ln for ln in errors), (bad, cap.err)
    assert "FIFO" in cap.err and "Traceback" not in cap.err
    assert "4 image(s) classified, 0 unsure, 3 failed" in cap.out
    for p in good:
        name = CLASSES[int(np.argmax(_expected(classifier, p)))]
        copy = dest / name / p.name
        assert copy.read_bytes() == p.read_bytes(), copy
        assert copy.stat().st_mtime_ns == p.stat().st_mtime_ns  # copy2: times kept
    copies = sorted(p.name for p in dest.rglob("*") if p.is_file())
    assert copies == sorted(p.name for p in good)  # nothing of the bad files, no temp files
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()} == before

    # a second run never replaces the first copies and does not duplicate identical ones; another
    # image with a taken name gets _1 beside the first
    first = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert _run([folder, "--model", export, "--sort-into", dest]) == 1
    capsys.readouterr()
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == first


def test_copy_into_never_replaces_and_never_duplicates(tmp_path):
    from od.classify import copy_into

    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    a.parent.mkdir(), b.parent.mkdir()
    a.write_bytes(b"first image"), b.write_bytes(b"another image, same name")
    dest = tmp_path / "sorted" / "circle"
    assert copy_into(a, dest) == dest / "x.jpg"
    assert copy_into(a, dest) == dest / "x.jpg"  # the same bytes again: that copy, no x_1
    assert copy_into(b, dest) == dest / "x_1.jpg"  # a different file: beside it, never over it
    assert (dest / "x.jpg").read_bytes() == b"first image"
    assert (dest / "x_1.jpg").read_bytes() == b"another image, same name"
    (dest / "x_2.jpg").symlink_to(b)  # a link with the same bytes is not taken for a copy
    assert copy_into(b, dest) == dest / "x_1.jpg"
    assert sorted(p.name for p in dest.iterdir()) == ["x.jpg", "x_1.jpg", "x_2.jpg"]


def test_sorted_copies_inside_the_inputs_are_not_classified_again(export, photos, capsys):
    dest = photos / "sorted"
    assert _run([photos, "--model", export, "--sort-into", dest]) == 0
    capsys.readouterr()
    assert _run([photos, "--model", export, "--sort-into", dest]) == 0
    cap = capsys.readouterr()
    assert "6 image(s) classified" in cap.out and "skipping 6 image(s)" in cap.err
    assert len([p for p in dest.rglob("*") if p.is_file()]) == 6
