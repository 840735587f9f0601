"""od.records on a folder of images per class: Model Garden's classification keys, labels.txt, the promises."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hostile import fifo, img
from PIL import Image

from od import records
from od.io.label_map import read_label_map
from od.io.tfrecord import iter_records

COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 200)}


def _dataset(root: Path, n: int = 5, classes=("cat", "dog"), split: str | None = None) -> Path:
    for c in classes:
        for i in range(n):
            img((root / split / c if split else root / c) / f"{c}{i}.jpg", size=(40 + i, 30), color=COLORS[c])
    return root


def _run(data: Path, out: Path, *extra: str) -> tuple[int, dict | None]:
    rc = records.main([str(data), "--out", str(out), "--label-map", str(out / "label_map.pbtxt"),
                       "--quiet", "--workers", "1", *extra])
    rep = out / "report.json"
    return rc, json.loads(rep.read_text()) if rep.exists() else None


def _decode_mg(out: Path) -> dict[str, tuple[str, int, np.ndarray, dict]]:
    """filename -> (split, label, image, other features), read by Model Garden's classification decoder."""
    import tensorflow as tf
    from official.vision.dataloaders.classification_input import Decoder

    dec = Decoder()
    extra = {k: tf.io.FixedLenFeature((), t) for k, t in (
        ("image/class/text", tf.string), ("image/format", tf.string), ("image/height", tf.int64),
        ("image/width", tf.int64), ("image/source_id", tf.string), ("image/filename", tf.string))}
    res = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for rec in iter_records(shard):
            d = dec.decode(tf.constant(rec))
            image = tf.io.decode_image(d["image/encoded"], channels=3).numpy()
            f = {k: v.numpy() for k, v in tf.io.parse_single_example(rec, extra).items()}
            res[f["image/filename"].decode()] = (shard.name.split("-")[0], int(d["image/class/label"]), image, f)
    return res


def _filenames(out: Path) -> dict[str, str]:
    """filename -> split, from the records alone (no TensorFlow)."""
    from od.io.example import _example_class

    res = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for rec in iter_records(shard):
            ex = _example_class()()
            ex.ParseFromString(rec)
            res[ex.features.feature["image/filename"].bytes_list.value[0].decode()] = shard.name.split("-")[0]
    return res


def test_records_decode_with_model_gardens_classification_decoder(tmp_path, capsys):
    data = _dataset(tmp_path / "D", n=4, classes=("cat", "dog", "owl"))
    img(data / "dog" / "grey.png", size=(20, 10), color=(90, 90, 90), fmt="PNG", mode="L")
    rc, rep = _run(data, tmp_path / "R")
    assert rc == 0
    assert "layout: a folder per class" in capsys.readouterr().err
    got = _decode_mg(tmp_path / "R")
    assert len(got) == 13
    want_label = {"cat": 0, "dog": 1, "owl": 2}
    for name, (split, label, image, f) in got.items():
        cls = name.split("/")[0]
        assert label == want_label[cls] and f["image/class/text"].decode() == cls
        assert f["image/format"] == b"jpeg" and image.shape == (f["image/height"], f["image/width"], 3)
        assert int(f["image/source_id"]) > 0
        colour = (90, 90, 90) if name.endswith("grey.png") else COLORS[cls]
        assert np.abs(image.astype(int) - colour).max() <= 3, name
    assert got["dog/grey.png"][2].shape == (10, 20, 3)
    assert rep["task"] == "classification" and rep["labels"] == ["cat", "dog", "owl"] and rep["num_classes"] == 3
    per_class = {c: sum(sp["per_class"][c]["images"] for sp in rep["splits"].values()) for c in want_label}
    assert per_class == {"cat": 4, "dog": 5, "owl": 4}
    from od.io.schema import read_report, report_task

    assert report_task(read_report(tmp_path / "R" / "report.json")) == "classification"


