"""od.detect against a tiny SavedModel with known detections (no training needed).

The model ignores its input and returns fixed OD-API-style outputs, so every expected pixel
box is known exactly: drawing, filtering, JSON, VOC pre-labels and error handling are
checked against those numbers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from od import detect
from od.model.inference import load_detector
from od.viz.draw import color_for

REPO = Path(__file__).resolve().parents[1]

# (normalised ymin, xmin, ymax, xmax), score, class id. Row 4 is past num_detections (=4) and
# must be ignored even though its score is high.
RAW = [
    ((0.20, 0.10, 0.80, 0.50), 0.90, 1),  # cat
    ((0.10, 0.60, 0.90, 0.95), 0.70, 2),  # dog
    ((0.30, 0.30, 0.60, 0.70), 0.60, 3),  # bird
    ((0.00, 0.00, 0.30, 0.30), 0.30, 1),  # cat, below the default threshold
    ((0.05, 0.05, 0.95, 0.95), 0.99, 2),  # padding (beyond num_detections)
]
NUM = 4
NAMES = {1: "cat", 2: "dog", 3: "bird"}
W, H = 200, 100


def px(i: int, w: int = W, h: int = H) -> tuple[float, float, float, float]:
    y0, x0, y1, x1 = RAW[i][0]
    return (x0 * w, y0 * h, x1 * w, y1 * h)


def _build_saved_model(path: Path, input_name: str = "images") -> None:
    import tensorflow as tf

    boxes = np.array([[r[0] for r in RAW]], np.float32)
    scores = np.array([[r[1] for r in RAW]], np.float32)
    classes = np.array([[r[2] for r in RAW]], np.float32)

    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=input_name)])
        def serve(self, images):
            b = tf.shape(images)[0]
            def tile(a):
                return tf.tile(tf.constant(a), tf.concat([[b], tf.ones(tf.rank(a) - 1, tf.int32)], 0))

            return {
                "detection_boxes": tile(boxes),
                "detection_scores": tile(scores),
                "detection_classes": tile(classes),
                "num_detections": tf.fill([b], tf.constant(float(NUM))),
            }

    m = Fixed()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    """``<root>/exported/tiny`` laid out like od.export's output; ``<root>/plain_sm`` a bare SavedModel."""
    root = tmp_path_factory.mktemp("models")
    exp = root / "exported" / "tiny"
    _build_saved_model(exp / "saved_model")
    (exp / "label_map.pbtxt").write_text(
        "".join(f"item {{\n  id: {i}\n  name: '{n}'\n}}\n" for i, n in NAMES.items())
    )
    (exp / "model.json").write_text(json.dumps({"classes": [{"id": i, "name": n} for i, n in NAMES.items()]}))
    import shutil

    shutil.copytree(exp / "saved_model", root / "plain_sm")
    return root


@pytest.fixture
def model(export_root) -> str:
    return str(export_root / "exported" / "tiny")


def _img(path: Path, size=(W, H), color=(40, 40, 40), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else None).save(path, format=fmt)
    return path


def _mask(img: Image.Image, rgb) -> np.ndarray:
    return np.all(np.asarray(img.convert("RGB")) == np.array(rgb, np.uint8), axis=-1)


def _run(args) -> int:
    return detect.main([str(a) for a in args])


# --------------------------------------------------------------------------- drawing + filters


