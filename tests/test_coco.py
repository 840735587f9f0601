"""COCO instances JSON: found, read (every malformed part reported with its file and id while the
rest converts), written and read back, and ``od.detect --save-coco`` read back by od.records."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image

from od import detect, records
from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Box, Detection
from od.data import coco, synthetic
from od.data.formats import LabelledImage, find_layout, read_labels, writer
from od.data.layout import UsageError, detect_layout
from od.data.walk import Roots
from od.io.example import decode_example
from od.io.tfrecord import iter_records

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]


# --------------------------------------------------------------------------- helpers


def _convert(data: Path, tmp: Path, *extra: str) -> tuple[int, dict, dict]:
    """od.records on ``data``: (exit code, report, {filename: (split, [(class, x0, y0, x1, y1, crowd)])})."""
    out = tmp / "records"
    rc = records.main([str(data), "--out", str(out), "--label-map", str(tmp / "lm.pbtxt"), "--quiet",
                       "--workers", "1", *extra])
    rep = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    got: dict = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for rec in iter_records(shard):
            ex = decode_example(rec)
            got[ex.filename] = (shard.name.split("-")[0], sorted(
                (b.name, b.xmin, b.ymin, b.xmax, b.ymax, b.is_crowd) for b in ex.boxes_px()))
    return rc, rep, got


def _close(got, want, tol=0.02) -> bool:
    """Two sorted box lists equal: names and crowd flags exactly, pixels within ``tol``."""
    return len(got) == len(want) and all(
        g[0] == w[0] and g[5] == w[5] and all(abs(a - b) <= tol for a, b in zip(g[1:5], w[1:5]))
        for g, w in zip(got, want))


def _img(path: Path, size=(64, 48), color=(90, 120, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _problems(rep: dict) -> list[tuple[str, str, str]]:
    """The report's problems, less the writer's note on each PNG it stores as JPEG."""
    return [(p["file"], p["problem"], p["action"]) for p in rep["problems"] if "converted to RGB JPEG" not in p["problem"]]


def _find(problems, file: str, *words: str) -> tuple[str, str, str]:
    """The one problem of ``file`` whose text holds every word (fails, listing all, when none does)."""
    hits = [p for p in problems if p[0] == file and all(w in p[1] for w in words)]
    assert len(hits) == 1, (file, words, problems)
    return hits[0]


def _synthetic_coco(root: Path, splits: dict[str, range], folder: str = "{split}2017",
                    name: str = "annotations/instances_{split}2017.json") -> dict:
    """A COCO download in miniature from od.data.synthetic; returns {file_name: [box rows]}.
    Category ids start at 11 (not the label map's), box 0 of image 1 is a crowd box."""
    want: dict = {}
    cats = [{"id": 11 + i, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    aid = 1000
    for split, idx in splits.items():
        images, anns = [], []
        folder_path = root / folder.format(split=split)
        folder_path.mkdir(parents=True, exist_ok=True)
        for i in idx:
            img, boxes = synthetic.make_image(5, i)
            fn = f"{i:012d}.jpg"
            img.save(folder_path / fn)
            images.append({"id": 500 + i, "file_name": fn, "width": img.width, "height": img.height, "license": 1})
            rows = []
            for j, b in enumerate(boxes):
                crowd = i == 1 and j == 0
                aid += 1
                anns.append({"id": aid, "image_id": 500 + i, "category_id": 11 + CLASSES.index(b.name),
                             "bbox": [b.xmin + 0.25, b.ymin + 0.5, b.width - 0.25, b.height - 0.5],
                             "area": b.area, "iscrowd": int(crowd), "segmentation": []})
                rows.append((b.name, b.xmin + 0.25, b.ymin + 0.5, b.xmax, b.ymax, crowd))
            want[f"{folder_path.name}/{fn}"] = (split, sorted(rows))  # the record's filename: from the root
        neg, _ = synthetic.make_image(6, 0)  # an image no annotation points at: a negative
        neg.save(folder_path / f"neg_{split}.jpg")
        images.append({"id": 9000, "file_name": f"neg_{split}.jpg", "width": neg.width, "height": neg.height})
        want[f"{folder_path.name}/neg_{split}.jpg"] = (split, [])
        _write(root / name.format(split=split), {"info": {}, "licenses": [], "images": images,
                                                 "annotations": anns, "categories": cats})
    return want


# --------------------------------------------------------------------------- finding + splits


def test_split_of_file_names():
    assert coco.split_of("instances_train2017.json") == "train"
    assert coco.split_of("instances_val2017.json") == "val"
    assert coco.split_of("image_info_test-dev2017.json") == "test"
    assert coco.split_of("instances_trainval35k.json") == "train"
    assert coco.split_of("instances_minival2014.json") == "val"
    assert coco.split_of("valid/_annotations.coco.json") == "val"
    assert coco.split_of("latest.json") == ""  # "test" inside a word is no split
    assert coco.split_of("instances_default.json") == ""


def test_coco_download_layout_splits_boxes_crowd_and_negatives(tmp_path):
    data = tmp_path / "coco"
    want = _synthetic_coco(data, {"train": range(0, 10), "val": range(10, 14)})
    # a COCO download's annotations/ also holds captions for the same images: not read
    _write(data / "annotations" / "captions_train2017.json", {"images": [{"id": 1, "file_name": "x.jpg"}],
                                                             "annotations": [{"id": 1, "image_id": 1}]})
    layout = detect_layout(data)
    assert layout.kind == "coco" and layout.description.endswith("images in train2017/, val2017/")
    assert [(s, p.name) for s, p in layout.sources] == [("train", "instances_train2017.json"),
                                                       ("val", "instances_val2017.json")]

    rc, rep, got = _convert(data, tmp_path)
    assert rc == 0, rep.get("problems")
    assert rep["problems"] == []
    assert rep["summary"]["layout"] == "coco" and "instances_val2017.json: val" in rep["summary"]["split_source"]
    assert rep["summary"]["xml_files"] == 16  # the images the files declare
    assert rep["summary"]["negatives"] == 2
    assert set(got) == set(want)
    for fn, (split, rows) in want.items():
        assert got[fn][0] == split, fn
        assert _close(got[fn][1], rows), (fn, got[fn][1], rows)
    assert any(r[5] for r in got["train2017/000000000001.jpg"][1])  # iscrowd kept as image/object/is_crowd
    # classes mapped by name: the label map's ids, not COCO's 11..16
    found = sorted({r[0] for _, rows in want.values() for r in rows})
    assert [c["name"] for c in rep["classes"]] == found and [c["id"] for c in rep["classes"]] == list(
        range(1, len(found) + 1))


def test_single_unsplit_file_is_split_by_hash_and_label_studio_paths(tmp_path):
    """Label Studio's export: result.json beside images/, file_name "images/<name>"."""
    data = tmp_path / "ls"
    images = []
    for i in range(12):
        _img(data / "images" / f"f{i}.jpg")
        images.append({"id": i, "file_name": f"images/f{i}.jpg", "width": 64, "height": 48})
    anns = [{"id": i, "image_id": i, "category_id": 0, "bbox": [1, 2, 30, 20]} for i in range(12)]
    _write(data / "result.json", {"images": images, "categories": [{"id": 0, "name": "cat"}],
                                  "annotations": anns, "info": {}})
    layout = detect_layout(data)
    assert layout.kind == "coco" and layout.sources == (("", data / "result.json"),)
    rc, rep, got = _convert(data, tmp_path, "--val-fraction", "0.4")
    assert rc == 0 and rep["problems"] == []
    assert rep["summary"]["split_source"] == "hash"
    assert {s for s, _ in got.values()} == {"train", "val"}
    assert all(_close(rows, [("cat", 1.0, 2.0, 31.0, 22.0, False)]) for _, rows in got.values())


def test_roboflow_split_folders(tmp_path):
    data = tmp_path / "rf"
    for split, n in (("train", 3), ("valid", 2)):
        ims = [{"id": i, "file_name": f"{split}_{i}.jpg", "width": 64, "height": 48} for i in range(n)]
        for im in ims:
            _img(data / split / im["file_name"])
        _write(data / split / "_annotations.coco.json", {
            "images": ims, "categories": [{"id": 0, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 0, "bbox": [0, 0, 10, 10]}]})
    rc, rep, got = _convert(data, tmp_path)
    assert rc == 0 and rep["problems"] == []
    assert {fn: s for fn, (s, _) in got.items()} == {"train/train_0.jpg": "train", "train/train_1.jpg": "train",
                                                     "train/train_2.jpg": "train", "valid/valid_0.jpg": "val",
                                                     "valid/valid_1.jpg": "val"}
    assert _close(got["valid/valid_0.jpg"][1], [("dog", 0, 0, 10, 10, False)]) and got["valid/valid_1.jpg"][1] == []


def test_not_coco(tmp_path):
    data = tmp_path / "other"
    _img(data / "a.jpg")
    _write(data / "meta.json", {"images": ["a.jpg"]})  # an "images" list but nothing else COCO
    _write(data / "list.json", [1, 2, 3])
    assert coco.find_coco(data) is None
    with pytest.raises(UsageError, match="not a COCO dataset"):
        detect_layout(data, kind="coco")


# --------------------------------------------------------------------------- malformed input


def test_malformed_parts_reported_with_file_and_id_while_the_rest_converts(tmp_path):
    data = tmp_path / "bad"
    for n in ("ok", "dupname", "neg", "poly", "both", "crowdy", "win"):
        _img(data / "images" / f"{n}.jpg", size=(100, 80))
    _img(tmp_path / "secret.jpg")
    os.symlink(tmp_path / "secret.jpg", data / "images" / "link.jpg")
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 4},
            {"id": 1, "name": "lion"}, "junk"]
    images = [
        {"id": 1, "file_name": "ok.jpg", "width": 100, "height": 80},
        {"id": 1, "file_name": "other.jpg"},  # id listed twice
        {"id": 2, "file_name": "ok.jpg"},  # the same image again under another id
        {"id": 3, "file_name": "neg.jpg", "width": -100, "height": 80},  # negative size: the real one decides
        {"id": 4, "file_name": "missing.jpg"},
        {"id": 5, "file_name": "../secret.jpg"},  # leads outside the dataset (and no secret.jpg inside)
        {"id": 6, "file_name": "link.jpg"},  # a link that leads outside
        {"id": 7, "file_name": "poly.jpg"},
        {"file_name": "noid.jpg"},
        {"id": 8, "file_name": "both.jpg"},
        {"id": 9, "file_name": "crowdy.jpg"},
        {"id": 10, "file_name": "C:\\Users\\me\\pics\\win.jpg"},  # an absolute Windows path: its base name
    ]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},  # fine
        {"id": 11, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},  # dangling image id
        {"id": 12, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]},  # dangling category id
        {"id": 13, "image_id": 1, "category_id": 2, "bbox": [1, "x", 5, 5]},  # not numbers
        {"id": 14, "image_id": 1, "category_id": 2, "bbox": [1, 1, -5, 5]},  # negative width
        {"id": 15, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5]},  # three numbers
        {"id": 16, "image_id": 1, "category_id": 3, "bbox": [50, 40, 10, 10]},  # "cat" again: merged
        {"id": 16, "image_id": 3, "category_id": 2, "bbox": [5, 5, 10, 10]},  # annotation id used twice
        {"id": 17, "image_id": 7, "category_id": 2, "segmentation": [[10, 20, 40, 22, 30, 60]]},  # polygon only
        {"id": 18, "image_id": 7, "category_id": 2, "segmentation": {"counts": "abc", "size": [80, 100]}},
        {"id": 19, "image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5]},  # its image is missing
        {"id": 20, "image_id": 4, "category_id": 1, "bbox": [1, 1, 6, 6]},
        {"id": 21, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5]},  # category without a name
        {"id": 22, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 7},
        {"id": 23, "image_id": 9, "category_id": 1, "bbox": [1e999, 1, 5, 5]},  # inf (json reads 1e999 so)
        "junk",
    ]
    _write(data / "annotations" / "instances_train.json", {"images": images, "annotations": anns,
                                                           "categories": cats})
    _write(data / "annotations" / "instances_val.json", {  # both.jpg is also listed in train
        "images": [{"id": 1, "file_name": "both.jpg"}], "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}]})
    _write(data / "annotations" / "instances_test.json", '{"images": [{"id": 1, "file_name": "ok.jpg"},')

    rc, rep, got = _convert(data, tmp_path)
    assert rc == 1  # done, some inputs skipped
    p = _problems(rep)
    tr = "annotations/instances_train.json"
    assert _find(p, "annotations/instances_test.json", "not valid JSON", "line 1")[2] == SKIPPED_IMAGE
    assert _find(p, f"{tr} (annotation 11)", "image_id 99", "not in")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 12)", "category_id 42", "not in")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 13)", "not 4 finite numbers")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 14)", "width or height <= 0")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 15)", "not 4 finite numbers")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 23)", "not 4 finite numbers")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 16)", "used twice")[2] == FIXED
    assert _find(p, f"{tr} (annotation 17)", "from its polygon")[2] == FIXED
    assert _find(p, f"{tr} (annotation 18)", "RLE")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 21)", "category_id 4", "no name")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (annotation 22)", "iscrowd 7")[2] == FIXED
    assert _find(p, f"{tr} (annotations[15])", "not an object")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (category 3)", "'cat'", "also category 1")[2] == FIXED
    assert _find(p, f"{tr} (category 4)", "no name")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (category 1)", "listed twice", "'lion'")[2] == FIXED
    assert _find(p, f"{tr} (categories[5])", "no usable id")[2] == DROPPED_BOX
    assert _find(p, f"{tr} (image 1)", "listed twice", "images[1]")[2] == SKIPPED_IMAGE
    assert _find(p, f"{tr} (image 2)", "same image as", "(image 1)")[2] == SKIPPED_IMAGE
    assert _find(p, f"{tr} (image 3)", "width -100")[2] == FIXED
    assert _find(p, f"{tr} (image 4)", "image not found", "missing.jpg", "its 2 annotations")[2] == SKIPPED_IMAGE
    assert _find(p, f"{tr} (image 5)", "'..'", "never")[2] == SKIPPED_IMAGE
    assert _find(p, f"{tr} (image 6)", "outside the dataset")[2] == SKIPPED_IMAGE
    assert _find(p, f"{tr} (images[8])", "no usable id")[2] == SKIPPED_IMAGE
    assert _find(p, f"{tr} (image 10)", "absolute path", "using images/win.jpg")[2] == FIXED
    assert _find(p, "annotations/instances_val.json (image 1)", "same image as", f"{tr} (image 8)",
                 "its 1 annotation")[2] == SKIPPED_IMAGE

    # what was good converted, with exactly its boxes
    assert set(got) == {"ok.jpg", "neg.jpg", "poly.jpg", "both.jpg", "crowdy.jpg", "win.jpg"}
    assert _close(got["ok.jpg"][1], [("cat", 10, 10, 30, 30, False), ("cat", 50, 40, 60, 50, False)])
    assert _close(got["neg.jpg"][1], [("dog", 5, 5, 15, 15, False)])
    assert _close(got["poly.jpg"][1], [("dog", 10, 20, 40, 60, False)])
    assert _close(got["crowdy.jpg"][1], [("cat", 1, 1, 6, 6, False)])
    assert got["both.jpg"] == ("train", [])  # train's listing (no boxes) is the one used
    assert {s for s, _ in got.values()} == {"train"}
    assert Path(tmp_path / "secret.jpg").exists()  # read nothing, changed nothing