def test_label_map_and_labels_txt_match_and_keep_ids(tmp_path):
    data = _dataset(tmp_path / "D", classes=("dog", "owl"))
    out = tmp_path / "R"
    assert _run(data, out)[0] == 0
    assert read_label_map(out / "label_map.pbtxt").items == ((1, "dog"), (2, "owl"))
    assert (out / "labels.txt").read_text() == "dog\nowl\n"
    # A new class sorts first but is appended: the old ids (and record labels) stay.
    _dataset(data, classes=("cat",))
    rc, rep = _run(data, out)
    assert rc == 0
    assert read_label_map(out / "label_map.pbtxt").items == ((1, "dog"), (2, "owl"), (3, "cat"))
    assert (out / "labels.txt").read_text() == "dog\nowl\ncat\n"
    assert rep["labels"] == ["dog", "owl", "cat"]
    labels = {name.split("/")[0]: label for name, (_, label, _, _) in _decode_mg(out).items()}
    assert labels == {"dog": 0, "owl": 1, "cat": 2}


def test_a_labels_txt_of_the_user_is_not_replaced_without_force(tmp_path):
    data = _dataset(tmp_path / "D")
    out = tmp_path / "R"
    out.mkdir()
    (out / "labels.txt").write_text("tabby\nsiamese\n")
    rc, rep = _run(data, out)
    assert rc == 2 and rep is None and (out / "labels.txt").read_text() == "tabby\nsiamese\n"
    assert _run(data, out, "--force")[0] == 0
    assert (out / "labels.txt").read_text() == "cat\ndog\n"


def test_hash_splits_are_stable_when_images_are_added(tmp_path):
    data = _dataset(tmp_path / "D", n=30)
    assert _run(data, tmp_path / "R1")[0] == 0
    before = _filenames(tmp_path / "R1")
    assert {"train", "val"} <= set(before.values())
    _dataset(tmp_path / "more", n=30)
    for p in (tmp_path / "more").rglob("*.jpg"):
        p.rename(data / p.parent.name / f"new_{p.name}")
    assert _run(data, tmp_path / "R2")[0] == 0
    after = _filenames(tmp_path / "R2")
    assert len(after) == 120
    assert {k: after[k] for k in before} == before


def test_presplit_folders_are_honoured(tmp_path):
    data = tmp_path / "D"
    _dataset(data, n=3, split="train")
    _dataset(data, n=2, split="val")
    _dataset(data, n=1, split="test")
    rc, rep = _run(data, tmp_path / "R", "--val-fraction", "0.5")
    assert rc == 0 and rep["summary"]["split_source"] == "folders"
    got = _filenames(tmp_path / "R")
    assert len(got) == 12
    assert all(split == name.split("/")[0] for name, split in got.items())
    assert {s: sp["per_class"]["cat"]["images"] for s, sp in rep["splits"].items()} == {"train": 3, "val": 2, "test": 1}


def _hostile(tmp_path: Path) -> Path:
    data = _dataset(tmp_path / "D", n=3)
    (data / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    fifo(data / "dog" / "pipe.jpg")
    outside = img(tmp_path / "elsewhere" / "secret.jpg")
    os.symlink(outside, data / "dog" / "link.jpg")
    return data


def test_corrupt_fifo_and_link_outside_are_reported_and_the_rest_converted(tmp_path):
    data = _hostile(tmp_path)
    rc, rep = _run(data, tmp_path / "R")
    assert rc == 1
    problems = {p["file"]: p for p in rep["problems"]}
    assert set(problems) == {"cat/broken.jpg", "dog/pipe.jpg", "dog/link.jpg"}
    assert all(p["action"] == "skipped_image" for p in problems.values())
    assert "regular file" in problems["dog/pipe.jpg"]["problem"]
    assert "outside the dataset" in problems["dog/link.jpg"]["problem"]
    assert sorted(_filenames(tmp_path / "R")) == sorted(f"{c}/{c}{i}.jpg" for c in ("cat", "dog") for i in range(3))
    assert rep["summary"]["images_converted"] == 6 and rep["summary"]["images_skipped"] == 3


def test_strict_writes_nothing(tmp_path, capsys):
    data = _hostile(tmp_path)
    out = tmp_path / "R"
    rc, rep = _run(data, out, "--strict")
    assert rc == 1 and rep is None
    assert not out.exists() or not any(out.iterdir())
    assert "--strict: 3 problems found; nothing written" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["empty_folder", "single_class", "all_unusable"])