def test_annotated_image_has_boxes_where_the_model_says(tmp_path, model, capsys):
    src = _img(tmp_path / "in" / "photo.png")
    out = tmp_path / "out"
    assert _run([src, "--model", model, "--out", out]) == 0
    ann = Image.open(out / "photo.png")
    assert ann.size == (W, H)
    for i, cid in ((0, 1), (1, 2), (2, 3)):
        m = _mask(ann, color_for(cid))
        x0, y0, x1, y1 = (round(v) for v in px(i))
        # the right and bottom edges are never covered by a label: colour on them
        assert m[(y0 + y1) // 2, x1 - 1 : x1 + 1].any(), f"right edge of box {i}"
        assert m[y1 - 1 : y1 + 1, x0 + (x1 - x0) // 3].any(), f"bottom edge of box {i}"
    # the below-threshold cat box at the top-left corner (0..60, 0..30) is not drawn: its right
    # edge column carries no cat colour below the label area
    cat = _mask(ann, color_for(1))
    assert not cat[0:18, 58:62].any()
    # the padding row (beyond num_detections, dog 0.99 over almost all the image) is ignored
    dog = _mask(ann, color_for(2))
    assert not dog[50, 8:12].any()
    stdout = capsys.readouterr().out
    assert "photo.png: 1 bird, 1 cat, 1 dog" in stdout
    assert Image.open(src).getpixel((20, 20)) == (40, 40, 40)  # input untouched


def _json_dets(path: Path) -> list[dict]:
    return json.loads(path.read_text())["detections"]


def test_threshold_classes_max_boxes(tmp_path, model):
    src = _img(tmp_path / "a.jpg")
    cases = {
        "default": ([], [0, 1, 2]),
        "low": (["--score-threshold", "0.2"], [0, 1, 2, 3]),
        "high": (["--score-threshold", "0.8"], [0]),
        "classes": (["--classes", "dog,bird"], [1, 2]),
        "classes_ids": (["--classes", "1", "--score-threshold", "0.1"], [0, 3]),
        "max": (["--max-detections", "2"], [0, 1]),
    }
    for name, (flags, expect) in cases.items():
        out = tmp_path / name
        assert _run([src, "--model", model, "--out", out, "--save-json", *flags]) == 0, name
        dets = _json_dets(out / "a.json")
        assert [d["score"] for d in dets] == pytest.approx([RAW[i][1] for i in expect]), name
        assert [d["class_id"] for d in dets] == [RAW[i][2] for i in expect], name


def test_unknown_class_is_usage_error(tmp_path, model, capsys):
    src = _img(tmp_path / "a.jpg")
    assert _run([src, "--model", model, "--classes", "zebra", "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert "zebra" in err and "cat (1)" in err


def test_save_json_pixel_boxes(tmp_path, model):
    w, h = 640, 360
    src = _img(tmp_path / "big.jpg", size=(w, h))
    out = tmp_path / "out"
    assert _run([src, "--model", model, "--out", out, "--save-json"]) == 0
    rec = json.loads((out / "big.json").read_text())
    assert (rec["width"], rec["height"]) == (w, h)
    for d, i in zip(rec["detections"], (0, 1, 2)):
        b = d["box_px"]
        assert (b["xmin"], b["ymin"], b["xmax"], b["ymax"]) == pytest.approx(px(i, w, h), abs=0.01)
        assert d["class_name"] == NAMES[RAW[i][2]]
    combined = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in combined["images"]] == ["big.jpg"]
    assert combined["images"][0]["detections"] == rec["detections"]


def test_exif_orientation_applied(tmp_path, model):
    """A portrait-stored JPEG with EXIF orientation 6 is detected on (and boxed) upright."""
    img = Image.new("RGB", (H, W), (40, 40, 40))  # stored 100x200, shown 200x100
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "rot.jpg"
    img.save(src, exif=exif.tobytes())
    out = tmp_path / "out"
    assert _run([src, "--model", model, "--out", out, "--save-json"]) == 0
    rec = json.loads((out / "rot.json").read_text())
    assert (rec["width"], rec["height"]) == (W, H)
    assert Image.open(out / "rot.jpg").size == (W, H)


@pytest.mark.parametrize("mode,fmt,suffix", [("L", "PNG", ".png"), ("RGBA", "PNG", ".png"), ("RGB", "WEBP", ".webp")])
def test_other_formats(tmp_path, model, mode, fmt, suffix):
    src = tmp_path / f"x{suffix}"
    Image.new(mode, (W, H)).save(src, format=fmt)
    out = tmp_path / "out"
    assert _run([src, "--model", model, "--out", out]) == 0
    ann = Image.open(out / "x.png")
    assert ann.mode == "RGB" and ann.size == (W, H)


# --------------------------------------------------------------------------- VOC pre-labels


def test_save_voc_reads_back(tmp_path, model):
    from od.data.voc import parse_voc

    w, h = 400, 300
    src = _img(tmp_path / "photos" / "shot.jpg", size=(w, h))
    out = tmp_path / "out"
    assert _run([src, "--model", model, "--out", out, "--save-voc"]) == 0
    xml = out / "voc" / "shot.xml"
    ann = parse_voc(xml, out / "voc")
    assert not [p for p in ann.problems if p.action != "fixed"], ann.problems
    assert ann.image_path and Path(ann.image_path).resolve() == (out / "voc" / "shot.jpg").resolve()
    assert (out / "voc" / "shot.jpg").read_bytes() == src.read_bytes()  # byte copy of the input
    assert (ann.width, ann.height) == (w, h)
    got = sorted((b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in ann.boxes)
    want = sorted((NAMES[RAW[i][2]], *(round(v) for v in px(i, w, h))) for i in (0, 1, 2))
    assert got == want

    # a second run keeps the (maybe hand-corrected) XML unless --force
    xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>lynx</name>"))
    assert _run([src, "--model", model, "--out", out, "--save-voc"]) == 0
    assert "lynx" in xml.read_text()
    assert _run([src, "--model", model, "--out", out, "--save-voc", "--force"]) == 0
    assert "lynx" not in xml.read_text()


def test_save_voc_then_records(tmp_path, model):
    """The active-learning loop: od.records reads the pre-labels folder with the same boxes."""
    records = pytest.importorskip("od.records")
    w, h = 320, 240
    photos = tmp_path / "photos"
    for n in range(3):
        _img(photos / f"p{n}.jpg", size=(w, h), color=(30 + 40 * n, 60, 90))
    out = tmp_path / "det"
    assert _run([photos, "--model", model, "--out", out, "--save-voc"]) == 0
    rec_out = tmp_path / "records"
    lm = tmp_path / "lm.pbtxt"
    rc = records.main([str(out / "voc"), "--out", str(rec_out), "--label-map", str(lm), "--workers", "1"])
    assert rc == 0
    report = json.loads((rec_out / "report.json").read_text())
    assert {c["name"] for c in report["classes"]} == {"cat", "dog", "bird"}
    total_boxes = sum(s["num_boxes"] for s in report["splits"].values())
    total_images = sum(s["num_images"] for s in report["splits"].values())
    assert (total_images, total_boxes) == (3, 9)
    assert not [p for p in report["problems"] if p["action"] != "fixed"], report["problems"]

    from od.io.example import decode_example
    from od.io.tfrecord import iter_records

    files = sorted(rec_out.glob("*.tfrecord"))
    want = sorted(
        (NAMES[RAW[i][2]],) + tuple(round(v) for v in px(i, w, h)) for i in (0, 1, 2)
    )
    seen = 0
    for ex in (decode_example(s) for s in iter_records([str(f) for f in files])):
        got = sorted(
            (t, *(round(float(v)) for v in (x0 * ex.width, y0 * ex.height, x1 * ex.width, y1 * ex.height)))
            for t, (y0, x0, y1, x1) in zip(ex.class_texts, ex.boxes_yxyx)
        )
        assert got == want
        seen += 1
    assert seen == 3


# --------------------------------------------------------------------------- bad input


def test_corrupt_and_empty_images_do_not_stop_the_batch(tmp_path, model, capsys):
    folder = tmp_path / "mixed"
    _img(folder / "good1.jpg")
    _img(folder / "sub" / "good2.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not looked at")
    out = tmp_path / "out"
    rc = _run([folder, "--model", model, "--out", out])
    captured = capsys.readouterr()
    assert rc == 1
    assert (out / "good1.jpg").is_file() and (out / "sub" / "good2.png").is_file()
    assert "corrupt.jpg" in captured.err and "empty.png" in captured.err
    assert "notes.txt" not in captured.err
    assert not (out / "corrupt.jpg").exists()


def test_missing_inputs_reported(tmp_path, model, capsys):
    good = _img(tmp_path / "g.jpg")
    rc = _run([good, tmp_path / "nope.jpg", str(tmp_path / "*.bmp"), "--model", model, "--out", tmp_path / "o"])
    err = capsys.readouterr().err
    assert rc == 1 and "nope.jpg" in err and "*.bmp" in err
    assert (tmp_path / "o" / "g.jpg").is_file()


@pytest.mark.timeout(120)
def test_fifos_sockets_and_folders_named_like_images_are_reported_not_opened(tmp_path, model, capsys):
    folder = tmp_path / "in"
    _img(folder / "good.jpg")
    os.mkfifo(folder / "f.jpg")  # open() would wait for a writer
    (folder / "d.jpg").mkdir()  # a folder named like an image, with no image in it
    _img(folder / "named.png" / "inner.png")  # a folder named like an image that holds one: searched
    direct_fifo, direct_dir = tmp_path / "direct.jpg", tmp_path / "dir.png"
    os.mkfifo(direct_fifo)
    direct_dir.mkdir()
    out = tmp_path / "out"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "s.png"))
        rc = _run([folder, direct_fifo, direct_dir, str(tmp_path / "dir*"), "--model", model, "--out", out,
                   "--save-json"])
    finally:
        sock.close()
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert (out / "good.jpg").is_file() and (out / "named.png" / "inner.png").is_file()
    for path, kind in ((folder / "f.jpg", "a FIFO"), (folder / "s.png", "a socket"), (folder / "d.jpg", "a folder"),
                       (direct_fifo, "a FIFO"), (direct_dir, "a folder")):
        assert f"{path}: not a regular file ({kind})" in cap.err, (path, cap.err)
    assert f"{direct_dir}: no such file" not in cap.err and f"{direct_fifo}: no such file" not in cap.err
    assert "2 image(s) done, 5 failed" in cap.out
    failed = json.loads((out / "detections.json").read_text())["failed"]
    assert sorted(Path(f["image"]).name for f in failed) == ["d.jpg", "dir.png", "direct.jpg", "f.jpg", "s.png"]


@pytest.mark.timeout(120)
def test_voc_copy_reads_the_image_without_blocking(tmp_path, model, monkeypatch, capsys):
    """The VOC pre-label copies the input's bytes: they are read like every image (read_file, never a
    plain open), so an input swapped for a FIFO after it was decoded cannot hang the run."""
    import threading

    from od.data import images

    src = _img(tmp_path / "in" / "shot.jpg")
    real_open = images.open_image_rgb
    done, blocked = threading.Event(), []

    def unblock() -> None:  # a reader stuck on the FIFO gets a writer (then EOF): a failure, not a hang
        while not done.wait(10):
            blocked.append(True)
            try:
                os.close(os.open(src, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    def open_then_swap(path):
        img = real_open(path)
        os.unlink(path)
        os.mkfifo(path)
        threading.Thread(target=unblock, daemon=True).start()
        return img

    monkeypatch.setattr(images, "open_image_rgb", open_then_swap)
    out = tmp_path / "out"
    try:
        rc = _run([src, "--model", model, "--out", out, "--save-voc"])
    finally:
        done.set()
    assert not blocked, "opening the input for the VOC copy waited on the FIFO"
    assert rc == 0, capsys.readouterr().err
    # the decoded pixels are stored instead of the (now unreadable) input's bytes
    assert (out / "voc" / "shot.xml").is_file()
    with Image.open(out / "voc" / "shot.jpg") as im:
        assert im.size == (W, H)


def test_non_utf8_file_names(tmp_path, model, capsys):
    folder = tmp_path / "in"
    _img(folder / "plain.jpg")
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    _img(Path(os.fsdecode(raw)))
    with open(os.path.join(os.fsencode(folder), b"bad\xff.png"), "wb") as f:
        f.write(b"not a png")
    out = tmp_path / "out"
    rc = _run([folder, "--model", model, "--out", out, "--save-json", "--save-voc"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err  # the broken one
    assert f"{folder}/caf\\xe9.jpg: 1 bird, 1 cat, 1 dog" in cap.out, cap.out
    assert f"{folder}/bad\\xff.png" in cap.err and "\\udc" not in cap.err
    assert os.path.isfile(os.path.join(os.fsencode(out), b"caf\xe9.jpg"))  # outputs keep the name's bytes
    combined = json.loads((out / "detections.json").read_text(encoding="utf-8"))
    assert sorted(Path(i["image"]).name for i in combined["images"]) == ["caf\\xe9.jpg", "plain.jpg"]
    assert [Path(f["image"]).name for f in combined["failed"]] == ["bad\\xff.png"]
    # VOC XML holds text: the pre-label and its image copy are named with the escapes, and match
    from od.data.voc import parse_voc

    ann = parse_voc(out / "voc" / "caf\\xe9.xml", out / "voc")
    assert ann.image_path and Path(ann.image_path).name == "caf\\xe9.jpg" and Path(ann.image_path).is_file()
    assert len(ann.boxes) == 3 and (out / "voc" / "plain.xml").is_file()


def test_missing_model_lists_exports(tmp_path, export_root, monkeypatch, capsys):
    src = _img(tmp_path / "a.jpg")
    monkeypatch.chdir(export_root)
    assert _run([src, "--model", "exported/nope"]) == 2
    err = capsys.readouterr().err
    assert "exported/nope" in err and str(Path("exported") / "tiny") in err
    # a training dir (no saved_model) says to export it
    run_dir = tmp_path / "runs" / "m"
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.yaml").write_text("task: {}\n")
    assert _run([src, "--model", run_dir]) == 2
    assert "make export" in capsys.readouterr().err


def test_default_model_is_newest_export(tmp_path, export_root, monkeypatch, capsys):
    src = _img(tmp_path / "a.jpg")
    monkeypatch.chdir(export_root)
    assert _run([src, "--out", tmp_path / "o"]) == 0
    err = capsys.readouterr().err
    assert "using default model" in err and "tiny" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert _run([src]) == 2
    assert "make export" in capsys.readouterr().err


def test_plain_saved_model_without_label_map(tmp_path, export_root, capsys):
    src = _img(tmp_path / "a.jpg")
    out = tmp_path / "o"
    assert _run([src, "--model", export_root / "plain_sm", "--out", out, "--save-json"]) == 0
    err = capsys.readouterr().err
    assert "numeric class ids" in err
    assert [d["class_name"] for d in _json_dets(out / "a.json")] == ["1", "2", "3"]
    # with --label-map the names come back
    lm = export_root / "exported" / "tiny" / "label_map.pbtxt"
    assert _run([src, "--model", export_root / "plain_sm", "--label-map", lm, "--out", out, "--save-json"]) == 0
    assert [d["class_name"] for d in _json_dets(out / "a.json")] == ["cat", "dog", "bird"]
    capsys.readouterr()
    # a --label-map that does not exist: a warning naming it, numeric ids, still exit 0
    missing = tmp_path / "missing.pbtxt"
    assert _run([src, "--model", export_root / "plain_sm", "--label-map", missing, "--out", out, "--save-json"]) == 0
    err = capsys.readouterr().err
    assert str(missing) in err and "numeric class ids" in err
    assert [d["class_name"] for d in _json_dets(out / "a.json")] == ["1", "2", "3"]


def test_hub_handle_without_network_is_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    src = _img(tmp_path / "a.jpg")
    handle = "https://tfhub.dev/tensorflow/faster_rcnn/resnet50_v1_640x640/1"
    import tensorflow_hub as hub

    def offline(*a, **k):  # the sandbox has no internet; make the test independent of it
        raise OSError("URL fetch failure: network unreachable")

    monkeypatch.setattr(hub, "load", offline)
    assert _run([src, "--model", handle, "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert handle in err and "--model PATH" in err


# --------------------------------------------------------------------------- outputs never clobber inputs


def test_name_collisions_and_inputs_protected(tmp_path, model):
    a = _img(tmp_path / "a" / "img.jpg")
    b = _img(tmp_path / "b" / "img.jpg")
    c = _img(tmp_path / "a" / "img.png")
    out = tmp_path / "out"
    assert _run([tmp_path / "a", b, c, "--model", model, "--out", out, "--save-json"]) == 0
    outs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    jsons = [p for p in outs if p.endswith(".json") and p != "detections.json"]
    assert len(jsons) == 3  # three inputs, three distinct outputs
    assert {json.loads((out / j).read_text())["image"] for j in jsons} == {str(a), str(b), str(c)}

    # --out is the input folder itself: the input is never overwritten
    before = a.read_bytes()
    assert _run([a, "--model", model, "--out", a.parent]) == 0
    assert a.read_bytes() == before
    assert (a.parent / "img.od.jpg").is_file()


def test_out_dir_inside_input_folder_is_not_searched(tmp_path, model):
    folder = tmp_path / "photos"
    _img(folder / "x.jpg")
    out = folder / "detections"
    assert _run([folder, "--model", model, "--out", out]) == 0
    assert _run([folder, "--model", model, "--out", out, "--save-json"]) == 0
    combined = json.loads((out / "detections.json").read_text())
    assert len(combined["images"]) == 1


def test_save_crops(tmp_path, model):
    src = tmp_path / "c.png"
    arr = np.zeros((H, W, 3), np.uint8)
    arr[:, :, 0] = np.arange(W, dtype=np.uint8)[None, :]  # red ramp along x
    Image.fromarray(arr).save(src)
    out = tmp_path / "out"
    assert _run([src, "--model", model, "--out", out, "--save-crops"]) == 0
    crop = Image.open(out / "crops" / "cat" / "c_1.jpg")
    assert crop.size == (80, 60)  # x 20..100, y 20..80
    assert abs(int(np.asarray(crop)[30, 0, 0]) - 20) <= 3  # starts at x=20 of the ramp
    assert (out / "crops" / "dog" / "c_2.jpg").is_file() and (out / "crops" / "bird" / "c_3.jpg").is_file()


# --------------------------------------------------------------------------- inference path


def test_detector_matches_signature(export_root):
    import tensorflow as tf

    det = load_detector(str(export_root / "exported" / "tiny"))
    arr = np.zeros((H, W, 3), np.uint8)
    dets = det.detect(arr, score_threshold=0.0)
    assert [(d.class_name, round(d.score, 2)) for d in dets] == [("cat", 0.9), ("dog", 0.7), ("bird", 0.6), ("cat", 0.3)]
    b = dets[0].box
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == pytest.approx(px(0), abs=1e-3) and b.name == "cat"
    direct = tf.saved_model.load(str(export_root / "plain_sm")).signatures["serving_default"](images=tf.constant(arr[None]))
    np.testing.assert_allclose(direct["detection_boxes"].numpy()[0, :4], det.raw(arr)["detection_boxes"][:4])


# --------------------------------------------------------------------------- start-up


def test_help_is_fast_and_does_not_import_tensorflow():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        "import sys, time; t=time.perf_counter()\n"
        "from od import detect\n"
        "try:\n    detect.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TF_LOADED' if any(m.split('.')[0] in ('tensorflow', 'tensorflow_hub', 'keras') for m in sys.modules) else 'NO_TF')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    assert "--score-threshold" in res.stdout and res.stdout.strip().endswith("NO_TF")

    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "od.detect", "--help"], check=False, capture_output=True, text=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - t
    assert res.returncode == 0 and "--save-voc" in res.stdout
    assert elapsed < 3.0, f"--help took {elapsed:.2f}s"  # ~0.15 s idle; slack for a busy CI machine


def test_cli_subprocess_exit_code_and_output(tmp_path, model):
    """The real `python -m od.detect` (fast exit after TF): exit 1 with a bad image, output flushed."""
    folder = tmp_path / "in"
    _img(folder / "ok.jpg")
    (folder / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run(
        [sys.executable, "-m", "od.detect", str(folder), "--model", model, "--out", str(out), "--save-json"],
        check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert res.returncode == 1, res.stderr
    assert "ok.jpg: 1 bird, 1 cat, 1 dog" in res.stdout and "1 image(s) done, 1 failed" in res.stdout
    assert "broken.jpg" in res.stderr
    assert json.loads((out / "ok.json").read_text())["detections"]