def test_unreadable_json_beside_a_good_one_is_reported_and_never_blocks(tmp_path):
    data = tmp_path / "fifo"
    _img(data / "images" / "a.jpg")
    _write(data / "annotations" / "instances_train.json", {
        "images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": []})
    os.mkfifo(data / "annotations" / "instances_val.json")
    _write(data / "annotations" / "instances_test.json", "")
    result: list = []
    t = threading.Thread(target=lambda: result.append(_convert(data, tmp_path)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "od.records blocked on a FIFO"
    rc, rep, got = result[0]
    assert rc == 1 and set(got) == {"a.jpg"} and got["a.jpg"][1] == []  # a negative
    p = _problems(rep)
    assert _find(p, "annotations/instances_val.json", "not a regular file (a FIFO)")[2] == SKIPPED_IMAGE
    assert _find(p, "annotations/instances_test.json", "empty")[2] == SKIPPED_IMAGE


def test_boxes_outside_the_image_are_clipped_by_the_writer_with_the_annotation_named(tmp_path):
    data = tmp_path / "clip"
    _img(data / "images" / "a.jpg", size=(64, 48))
    _write(data / "annotations" / "instances_default.json", {
        "images": [{"id": 3, "file_name": "a.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 7, "image_id": 3, "category_id": 1, "bbox": [-4, 10, 30, 50]}]})
    rc, rep, got = _convert(data, tmp_path)
    assert rc == 0
    assert _close(got["a.jpg"][1], [("cat", 0.0, 10.0, 26.0, 48.0, False)])
    (f, msg, action), = _problems(rep)
    assert f == "annotations/instances_default.json (image 3)" and "annotation 7" in msg and action == FIXED


# --------------------------------------------------------------------------- writing


def test_write_coco_reads_back_the_same_boxes_classes_and_splits(tmp_path):
    src = tmp_path / "src"
    rows = []
    for i, split in enumerate(("train", "train", "val", "test")):
        name = f"sub/p{i}.png" if i % 2 else f"p{i}.jpg"
        _img(src / name, size=(80, 60))
        boxes = () if i == 3 else (Box(1.5, 2.25, 40.125, 33.3, "b"), Box(0.1, 0.2, 79.9, 59.7, "a", is_crowd=True))
        rows.append(LabelledImage(str(src / name), name, 80, 60, boxes, split))
    out = tmp_path / "out"
    out.mkdir()
    copied = []
    files = writer("coco")(rows, ["b", "a"], out, lambda s, d: (copied.append(d), shutil.copyfile(s, d)))
    assert {p.relative_to(out).as_posix() for p in files} >= {
        "annotations/instances_train.json", "annotations/instances_val.json", "annotations/instances_test.json"}
    assert sorted(p.relative_to(out).as_posix() for p in copied) == sorted(f"images/{r.image_name}" for r in rows)
    doc = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert doc["categories"] == [{"id": 1, "name": "b", "supercategory": ""}, {"id": 2, "name": "a", "supercategory": ""}]
    a0 = doc["annotations"][0]
    assert a0["bbox"] == [1.5, 2.25, 40.125 - 1.5, 33.3 - 2.25] and a0["area"] == (40.125 - 1.5) * (33.3 - 2.25)
    assert [a["iscrowd"] for a in doc["annotations"]] == [0, 1, 0, 1]

    layout = find_layout("coco", out)
    assert layout is not None and layout.images_dir == out / "images"
    back = read_labels(layout, Roots.of(out))
    assert back.problems == {}
    assert back.num_files == 4
    by_key = {e.key: e for e in back.entries}
    assert set(by_key) == {"p0", "sub/p1", "p2", "sub/p3"}
    for r in rows:
        e = by_key[r.image_name.rsplit(".", 1)[0]]
        assert back.splits[e.key] == r.split
        assert (e.ann.width, e.ann.height) == (80, 60)
        assert len(e.ann.boxes) == len(r.boxes)
        for g, w in zip(e.ann.boxes, r.boxes):
            assert (g.name, g.is_crowd) == (w.name, w.is_crowd)
            assert all(abs(a - b) < 1e-9 for a, b in zip((g.xmin, g.ymin, g.xmax, g.ymax),
                                                         (w.xmin, w.ymin, w.xmax, w.ymax)))


# --------------------------------------------------------------------------- od.detect --save-coco


class FakeDetector:
    """Two boxes at fixed fractions of the image (so every expected pixel is known)."""

    def raw(self, arr):
        return {}

    def postprocess(self, raw, width, height, threshold=0.5, class_ids=None, max_boxes=None):
        return [Detection(Box(0.1 * width, 0.2 * height, 0.5 * width, 0.8 * height, name="cat"), 1, "cat", 0.9),
                Detection(Box(0.55 * width, 0.05 * height, 0.95 * width, 0.5 * height, name="dog"), 3, "dog", 0.61)]


@pytest.fixture
def fake_model(tmp_path, monkeypatch) -> Path:
    """An export folder that resolves like od.export's (never loaded: Detector.load is replaced)."""
    exp = tmp_path / "exported" / "fake"
    (exp / "saved_model").mkdir(parents=True)
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    (exp / "label_map.pbtxt").write_text("item {\n  id: 1\n  name: 'cat'\n}\nitem {\n  id: 2\n  name: 'bird'\n}\n"
                                         "item {\n  id: 3\n  name: 'dog'\n}\n")
    monkeypatch.setattr(detect.Detector, "load", classmethod(lambda cls, source, names, runtime="auto": FakeDetector()))
    return exp


def test_save_coco_file_names_categories_scores_and_reruns(tmp_path, fake_model, capsys):
    photos = tmp_path / "photos"
    _img(photos / "a.jpg", size=(200, 100))
    _img(photos / "coco.png", size=(120, 90))  # key "coco": must not take <out>/coco.json's name
    _img(photos / "sub" / "b.jpg", size=(50, 40))
    out = tmp_path / "det"
    assert detect.main([str(photos), "--model", str(fake_model), "--out", str(out), "--save-coco",
                        "--save-json"]) == 0
    assert "det/coco.json" in capsys.readouterr().out
    doc = json.loads((out / "coco.json").read_text())
    assert doc["categories"] == [{"id": 1, "name": "cat", "supercategory": ""},
                                 {"id": 2, "name": "bird", "supercategory": ""},
                                 {"id": 3, "name": "dog", "supercategory": ""}]
    assert [(i["file_name"], i["width"], i["height"]) for i in doc["images"]] == [
        ("a.jpg", 200, 100), ("coco.png", 120, 90), ("sub/b.jpg", 50, 40)]
    a = [x for x in doc["annotations"] if x["image_id"] == 1]
    assert [(x["category_id"], x["bbox"], x["area"], x["iscrowd"], x["score"]) for x in a] == [
        (1, [20.0, 20.0, 80.0, 60.0], 4800.0, 0, 0.9), (3, [110.0, 5.0, 80.0, 45.0], 3600.0, 0, 0.61)]
    assert doc["info"]["images_root"] == str(photos)
    assert json.loads((out / "coco_2.json").read_text())["image"] == str(photos / "coco.png")  # renamed
    listed = json.loads((out / ".od-detect.json").read_text())["files"]
    assert "coco.json" in listed

    # a re-run replaces od's own coco.json; a coco.json the user put there is kept unless --force
    (out / "coco.json").write_text("old")
    assert detect.main([str(photos / "a.jpg"), "--model", str(fake_model), "--out", str(out), "--save-coco"]) == 0
    doc = json.loads((out / "coco.json").read_text())
    assert [i["file_name"] for i in doc["images"]] == ["a.jpg"]
    other = tmp_path / "det2"
    _write(other / "coco.json", "mine")
    assert detect.main([str(photos), "--model", str(fake_model), "--out", str(other), "--save-coco"]) == 1
    assert (other / "coco.json").read_text() == "mine"
    assert "--force" in capsys.readouterr().err
    assert detect.main([str(photos), "--model", str(fake_model), "--out", str(other), "--save-coco", "--force"]) == 0
    assert json.loads((other / "coco.json").read_text())["images"]


def test_save_coco_then_records_gives_the_detected_boxes(tmp_path, fake_model):
    """The pre-label loop: detect --save-coco, put the JSON beside the images, od.records."""
    photos = tmp_path / "photos"
    sizes = {"p0.jpg": (320, 240), "p1.png": (200, 100), "deeper/p2.jpg": (257, 199)}
    for name, size in sizes.items():
        _img(photos / name, size=size)
    out = tmp_path / "det"
    assert detect.main([str(photos), "--model", str(fake_model), "--out", str(out), "--save-coco"]) == 0
    shutil.copy(out / "coco.json", photos / "coco.json")
    rc, rep, got = _convert(photos, tmp_path, "--label-map", str(fake_model / "label_map.pbtxt"))
    assert rc == 0 and _problems(rep) == [] and rep["summary"]["layout"] == "coco"
    assert set(got) == set(sizes)
    for name, (w, h) in sizes.items():
        want = sorted((d.class_name, d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax, False)
                      for d in FakeDetector().postprocess(None, w, h))
        assert _close(got[name][1], want), (name, got[name][1], want)
    assert [(c["id"], c["name"]) for c in rep["classes"]] == [(1, "cat"), (2, "bird"), (3, "dog")]


@pytest.mark.slow  # ~40 s on two shared cores: a SavedModel built and loaded (the fast test above fakes it)
def test_save_coco_with_the_exported_test_detector(tmp_path):
    """The real path (SavedModel, Detector, postprocess) with test_detect's fixed-output export."""
    pytest.importorskip("tensorflow")
    from test_detect import NAMES, RAW, _build_saved_model, px

    exp = tmp_path / "exported" / "tiny"
    _build_saved_model(exp / "saved_model")
    (exp / "label_map.pbtxt").write_text("".join(f"item {{\n  id: {i}\n  name: '{n}'\n}}\n" for i, n in NAMES.items()))
    photos = tmp_path / "photos"
    w, h = 320, 240
    for n in range(2):
        _img(photos / f"s{n}.jpg", size=(w, h), color=(30 + 50 * n, 60, 90))
    out = tmp_path / "det"
    assert detect.main([str(photos), "--model", str(exp), "--out", str(out), "--save-coco"]) == 0
    doc = json.loads((out / "coco.json").read_text())
    assert [(c["id"], c["name"]) for c in doc["categories"]] == sorted(NAMES.items())
    assert sorted(a["score"] for a in doc["annotations"]) == sorted([0.9, 0.7, 0.6] * 2)
    shutil.copy(out / "coco.json", photos / "coco.json")
    rc, rep, got = _convert(photos, tmp_path, "--label-map", str(exp / "label_map.pbtxt"))
    assert rc == 0 and rep["problems"] == []
    want = sorted((NAMES[RAW[i][2]], *px(i, w, h), False) for i in (0, 1, 2))
    assert set(got) == {"s0.jpg", "s1.jpg"}
    for name in got:
        assert _close(got[name][1], want), (got[name][1], want)