def test_an_empty_class_or_a_single_class_is_one_error(tmp_path, capsys, case):
    data = _dataset(tmp_path / "D", classes=("cat",) if case == "single_class" else ("cat", "dog"))
    if case == "empty_folder":
        (data / "owl").mkdir()
        (data / "owl" / "notes.txt").write_text("no images here")
    if case == "all_unusable":
        (data / "owl").mkdir()
        (data / "owl" / "bad.jpg").write_bytes(b"not an image")
    rc, rep = _run(data, tmp_path / "R")
    err = capsys.readouterr().err
    assert rc == 2 and rep is None
    lines = [ln for ln in err.splitlines() if ln.startswith("od: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert {"empty_folder": "owl", "single_class": "only one class folder (cat/)",
            "all_unusable": "owl/ has no usable image"}[case] in lines[0]
    assert not (tmp_path / "R" / "label_map.pbtxt").exists()


def test_layout_flag_overrides_detection(tmp_path, capsys):
    data = _dataset(tmp_path / "D")
    (data / "cat" / "stray.xml").write_text("<annotation/>")  # an XML makes auto pick a VOC layout
    rc, _ = _run(data, tmp_path / "R0")
    assert rc != 0 or json.loads((tmp_path / "R0" / "report.json").read_text()).get("task") != "classification"
    rc, rep = _run(data, tmp_path / "R1", "--layout", "classification")
    assert rc == 0 and rep["task"] == "classification" and rep["summary"]["images_converted"] == 10
    capsys.readouterr()
    clean = _dataset(tmp_path / "C")
    rc, rep = _run(clean, tmp_path / "R2", "--layout", "voc")
    assert rc == 2 and rep is None
    assert "no Pascal VOC XML found" in capsys.readouterr().err


def test_stored_image_is_the_upright_picture(tmp_path):
    """EXIF orientation is applied (TF ignores it), like in detection."""
    data = _dataset(tmp_path / "D", n=2)
    im = Image.new("RGB", (40, 20), (10, 10, 10))
    im.paste((250, 250, 250), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    (data / "cat" / "rot.jpg").write_bytes(buf.getvalue())
    assert _run(data, tmp_path / "R")[0] == 0
    image = _decode_mg(tmp_path / "R")["cat/rot.jpg"][2]
    assert image.shape == (40, 20, 3)
    assert image[5, 10].mean() > 200 and image[35, 10].mean() < 50  # white half on top once rotated


def test_a_class_folder_linked_from_outside_and_a_non_utf8_name_are_not_read(tmp_path):
    from hostile import bytes_named_file, jpeg_bytes

    data = _dataset(tmp_path / "D", n=2)
    _dataset(tmp_path / "elsewhere", n=2, classes=("owl",))
    os.symlink(tmp_path / "elsewhere" / "owl", data / "owl")
    bytes_named_file(data / "cat", b"caf\xe9.jpg", jpeg_bytes())
    rc, rep = _run(data, tmp_path / "R")
    assert rc == 1
    problems = {p["file"]: p["problem"] for p in rep["problems"]}
    assert "outside the dataset" in problems["owl/"] and "not valid UTF-8" in problems["cat/caf\\xe9.jpg"]
    assert rep["labels"] == ["cat", "dog"] and rep["summary"]["images_converted"] == 4
    rc, rep = _run(data, tmp_path / "R2", "--follow-links")
    assert rc == 1 and rep["labels"] == ["cat", "dog", "owl"] and rep["outside_roots"]


def test_report_task_is_checked():
    from od.io.schema import SchemaError, parse_report, report_task

    assert report_task(parse_report('{"splits": {}}', "r")) == "detection"
    with pytest.raises(SchemaError, match="unknown task 'segmentation'"):
        parse_report('{"splits": {}, "task": "segmentation"}', "r")
