"""YOLO txt: the finder (data.yaml and bare images/ + labels/), the reader's rules (each malformed row
reported with its file and line while the rest converts), EXIF-rotated images, the writer's round
trip, and od.detect --save-yolo read back by od.records."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from od import records
from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Box
from od.data import synthetic
from od.data.formats import LabelledImage, find_layout, read_labels, writer
from od.data.layout import UsageError, detect_layout
from od.data.walk import Roots
from od.data.yolo import DECIMALS, find_yolo, label_path, read_yolo, write_yolo
from od.io.example import decode_example
from od.io.tfrecord import iter_records

NAMES = ["circle", "square", "triangle"]


# --------------------------------------------------------------------------- helpers


def _yolo_rows(boxes, w, h, names=NAMES) -> str:
    rows = []
    for b in boxes:
        cx, cy = (b.xmin + b.xmax) / 2 / w, (b.ymin + b.ymax) / 2 / h
        rows.append(f"{names.index(b.name)} {cx:.6f} {cy:.6f} {(b.xmax - b.xmin) / w:.6f} {(b.ymax - b.ymin) / h:.6f}")
    return "".join(r + "\n" for r in rows)


def _synthetic(ds: Path, splits: dict[str, range], images="images", labels="labels", seed=3) -> dict[str, list[Box]]:
    """make_image images + YOLO rows; returns image file name -> source boxes (pixels)."""
    truth = {}
    for split, idx in splits.items():
        for i in idx:
            img, boxes = synthetic.make_image(seed, i)
            sub = f"/{split}" if split else ""
            p = ds / f"{images}{sub}" / f"img{i}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            img.save(p, quality=95)
            lp = ds / f"{labels}{sub}" / f"img{i}.txt"
            lp.parent.mkdir(parents=True, exist_ok=True)
            lp.write_text(_yolo_rows(boxes, *img.size))
            truth[p.name] = boxes
    return truth


def _records(ds: Path, out: Path, *extra: str) -> tuple[int, dict | None]:
    rc = records.main([str(ds), "--out", str(out), "--label-map", str(out.parent / f"{out.name}_lm.pbtxt"),
                       "--workers", "1", "--quiet", *extra])
    rep = out / "report.json"
    return rc, json.loads(rep.read_text()) if rep.exists() else None


def _examples(out: Path) -> dict[str, tuple[str, object]]:
    res = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for rec in iter_records(shard):
            ex = decode_example(rec)
            res[ex.filename] = (shard.name.split("-")[0], ex)
    return res


def _problems(labels) -> list[tuple[str, str, str]]:
    return sorted((p.file, p.problem, p.action) for ps in labels.problems.values() for p in ps)


def _read(ds: Path):
    lay = find_yolo(ds)
    assert lay is not None and lay.kind == "yolo"
    return read_yolo(lay, Roots.of(ds))


def _same_boxes(got: list[Box], want: list[Box], tol: float) -> None:
    key = lambda b: (b.name, round(b.xmin), round(b.ymin))  # noqa: E731
    got, want = sorted(got, key=key), sorted(want, key=key)
    assert [b.name for b in got] == [b.name for b in want]
    for g, w in zip(got, want):
        assert np.allclose([g.xmin, g.ymin, g.xmax, g.ymax], [w.xmin, w.ymin, w.xmax, w.ymax], atol=tol), (g, w)


# --------------------------------------------------------------------------- layouts end to end


def test_data_yaml_layout_through_records_keeps_splits_and_boxes(tmp_path):
    ds = tmp_path / "ds"
    truth = _synthetic(ds, {"train": range(0, 5), "val": range(5, 8), "test": range(8, 10)})
    (ds / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/test\n"
                                  "names:\n  0: circle\n  1: square\n  2: triangle\n")
    assert detect_layout(ds).kind == "yolo"
    rc, rep = _convert(ds, tmp_path / "rec")
    assert rc == 0, rep["problems"]
    assert rep["problems"] == []
    ex = _examples(tmp_path / "rec")
    want_split = {f"img{i}.jpg": s for s, r in (("train", range(5)), ("val", range(5, 8)), ("test", range(8, 10)))
                  for i in r}
    assert {Path(k).name: v[0] for k, v in ex.items()} == want_split  # the format's splits, not the hash
    for name, (_, e) in ex.items():
        # 6 decimals of the size: at most 1e-6 * 400 px per value, 1.5e-6 * size per edge
        _same_boxes(e.boxes_px(), truth[Path(name).name], tol=1e-3)
    assert sorted(Path(k).parent.name for k in ex) == sorted(want_split.values())  # train/img0.jpg: folder kept


def _convert(ds, out, *extra):
    return _records(ds, out, *extra)


def test_bare_images_labels_with_classes_txt_hash_split_and_split_folders(tmp_path):
    flat = tmp_path / "flat"
    truth = _synthetic(flat, {"": range(6)})
    (flat / "classes.txt").write_text("circle\nsquare\ntriangle\n")
    labels = _read(flat)
    assert labels.splits == {} and len(labels.entries) == 6 and _problems(labels) == []
    assert {e.key for e in labels.entries} == {f"img{i}" for i in range(6)}
    for e in labels.entries:
        _same_boxes(list(e.ann.boxes), truth[Path(e.image).name], tol=1e-3)

    split = tmp_path / "split"
    _synthetic(split, {"train": range(3), "valid": range(3, 5)})
    (split / "obj.names").write_text("circle\nsquare\ntriangle\n")
    labels = _read(split)
    assert labels.splits == {"train/img0": "train", "train/img1": "train", "train/img2": "train",
                             "valid/img3": "val", "valid/img4": "val"}
    assert labels.split_source == "YOLO folders"

    # images/ + labels/ without any class names: a half match, said as a usage error
    bare = tmp_path / "bare"
    _synthetic(bare, {"": range(1)})
    with pytest.raises(UsageError, match="no class names"):
        detect_layout(bare)
    assert records.main([str(bare), "--out", str(tmp_path / "r"), "--quiet"]) == 2


def test_yaml_variants_list_file_roboflow_paths_names_list_and_val_equal_train(tmp_path):
    # Roboflow: train/images + ../ paths that Ultralytics retries without the ../; names as a list
    rf = tmp_path / "rf"
    _synthetic(rf, {"": range(2)}, images="train/images", labels="train/labels")
    _synthetic(rf, {"": range(2, 3)}, images="valid/images", labels="valid/labels")
    (rf / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 3\n"
                                  "names: ['circle', 'square', 'triangle']\n")
    labels = _read(rf)
    assert labels.splits == {"train/images/img0": "train", "train/images/img1": "train",
                             "valid/images/img2": "val"}
    assert _problems(labels) == []

    # a list file of images, './' lines beside it, other lines from path:
    lst = tmp_path / "lst"
    _synthetic(lst, {"all": range(4)})
    (lst / "train.txt").write_text("./images/all/img0.jpg\nimages/all/img1.jpg\n\n")
    (lst / "val.txt").write_text("./images/all/img2.jpg\n")
    (lst / "set.yaml").write_text("train: train.txt\nval: [val.txt]\nnames: {0: circle, 1: square, 2: triangle}\n")
    labels = _read(lst)
    # list files may name images anywhere in the dataset: keys are relative to DATA_DIR
    assert labels.splits == {"images/all/img0": "train", "images/all/img1": "train", "images/all/img2": "val"}
    assert len(labels.entries) == 3  # img3 is in no list

    # val: the same folder as train is no split: hash split, said
    same = tmp_path / "same"
    _synthetic(same, {"train": range(3)})
    (same / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [circle, square, triangle]\n")
    labels = _read(same)
    assert labels.splits == {} and len(labels.entries) == 3
    assert any("train and val name the same images" in p for _, p, a in _problems(labels) if a == FIXED)

    # half matches: a data.yaml without names, a names mapping with a bad key, duplicate names
    for text, words in (("train: images/train\n", "no names"),
                        ("train: images/train\nnames: {a: circle}\n", "not a class index"),
                        ("train: images/train\nnames: [circle, circle]\n", "its own name"),
                        ("train: [1, 2]\nnames: [circle]\n", "must be a folder"),
                        ("names: [a\n", "not valid YAML")):
        (same / "data.yaml").write_text(text)
        with pytest.raises(UsageError, match=words):
            find_layout("yolo", same)


def test_yaml_path_and_splits_outside_the_dataset_are_not_read(tmp_path):
    outside = tmp_path / "elsewhere"
    _synthetic(outside, {"train": range(2)})
    ds = tmp_path / "ds"
    _synthetic(ds, {"train": range(2, 4)})
    # path: points at another dataset outside DATA_DIR: not used, splits looked up from the yaml's folder
    (ds / "data.yaml").write_text(f"path: {outside}\ntrain: images/train\nnames: [circle, square, triangle]\n")
    labels = _read(ds)
    assert {Path(e.image).name for e in labels.entries} == {"img2.jpg", "img3.jpg"}
    assert all(Path(e.image).is_relative_to(ds) for e in labels.entries)
    assert any("path: " in p and "outside the dataset folder" in p for _, p, _ in _problems(labels))
    # a split that only exists outside (through ../): refused; nothing left: a usage error
    (ds / "data.yaml").write_text("train: ../elsewhere/images/train\nnames: [circle, square, triangle]\n")
    with pytest.raises(UsageError, match="none of its train/val/test folders"):
        find_yolo(ds)
    # a link inside the dataset that leads out: the images are refused (--follow-links would allow them)
    (ds / "images" / "ext").symlink_to(outside / "images" / "train")
    (ds / "data.yaml").write_text("train: images/train\nval: images/ext\nnames: [circle, square, triangle]\n")
    labels = _read(ds)
    assert {Path(e.image).name for e in labels.entries} == {"img2.jpg", "img3.jpg"}
    assert any("outside the dataset" in p for _, p, a in _problems(labels) if a == SKIPPED_IMAGE)


# --------------------------------------------------------------------------- the reader's rules


def test_malformed_rows_reported_with_file_and_line_rest_converts(tmp_path):
    ds = tmp_path / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    (ds / "labels" / "train").mkdir(parents=True)
    w, h = 200, 100
    for n in ("a", "neg", "nolabel", "poly"):
        Image.new("RGB", (w, h), (90, 90, 90)).save(ds / "images" / "train" / f"{n}.png")
    (ds / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"        # 1 good
        "3 0.5 0.5 0.2 0.2\n"        # 2 class out of range
        "x 0.5 0.5 0.2 0.2\n"        # 3 class not an integer
        "1 0.5 nan 0.2 0.2\n"        # 4 not finite
        "1 0.5 0.5 0 0.2\n"          # 5 zero width
        "1 0.5 0.5 0.2\n"            # 6 too few values
        "1 120 40 30 20\n"           # 7 pixels where fractions belong
        "\n"                         # 8 blank: nothing to say
        "2 0.995 0.5 0.02 0.2 0.87\n"  # 9 score column ignored; edge a hair outside: kept, clipped later
        "1.0 1.005 0.5 0.1 0.1\n"    # 10 class '1.0' accepted, cx a hair over 1: kept
    )
    (ds / "labels" / "train" / "neg.txt").write_text("")
    (ds / "labels" / "train" / "poly.txt").write_text("1 0.1 0.2 0.4 0.1 0.3 0.6\n0 0.1 0.1 0.1 0.1 0.1 0.1 0.1 0.1\n")
    (ds / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (ds / "labels" / "train" / "classes.txt").write_text("not a label file\n")
    (ds / "data.yaml").write_text("train: images/train\nnames: [circle, square, triangle]\n")
    labels = _read(ds)
    probs = _problems(labels)
    f = "labels/train/a.txt"
    for line, words in ((2, "class index 3 is out of range (data.yaml names classes 0..2)"),
                        (3, "class index 'x' is not an integer"), (4, "'nan' is not a finite number"),
                        (5, "is not positive"), (6, "4 values; expected"), (7, "not fractions of the image size")):
        assert any(fl == f"{f} line {line}" and words in p and a == DROPPED_BOX for fl, p, a in probs), (line, probs)
    assert any(fl == f and "6th value" in p and "line 9" in p for fl, p, _ in probs)
    assert any(fl == "labels/train/poly.txt" and "polygons on line 1 reduced to their bounding boxes" in p
               and a == FIXED for fl, p, a in probs)
    assert any(fl == "labels/train/poly.txt line 2" and "no area" in p for fl, p, _ in probs)
    assert any(fl == "images/train/nolabel.png" and "no label file labels/train/nolabel.txt" in p
               and "background" in p and a == FIXED for fl, p, a in probs)
    assert any(fl == "labels/train/ghost.txt" and "without an image" in p and a == SKIPPED_IMAGE for fl, p, a in probs)
    assert not any("classes.txt" in fl for fl, _, _ in probs)
    by = {e.key: e for e in labels.entries}
    assert set(by) == {"train/a", "train/neg", "train/nolabel", "train/poly"}
    assert by["train/neg"].ann.boxes == () and by["train/nolabel"].ann.boxes == ()
    a = by["train/a"].ann
    assert [(b.name, b.origin) for b in a.boxes] == [("circle", "line 1"), ("triangle", "line 9"), ("square", "line 10")]
    assert (a.boxes[0].xmin, a.boxes[0].ymin, a.boxes[0].xmax, a.boxes[0].ymax) == pytest.approx((80, 30, 120, 70))
    [pb] = by["train/poly"].ann.boxes
    assert pb.name == "square" and (pb.xmin, pb.ymin, pb.xmax, pb.ymax) == pytest.approx((20, 10, 80, 60))
    assert labels.num_files == 5  # 4 images + the label file without one

    # through od.records: the rest converts; the hair-outside boxes are clipped by the writer's box rules
    rc, rep = _convert(ds, tmp_path / "rec")
    assert rc == 1  # done, but an input (the label file without an image) was skipped
    ex = {Path(k).name: e for k, (_, e) in _examples(tmp_path / "rec").items()}
    assert set(ex) == {"a.png", "neg.png", "nolabel.png", "poly.png"}
    assert len(ex["a.png"].boxes_px()) == 3 and ex["neg.png"].boxes_px() == []
    assert max(b.xmax for b in ex["a.png"].boxes_px()) <= w
    files = {p["file"] for p in rep["problems"]}
    assert {f"{f} line 2", "labels/train/ghost.txt", "images/train/nolabel.png"} <= files
    assert any("clipped" in p["problem"] and p["file"] == f for p in rep["problems"])


def test_odd_files_two_images_one_label_fifo_and_unreadable_header(tmp_path):
    ds = tmp_path / "ds"
    img = ds / "images"
    img.mkdir(parents=True)
    (ds / "labels").mkdir()
    Image.new("RGB", (64, 48)).save(img / "a.jpg")
    Image.new("RGB", (64, 48)).save(img / "a.png")  # same label file as a.jpg
    (img / "broken.jpg").write_bytes(b"not an image at all")
    os.mkfifo(img / "pipe.jpg")  # must be skipped, never opened (it would block)
    (ds / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (ds / "labels" / "broken.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (ds / "classes.txt").write_text("thing\n")
    labels = _read(ds)
    probs = _problems(labels)
    assert [e.key for e in labels.entries] == ["a"] and Path(labels.entries[0].image).name == "a.jpg"
    assert any(f == "images/a.png" and "shares its label file labels/a.txt with images/a.jpg" in p for f, p, _ in probs)
    assert any(f == "images/pipe.jpg" and "FIFO" in p for f, p, _ in probs)
    assert any(f == "images/broken.jpg" and "size" in p and a == SKIPPED_IMAGE for f, p, a in probs)
    assert not any(f == "labels/broken.txt" for f, _, _ in probs)  # its image is there (and reported)


def _exif(orientation: int) -> bytes:
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)


def test_exif_orientation_6_fractions_are_of_the_displayed_image(tmp_path):
    """Ultralytics (OpenCV) applies EXIF orientation, so its fractions are of the rotated image:
    the reader declares that size, od rotates the pixels, and the box lands on the red square."""
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    box = (12, 6, 44, 26)  # on the 96x64 image as viewers show it
    shown = Image.new("RGB", (96, 64), (90, 90, 90))
    shown.paste((255, 0, 0), box)
    # stored sideways (64x96) with EXIF 6: viewers rotate it back to 96x64
    shown.transpose(Image.Transpose.ROTATE_90).save(ds / "images" / "rot.jpg", "JPEG", quality=95, exif=_exif(6))
    (ds / "labels" / "rot.txt").write_text(_yolo_rows([Box(*box, name="red")], 96, 64, ["red"]))
    (ds / "classes.txt").write_text("red\n")
    [e] = _read(ds).entries
    assert (e.ann.width, e.ann.height) == (96, 64)  # the displayed frame, not the stored 64x96
    rc, rep = _convert(ds, tmp_path / "rec")
    assert rc == 0
    [(_, ex)] = _examples(tmp_path / "rec").values()
    im = Image.open(io.BytesIO(ex.image_bytes))
    assert im.size == (96, 64) == (ex.width, ex.height)
    [b] = ex.boxes_px()
    a = np.asarray(im.convert("RGB"), dtype=int)
    x0, y0, x1, y1 = (int(round(v)) for v in (b.xmin, b.ymin, b.xmax, b.ymax))
    assert (x0, y0, x1, y1) == box
    inside = a[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    assert ((inside[..., 0] > 200) & (inside[..., 1] < 60)).mean() > 0.95
    a[y0:y1, x0:x1] = 0
    assert ((a[..., 0] > 200) & (a[..., 1] < 60)).mean() < 0.01
    assert any("matches the rotated image" in p["problem"] for p in rep["problems"])


# --------------------------------------------------------------------------- the writer


def test_write_yolo_round_trip_boxes_classes_splits(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows: list[LabelledImage] = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        img, boxes = synthetic.make_image(5, i)
        p = src / f"s{i}.jpg"
        img.save(p, quality=95)
        boxes = [Box(b.xmin + 0.3, b.ymin + 0.7, b.xmax - 0.2, b.ymax, name=b.name) for b in boxes]  # sub-pixel
        rows.append(LabelledImage(str(p), f"sub/s{i}.jpg", img.width, img.height, tuple(boxes), split))
    Image.new("RGB", (50, 40)).save(src / "neg.png")
    rows.append(LabelledImage(str(src / "neg.png"), "neg.png", 50, 40, (), "train"))
    Image.new("RGB", (50, 40)).save(src / "s0.png")  # same stem as sub/s0.jpg once in the same folder
    rows.append(LabelledImage(str(src / "s0.png"), "sub/s0.png", 50, 40, (Box(5, 5, 20, 30, "odd class"),), "train"))
    classes = [*NAMES, "odd class", "unused: yes"]
    out = tmp_path / "out"
    out.mkdir()
    copied = []

    def copy(source: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(source).read_bytes())
        copied.append(dest)

    files = writer("yolo")(rows, classes, out, copy)
    assert set(copied) <= set(files) and len(copied) == len(rows)
    assert (out / "labels" / "train" / "neg.txt").read_text() == ""
    assert (out / "images" / "train" / "sub" / "s0-png.png").is_file()
    line = (out / "labels" / "val" / "sub" / "s2.txt").read_text().splitlines()[0].split()
    assert all(len(v.split(".")[1]) == DECIMALS for v in line[1:])
    labels = _read(out)
    assert _problems(labels) == [] or all(a == FIXED for _, _, a in _problems(labels))
    import yaml

    y = yaml.safe_load((out / "data.yaml").read_text())
    assert y["names"] == dict(enumerate(classes)) and y["path"] == "."
    assert (out / "classes.txt").read_text().splitlines() == classes
    got = {Path(e.image).name: e for e in labels.entries}
    assert set(got) == {"s0.jpg", "s1.jpg", "s2.jpg", "s3.jpg", "neg.png", "s0-png.png"}
    for r in rows:
        name = "s0-png.png" if r.image_name == "sub/s0.png" else Path(r.image_name).name
        e = got[name]
        assert labels.splits[e.key] == r.split
        tol = 1.5e-6 * max(r.width, r.height) + 1e-9  # the stated rounding: 6 decimals of the size
        _same_boxes(list(e.ann.boxes), list(r.boxes), tol=tol)


def test_raccoon_voc_to_yolo_to_records_same_boxes(tmp_path, raccoon_dir):
    from od.data.plan import plan_dataset

    plan = plan_dataset(detect_layout(raccoon_dir), tmp_path / "lm.pbtxt", add_classes=False, skip_difficult=False,
                        val_fraction=0.2, test_fraction=0.0)
    items = plan.items[:12]
    rows = [LabelledImage(it.image_path, it.image_name, *it.xml_size, it.boxes, it.split) for it in items]
    out = tmp_path / "yolo"
    out.mkdir()
    write_yolo(rows, ["raccoon"], out, lambda s, d: (d.parent.mkdir(parents=True, exist_ok=True),
                                                     d.write_bytes(Path(s).read_bytes())))
    labels = read_labels(find_yolo(out), Roots.of(out))
    got = {Path(e.image).name: e for e in labels.entries}
    for r in rows:
        _same_boxes(list(got[Path(r.image_name).name].ann.boxes), list(r.boxes), tol=1e-3)


def test_label_path_is_ultralytics_rule():
    assert label_path("/d/images/train/a.jpg") == Path("/d/labels/train/a.txt")
    assert label_path("/d/images/x/images/b.png") == Path("/d/images/x/labels/b.txt")  # the last /images/
    assert label_path("/d/obj_train_data/c.jpeg") == Path("/d/obj_train_data/c.txt")  # beside the image
    # inside a dataset only its own folders count: an "images" folder above it changes nothing
    assert label_path("/u/images/ds/obj/c.jpg", "/u/images/ds") == Path("/u/images/ds/obj/c.txt")
    assert label_path("/u/images/ds/images/c.jpg", "/u/images/ds") == Path("/u/images/ds/labels/c.txt")


def test_dataset_below_a_folder_named_images(tmp_path):
    ds = tmp_path / "images" / "ds"  # darknet style: txt beside each image
    truth = _synthetic(ds, {"": range(2)}, images="obj_train_data", labels="obj_train_data")
    (ds / "data.yaml").write_text("train: obj_train_data\nnames: [circle, square, triangle]\n")
    for d in (ds, Path(os.path.relpath(ds))):
        labels = _read(d)
        assert _problems(labels) == [] and len(labels.entries) == 2
        for e in labels.entries:
            assert Path(e.ann.xml_path).parent == Path(e.image).parent  # the txt beside the image
            _same_boxes(list(e.ann.boxes), truth[Path(e.image).name], tol=1e-3)


# --------------------------------------------------------------------------- od.detect --save-yolo

# A SavedModel that ignores its input and returns these (normalised ymin, xmin, ymax, xmax), score, class id.
RAW = [((0.20, 0.10, 0.80, 0.50), 0.90, 1), ((0.10, 0.60, 0.90, 0.95), 0.70, 2), ((0.30, 0.30, 0.60, 0.70), 0.60, 3)]
DET_NAMES = {1: "cat", 2: "dog", 3: "bird"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    import tensorflow as tf

    exp = tmp_path_factory.mktemp("models") / "exported" / "tiny"
    boxes = np.array([[r[0] for r in RAW]], np.float32)
    scores = np.array([[r[1] for r in RAW]], np.float32)
    classes = np.array([[r[2] for r in RAW]], np.float32)

    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve(self, images):
            b = tf.shape(images)[0]
            return {"detection_boxes": tf.tile(boxes, [b, 1, 1]), "detection_scores": tf.tile(scores, [b, 1]),
                    "detection_classes": tf.tile(classes, [b, 1]), "num_detections": tf.fill([b], float(len(RAW)))}

    m = Fixed()
    tf.saved_model.save(m, str(exp / "saved_model"), signatures={"serving_default": m.serve})
    (exp / "label_map.pbtxt").write_text("".join(f"item {{\n  id: {i}\n  name: '{n}'\n}}\n"
                                                 for i, n in DET_NAMES.items()))
    return str(exp)


def _detect(*args) -> int:
    from od import detect

    return detect.main([str(a) for a in args])


def test_save_yolo_pre_labels_read_back_by_od_records(tmp_path, model):
    w, h = 320, 240
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in range(3):
        Image.new("RGB", (w, h), (30 + 40 * n, 60, 90)).save(photos / f"p{n}.jpg")
    # EXIF 6: detected on (and boxes relative to) the rotated 240x320 image
    Image.new("RGB", (w, h), (200, 60, 90)).save(photos / "rot.jpg", exif=_exif(6))
    out = tmp_path / "det"
    assert _detect(photos, "--model", model, "--out", out, "--save-yolo") == 0
    y = out / "yolo"
    import yaml

    data = yaml.safe_load((y / "data.yaml").read_text())
    assert data["names"] == {0: "cat", 1: "dog", 2: "bird"} and data["train"] == "images/train"
    assert (y / "classes.txt").read_text() == "cat\ndog\nbird\n"
    assert (y / "images" / "train" / "p0.jpg").read_bytes() == (photos / "p0.jpg").read_bytes()  # byte copy
    rows = (y / "labels" / "train" / "p0.txt").read_text().splitlines()
    assert [r.split()[0] for r in rows] == ["0", "1", "2"] and all(len(r.split()) == 5 for r in rows)  # no score
    assert rows[0] == "0 0.300000 0.500000 0.400000 0.600000"
    rot = Image.open(y / "images" / "train" / "rot.jpg")
    assert rot.size == (h, w) and rot.getexif().get(0x0112) in (None, 1)  # the pixels detected on

    rc, rep = _records(y, tmp_path / "rec")
    assert rc == 0 and not [p for p in rep["problems"] if p["action"] != FIXED], rep["problems"]
    ex = {Path(k).name: e for k, (_, e) in _examples(tmp_path / "rec").items()}
    assert set(ex) == {"p0.jpg", "p1.jpg", "p2.jpg", "rot.jpg"}
    for name, e in ex.items():
        iw, ih = (h, w) if name == "rot.jpg" else (w, h)
        assert (e.width, e.height) == (iw, ih)
        want = [Box(x0 * iw, y0 * ih, x1 * iw, y1 * ih, DET_NAMES[c]) for (y0, x0, y1, x1), _, c in RAW]
        _same_boxes(e.boxes_px(), want, tol=1e-3)

    # a re-run keeps a hand-corrected txt unless --force; od's own files are replaced
    txt = y / "labels" / "train" / "p1.txt"
    txt.write_text("1 0.5 0.5 0.1 0.1\n")
    assert _detect(photos, "--model", model, "--out", out, "--save-yolo") == 0
    assert txt.read_text() == "1 0.5 0.5 0.1 0.1\n"
    assert _detect(photos, "--model", model, "--out", out, "--save-yolo", "--force", "--yolo-scores") == 0
    rows = txt.read_text().splitlines()
    assert len(rows) == 3 and [r.split()[5] for r in rows] == ["0.900000", "0.700000", "0.600000"]
    labels = _read(y)  # the score column is read back (and ignored, with a note)
    assert sum(len(e.ann.boxes) for e in labels.entries) == 12

    # a data.yaml od did not write is not replaced
    other = tmp_path / "other"
    (other / "yolo").mkdir(parents=True)
    (other / "yolo" / "data.yaml").write_text("mine\n")
    assert _detect(photos / "p0.jpg", "--model", model, "--out", other, "--save-yolo") == 1
    assert (other / "yolo" / "data.yaml").read_text() == "mine\n"
    assert _detect(photos / "p0.jpg", "--model", model, "--out", other, "--yolo-scores") == 2
