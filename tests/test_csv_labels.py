"""CSV box tables (generate_tfrecord.py's columns): finding, reading, problems by row, writing, raccoon parity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from od import records
from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Box
from od.data import synthetic
from od.data.formats import LabelledImage, find_layout, read_labels, writer
from od.data.layout import UsageError, detect_layout
from od.data.walk import Roots
from od.io.example import decode_example
from od.io.tfrecord import iter_records

SHARED = Path(__file__).resolve().parents[2] / "shared"
RACCOON = SHARED / "datasets" / "raccoon"
HEADER = "filename,width,height,class,xmin,ymin,xmax,ymax"


# --------------------------------------------------------------------------- helpers


def _img(path: Path, w: int = 80, h: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 130, 140)).save(path, "JPEG", quality=90)
    return path


def _write(path: Path, text: str, newline: str = "\n", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", newline).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def _convert(args: list[str]) -> tuple[int, dict | None]:
    rc = records.main([*args, "--quiet", "--workers", "1"])
    out = Path(args[args.index("--out") + 1])
    rep = out / "report.json"
    return rc, json.loads(rep.read_text()) if rep.exists() else None


def _examples(out: Path) -> dict[str, tuple[str, object]]:
    """filename -> (split, DecodedExample) over every shard in ``out``."""
    res = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for rec in iter_records(shard):
            ex = decode_example(rec)
            res[ex.filename] = (shard.name.split("-")[0], ex)
    return res


def _px(ex) -> list[tuple[str, float, float, float, float]]:
    return [(b.name, round(b.xmin, 2), round(b.ymin, 2), round(b.xmax, 2), round(b.ymax, 2)) for b in ex.boxes_px()]


def _problems(report: dict) -> dict[str, list[tuple[str, str]]]:
    d: dict[str, list[tuple[str, str]]] = {}
    for p in report["problems"]:
        d.setdefault(p["file"], []).append((p["problem"], p["action"]))
    return d


def _read(data_dir: Path, csv_files: dict[str, str] | None = None):
    layout = detect_layout(data_dir, kind="csv", csv_files=csv_files)
    return layout, read_labels(layout, Roots.of(layout.root, *layout.explicit))


def _all_problems(labels) -> dict[str, list[tuple[str, str]]]:
    return {f: [(p.problem, p.action) for p in ps] for f, ps in labels.problems.items()}


def _has(pr: dict, file: str, words: list[str], action: str) -> None:
    assert any(all(w in m for w in words) and a == action for m, a in pr.get(file, [])), (file, pr.get(file), pr)


# --------------------------------------------------------------------------- raccoon parity


def test_raccoon_csv_gives_the_same_boxes_as_the_raccoon_xml(tmp_path):
    if not (RACCOON / "train_labels.csv").is_file() or not (RACCOON / "annotations").is_dir():
        pytest.skip("../shared/datasets/raccoon (with its CSVs) not present")
    lm = tmp_path / "lm.pbtxt"
    rc, rep_xml = _convert([str(RACCOON), "--out", str(tmp_path / "xml"), "--label-map", str(lm)])
    assert rc == 0 and rep_xml["summary"]["layout"] == "folders"
    rc, rep_csv = _convert([str(RACCOON), "--train-csv", "train_labels.csv", "--test-csv", "test_labels.csv",
                            "--out", str(tmp_path / "csv"), "--label-map", str(lm)])
    assert rc == 0, rep_csv["problems"]
    assert rep_csv["summary"]["layout"] == "csv"
    assert "test CSV is used as val" in rep_csv["summary"]["split_source"]
    from_xml, from_csv = _examples(tmp_path / "xml"), _examples(tmp_path / "csv")
    assert len(from_csv) == 200 and sorted(from_csv) == sorted(from_xml)
    for name, (_, ex) in from_csv.items():
        assert _px(ex) == _px(from_xml[name][1]), name
        assert (ex.width, ex.height) == (from_xml[name][1].width, from_xml[name][1].height)
    assert rep_csv["summary"]["boxes"] == rep_xml["summary"]["boxes"] == 217
    # The splits are the files': train_labels.csv -> train, test_labels.csv -> val (the tutorial evaluates on it).
    import csv

    with open(RACCOON / "test_labels.csv", newline="") as f:
        test_names = {r["filename"] for r in csv.DictReader(f)}
    assert {n for n, (s, _) in from_csv.items() if s == "val"} == test_names
    assert {n for n, (s, _) in from_csv.items() if s == "train"} == set(from_csv) - test_names


# --------------------------------------------------------------------------- finding


def test_tutorial_layout_found_with_bom_crlf_quotes_case_and_extra_columns(tmp_path):
    ds = tmp_path / "ds"
    _img(ds / "images" / "a.jpg", 80, 60)
    _img(ds / "images" / "b, c.jpg", 90, 70)
    _img(ds / "images" / "sub" / "d.jpg", 50, 40)
    _img(ds / "images" / "e.jpg", 50, 40)
    _write(ds / "data" / "train_labels.csv",
           "FileName, Width ,Height,Class,XMin,YMin,XMax,YMax,note\n"
           "a.jpg,80,60,cat,1,2,30,40,first\n"
           "\n"
           '"b, c.jpg",90,70,"big dog",10.5,5,60.25,50,"quoted, with comma"\n'
           "a.jpg,80,60,dog,40,10,70,55,\n"
           "sub/d.jpg,50,40,cat,5,5,20,20,x\n",
           newline="\r\n", bom=True)
    _write(ds / "data" / "eval_labels.csv", HEADER + "\ne.jpg,50,40,cat,1,1,9,9\n")
    _write(ds / "stats.csv", "epoch,loss\n1,0.5\n")  # not a box table: ignored
    layout = detect_layout(ds)  # auto: no XML, a CSV box table
    assert layout.kind == "csv" and layout.images_dir == ds / "images"
    assert [(s, p.name) for s, p in layout.sources] == [("train", "train_labels.csv"), ("val", "eval_labels.csv")]
    labels = read_labels(layout, Roots.of(ds))
    assert labels.problems == {}
    by_key = {e.key: e for e in labels.entries}
    assert sorted(by_key) == ["a", "b, c", "e", "sub/d"]
    assert [(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in by_key["a"].ann.boxes] == [
        ("cat", 1, 2, 30, 40), ("dog", 40, 10, 70, 55)]
    assert [(b.name, b.xmin, b.xmax) for b in by_key["b, c"].ann.boxes] == [("big dog", 10.5, 60.25)]
    assert (by_key["a"].ann.width, by_key["a"].ann.height) == (80, 60)
    assert by_key["sub/d"].image == os.path.abspath(ds / "images" / "sub" / "d.jpg")
    assert by_key["a"].name == "data/train_labels.csv" and by_key["a"].ann.boxes[1].origin == "row 5"
    assert labels.splits == {"a": "train", "b, c": "train", "sub/d": "train", "e": "val"}
    assert labels.num_files == 4


@pytest.mark.parametrize("names, want, test_as_val", [
    (["train_labels.csv", "test_labels.csv"], {"train": "train", "test": "val"}, True),
    (["train_labels.csv", "val_labels.csv", "test_labels.csv"], {"train": "train", "val": "val", "test": "test"}, False),
    (["my_train.csv", "my_eval.csv"], {"my_train": "train", "my_eval": "val"}, False),
    (["labels.csv"], {"labels": ""}, False),
])
def test_splits_from_file_names_test_stands_in_for_val(tmp_path, names, want, test_as_val):
    ds = tmp_path / "ds"
    for n in names:
        stem = n[:-4]
        _img(ds / "images" / f"{stem}.jpg")
        _write(ds / n, f"{HEADER}\n{stem}.jpg,80,60,cat,1,1,20,20\n")
    layout, labels = _read(ds)
    assert {p.stem.removesuffix("_labels"): s for s, p in layout.sources} == want
    got = {e.key.removesuffix("_labels"): labels.splits.get(e.key, "") for e in labels.entries}
    assert got == want
    assert ("test CSV is used as val" in layout.description) == test_as_val
    assert ("test CSV is used as val" in labels.split_source) == test_as_val
    if want == {"labels": ""}:
        assert labels.splits == {} and labels.split_source == ""  # hash split


def test_named_csv_files_relative_absolute_outside_and_usage_errors(tmp_path, capsys):
    ds = tmp_path / "ds"
    _img(ds / "images" / "a.jpg")
    _img(ds / "images" / "b.jpg")
    _write(ds / "mine.csv", f"{HEADER}\na.jpg,80,60,cat,1,1,20,20\n")
    outside = _write(tmp_path / "elsewhere" / "v.csv", f"{HEADER}\nb.jpg,80,60,dog,2,2,30,30\n")
    layout, labels = _read(ds, {"train": "mine.csv", "val": str(outside)})
    assert outside in layout.explicit  # named by the user: read although outside DATA_DIR
    assert labels.problems == {}
    assert labels.splits == {"a": "train", "b": "val"}

    with pytest.raises(UsageError, match="--val-csv nope.csv: no such file"):
        detect_layout(ds, csv_files={"val": "nope.csv"})
    with pytest.raises(UsageError, match="same file"):
        detect_layout(ds, csv_files={"train": "mine.csv", "val": str(ds / "mine.csv")})
    fifo = ds / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO"):
        detect_layout(ds, csv_files={"train": "pipe.csv"})
    assert records.main([str(ds), "--train-csv", "missing.csv", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "od: error: --train-csv missing.csv: no such file" in capsys.readouterr().err
    # Found files: the FIFO is skipped, never opened (this would hang otherwise).
    layout = detect_layout(ds, kind="csv")
    assert [p.name for _, p in layout.sources] == ["mine.csv"]


def test_not_a_csv_dataset(tmp_path):
    ds = tmp_path / "ds"
    _img(ds / "images" / "a.jpg")
    _write(ds / "notes.csv", "name,score\na,1\n")
    assert find_layout("csv", ds) is None
    with pytest.raises(UsageError, match="not a CSV dataset"):
        detect_layout(ds, kind="csv")
    # A link leading outside DATA is not read to detect it.
    _write(tmp_path / "real.csv", f"{HEADER}\na.jpg,80,60,cat,1,1,20,20\n")
    (ds / "linked.csv").symlink_to(tmp_path / "real.csv")
    assert find_layout("csv", ds) is None


# --------------------------------------------------------------------------- malformed input


def test_malformed_rows_reported_by_file_and_row_rest_converted(tmp_path):
    ds = tmp_path / "ds"
    for n in ("good", "nums", "neg", "rev", "cls", "size", "twin", "neg_img", "short"):
        _img(ds / "images" / f"{n}.jpg", 80, 60)
    _img(tmp_path / "outside.jpg")
    _write(ds / "train_labels.csv", "\n".join([
        HEADER,                                     # row 1
        "good.jpg,80,60,cat,1,2,30,40",             # row 2
        "nums.jpg,80,60,cat,abc,2,30,40",           # row 3: bad number
        "nums.jpg,80,60,cat,1,2,30,40",             # row 4: kept
        "neg.jpg,-80,60,cat,1,2,30,40",             # row 5: negative width
        "neg.jpg,80,60,dog,5,5,20,20",              # row 6: kept
        "rev.jpg,80,60,cat,30,2,10,40",             # row 7: xmax <= xmin
        "rev.jpg,80,60,cat,3,2,3,40",               # row 8: zero width
        "cls.jpg,80,60,,1,2,30,40",                 # row 9: empty class
        "size.jpg,80,60,cat,1,2,30,40",             # row 10
        "size.jpg,640,480,cat,5,5,20,20",           # row 11: size disagrees
        "missing.jpg,80,60,cat,1,2,30,40",          # row 12: no such image
        "missing.jpg,80,60,cat,1,2,30,40",          # row 13
        "../outside.jpg,80,60,cat,1,2,30,40",       # row 14: leads outside
        f"{tmp_path / 'outside.jpg'},80,60,cat,1,2,30,40",  # row 15: absolute
        ",80,60,cat,1,2,30,40",                     # row 16: no filename
        "twin.jpg,80,60,cat,1,2,30,40",             # row 17
        "neg_img.jpg,80,60,,,,,",                   # row 18: a negative (no box)
        "short.jpg,80,60,cat,1",                    # row 19: too few fields
        "",
    ]))
    _write(ds / "test_labels.csv", f"{HEADER}\ntwin.jpg,80,60,dog,5,5,20,20\ngood.jpg,80,60,cat,1,1,5,5\n")
    _write(ds / "val_labels.csv", "filename,width,height,class,xmin,ymin\ngood.jpg,80,60,cat,1,1\n")
    out = tmp_path / "rec"
    rc, rep = _convert([str(ds), "--format", "csv", "--out", str(out), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 1  # converted, with skipped images
    pr = _problems(rep)
    _has(pr, "train_labels.csv row 3", ["xmin 'abc'", "not a number"], DROPPED_BOX)
    _has(pr, "train_labels.csv row 5", ["width '-80'", "positive"], DROPPED_BOX)
    _has(pr, "train_labels.csv row 7", ["xmax <= xmin"], DROPPED_BOX)
    _has(pr, "train_labels.csv row 8", ["xmax <= xmin"], DROPPED_BOX)
    _has(pr, "train_labels.csv row 9", ["empty class"], DROPPED_BOX)
    _has(pr, "train_labels.csv row 11", ["640x480", "80x60 in row 10", "declared size is ignored"], FIXED)
    _has(pr, "train_labels.csv row 12", ["'missing.jpg' not found", "images/", "2 rows"], SKIPPED_IMAGE)
    _has(pr, "train_labels.csv row 14", ["'..'", "not read"], SKIPPED_IMAGE)
    _has(pr, "train_labels.csv row 15", ["absolute path", "not read"], SKIPPED_IMAGE)
    _has(pr, "train_labels.csv row 16", ["no filename"], DROPPED_BOX)
    _has(pr, "train_labels.csv row 19", ["5 fields", "header has 8"], DROPPED_BOX)
    _has(pr, "test_labels.csv row 2", ["twin.jpg", "already labelled in train_labels.csv row 17"], SKIPPED_IMAGE)
    _has(pr, "test_labels.csv row 3", ["good.jpg", "already labelled in train_labels.csv row 2"], SKIPPED_IMAGE)
    _has(pr, "val_labels.csv", ["no xmax, ymax columns", "file not read"], SKIPPED_IMAGE)
    assert "outside" not in {Path(k).stem for k in _examples(out)}

    ex = _examples(out)
    assert sorted(ex) == ["cls.jpg", "good.jpg", "neg.jpg", "neg_img.jpg", "nums.jpg", "rev.jpg", "short.jpg",
                          "size.jpg", "twin.jpg"]
    assert _px(ex["good.jpg"][1]) == [("cat", 1, 2, 30, 40)]
    assert _px(ex["nums.jpg"][1]) == [("cat", 1, 2, 30, 40)]
    assert _px(ex["neg.jpg"][1]) == [("dog", 5, 5, 20, 20)]
    assert _px(ex["twin.jpg"][1]) == [("cat", 1, 2, 30, 40)]  # the train file's rows won
    assert _px(ex["size.jpg"][1]) == [("cat", 1, 2, 30, 40), ("cat", 5, 5, 20, 20)]
    assert ex["neg_img.jpg"][1].num_boxes == 0 and ex["rev.jpg"][1].num_boxes == 0
    assert {s for s, _ in ex.values()} == {"train"}  # val_labels.csv unusable, test_labels.csv's rows duplicates
    assert rep["summary"]["images_converted"] == 9
    assert rep["summary"]["images_skipped"] == rep["summary"]["xml_files"] - 9 == 6


def test_unreadable_and_odd_files_reported(tmp_path):
    ds = tmp_path / "ds"
    _img(ds / "images" / "a.jpg")
    _img(ds / "images" / "b.jpg")
    _img(ds / "images" / "a.png")
    _write(ds / "train_labels.csv", f"{HEADER}\na.jpg,80,60,cat,1,1,20,20\na.png,80,60,cat,2,2,20,20\n")
    _write(ds / "test_labels.csv", "")  # empty: reported, the other converts
    (ds / "val_labels.csv").write_bytes(f"{HEADER}\nb.jpg,80,60,caf\xe9,1,1,20,20\n".encode("latin-1"))
    _write(ds / "data" / "headless_train.csv", "a.jpg,80,60,cat,1,1,20,20\nb.jpg,80,60,cat,1,1,20,20\n")
    layout = detect_layout(ds, kind="csv")
    assert [p.name for _, p in layout.sources] == ["train_labels.csv", "val_labels.csv"]  # empty, headless: not tables
    layout, labels = _read(ds, {"train": "train_labels.csv", "val": "val_labels.csv", "test": "test_labels.csv"})
    pr = _all_problems(labels)
    _has(pr, "test_labels.csv", ["empty CSV"], SKIPPED_IMAGE)
    _has(pr, "val_labels.csv row 2", ["not valid UTF-8"], DROPPED_BOX)
    # Two images that differ only by suffix keep distinct keys (splits and source ids are by key).
    assert sorted(e.key for e in labels.entries) == ["a.jpg", "a.png", "b"]
    _, labels = _read(ds, {"train": "data/headless_train.csv"})
    _has(_all_problems(labels), "data/headless_train.csv", ["looks like data", "header row is required"],
         SKIPPED_IMAGE)
    assert labels.entries == []


# --------------------------------------------------------------------------- writing


def test_write_csv_round_trip_through_od_records(tmp_path):
    src = tmp_path / "src"
    images: list[LabelledImage] = []
    for i in range(8):
        im, boxes = synthetic.make_image(3, i)
        p = src / f"img{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p, "JPEG", quality=95)
        if i == 1:
            boxes = [Box(10.25, 20.5, 100.75, 120, "circle"), Box(1, 1, 9, 9, "crowd", is_crowd=True)]
        if i == 2:
            boxes = []
        split = "train" if i < 5 else "test"  # no val images: an empty val file keeps test as test
        images.append(LabelledImage(str(p), f"img{i}.jpg", im.width, im.height, tuple(boxes), split))
    out = tmp_path / "csvset"
    out.mkdir()
    copied: list[tuple[str, Path]] = []

    def copy(source: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(source).read_bytes())
        copied.append((source, dest))

    files = writer("csv")(images, ["circle", "crowd"], out, copy)
    assert files == [out / "train_labels.csv", out / "val_labels.csv", out / "test_labels.csv"]
    assert len(copied) == 8 and all(d.parent == out / "images" for _, d in copied)
    train = (out / "train_labels.csv").read_text().splitlines()
    assert train[0] == HEADER
    w1, h1 = images[1].width, images[1].height
    assert f"img1.jpg,{w1},{h1},circle,10.25,20.5,100.75,120" in train  # ints stay ints
    assert not any("crowd" in ln for ln in train)
    assert f"img2.jpg,{images[2].width},{images[2].height},,,,," in train  # a negative
    assert (out / "val_labels.csv").read_text() == HEADER + "\n"

    layout = find_layout("csv", out)
    assert layout is not None and layout.images_dir == out / "images"
    labels = read_labels(layout, Roots.of(out))
    assert labels.problems == {}
    back = {e.key: e for e in labels.entries}
    for im in images:
        e = back[Path(im.image_name).stem]
        want = [(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in im.boxes if not b.is_crowd]
        assert [(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in e.ann.boxes] == want
        assert labels.splits[e.key] == im.split
        assert (e.ann.width, e.ann.height) == (im.width, im.height)

    rc, rep = _convert([str(out), "--out", str(tmp_path / "rec"), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 0, rep["problems"]
    ex = _examples(tmp_path / "rec")
    assert sorted(ex) == [f"img{i}.jpg" for i in range(8)]
    for im in images:
        split, e = ex[im.image_name]
        assert split == im.split
        assert _px(e) == [(b.name, round(b.xmin, 2), round(b.ymin, 2), round(b.xmax, 2), round(b.ymax, 2))
                          for b in im.boxes if not b.is_crowd]


def test_a_train_csv_alone_gets_a_hash_val_split(tmp_path):
    """Only train_labels.csv: od.train needs a val split, so it comes from the hash like a VOC folder's."""
    from od.data.layout import detect_layout
    from od.data.plan import plan_dataset

    from PIL import Image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for i in range(40):
        Image.new("RGB", (64, 48), (i, 2 * i, 90)).save(data / "images" / f"im{i:02d}.jpg")
        rows.append(f"im{i:02d}.jpg,64,48,cat,4,4,40,30")
    (data / "train_labels.csv").write_text("\n".join(rows) + "\n")
    plan = plan_dataset(detect_layout(data), tmp_path / "lm.pbtxt", add_classes=False, skip_difficult=False,
                        val_fraction=0.25, test_fraction=0.0)
    splits = {it.split for it in plan.items}
    assert splits == {"train", "val"} and plan.splits_source == "hash"
