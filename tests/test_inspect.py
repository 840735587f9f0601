"""od.inspect: good and bad records, OD API files, gallery, exit codes."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from od.viz.draw import color_for
from od.inspect import expand_inputs, inspect_records, main
from od.io.label_map import LabelMap, write_label_map
from od.io.example import _example_class, encode_example, source_id_for
from od.io.tfrecord import write_records
from od.core import Box

SHARED = Path(__file__).resolve().parents[2] / "shared"
RACCOON = SHARED / "datasets" / "raccoon"

LM = LabelMap.from_names(["circle", "square"])  # circle=1, square=2


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (128, 128, 128)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _example(name: str, boxes: list[Box], ids: list[int], w: int = 120, h: int = 90, **kw) -> bytes:
    args = dict(
        image_bytes=_jpeg(w, h), image_format="jpeg", width=w, height=h, filename=name,
        source_id=source_id_for(name), boxes=boxes, class_ids=ids,
    )
    args.update(kw)
    return encode_example(**args)


def _good(tmp_path: Path) -> Path:
    out = tmp_path / "records"
    write_records(out / "train-00000-of-00002.tfrecord", [
        _example("a.jpg", [Box(10, 10, 60, 50, name="circle"), Box(70, 20, 110, 80, name="square")], [1, 2]),
        _example("b.jpg", [Box(5, 5, 100, 85, name="circle", difficult=True)], [1]),
    ])
    write_records(out / "train-00001-of-00002.tfrecord", [_example("c.jpg", [], [])])
    write_records(out / "val-00000-of-00001.tfrecord", [
        _example("d.jpg", [Box(0, 0, 120, 90, name="square")], [2]),
    ])
    write_label_map(tmp_path / "label_map.pbtxt", LM)
    return out


def test_good_records(tmp_path: Path, capsys) -> None:
    out = _good(tmp_path)
    rc = main([str(out / "*.tfrecord"), "--label-map", str(tmp_path / "label_map.pbtxt")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "problem" not in cap.err
    lines = {l.split()[0]: l.split()[1:] for l in cap.out.splitlines() if l.startswith(("circle", "square"))}
    assert lines["circle"] == ["1", "2", "2", "1"]  # id, images, boxes, difficult
    assert lines["square"] == ["2", "2", "2", "0"]
    assert "4 records in 3 file(s): 4 boxes, 1 negative" in cap.out


def test_bad_records_are_named(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.tfrecord"
    write_records(bad, [
        _example("ok.jpg", [Box(1, 1, 20, 20, name="circle")], [1]),
        _example("out.jpg", [Box(-30, 10, 60, 50, name="circle")], [1]),  # xmin < 0
        _example("unknown.jpg", [Box(10, 10, 60, 50, name="star")], [7]),  # not in the map
        _example("mismatch.jpg", [Box(10, 10, 60, 50, name="circle")], [2]),  # text vs map
        _example("reversed.jpg", [Box(60, 10, 10, 50, name="circle")], [1]),
        _example("size.jpg", [], [], width=99, height=99, image_bytes=_jpeg(120, 90)),
        _example("broken.jpg", [], [], image_bytes=_jpeg(120, 90)[:300]),
        b"not an example at all \xff\xff",
    ])
    rc = main([str(bad), "--label-map", str(_label_map(tmp_path))])
    err = capsys.readouterr().err
    assert rc == 1
    problems = [l for l in err.splitlines() if l.startswith("od: problem:")]
    expect = {
        1: "outside [0, 1]", 2: "class id 7 ('star') is not in the label map",
        3: "class text 'circle' but the label map says id 2 is 'square'",
        4: "empty or reversed", 5: "image is 120x90 but the record says image/width=99",
        6: "image does not decode", 7: "cannot decode",
    }
    for idx, words in expect.items():
        assert any(f"{bad}: record {idx}" in l and words in l for l in problems), (idx, words, err)
    assert not any(": record 0 " in l for l in problems)
    assert "(out.jpg)" in err


def _label_map(tmp_path: Path) -> Path:
    p = tmp_path / "lm.pbtxt"
    write_label_map(p, LM)
    return p


def _with_sizes(record: bytes, **sizes: int | None) -> bytes:
    """``record`` with image/width / image/height set to any value (None: removed), written with the
    protobuf message class directly: od's encoder refuses sizes that are not positive."""
    ex = _example_class()()
    ex.ParseFromString(record)
    for key, value in sizes.items():
        name = f"image/{key}"
        if value is None:
            del ex.features.feature[name]
        else:
            ex.features.feature[name].int64_list.value[:] = [value]
    return ex.SerializeToString()


def test_impossible_sizes_are_problems(tmp_path: Path, capsys) -> None:
    f = tmp_path / "sizes.tfrecord"
    ok = _example("ok.jpg", [Box(1, 1, 20, 20, name="circle")], [1])  # 120x90
    write_records(f, [
        ok,
        _with_sizes(_example("w0.jpg", [], []), width=0),
        _with_sizes(_example("hneg.jpg", [], []), height=-5),
        _with_sizes(_example("both.jpg", [], []), width=0, height=0),
        _with_sizes(_example("w0h.jpg", [], []), width=0, height=91),  # and the height is wrong
        _example("big.jpg", [], [], width=120, height=91, image_bytes=_jpeg(120, 90)),  # off by one
        _with_sizes(_example("nowidth.jpg", [], []), width=None),
    ])
    rc = main([str(f)])
    err = capsys.readouterr().err
    assert rc == 1, err
    problems = [l for l in err.splitlines() if l.startswith("od: problem:")]

    def at(i: int) -> list[str]:
        return [l for l in problems if f"{f}: record {i} " in l]

    assert at(0) == []
    assert any("image/width=0 is not a possible image size" in l for l in at(1)), err
    assert any("image/height=-5 is not a possible image size" in l for l in at(2)), err
    assert len(at(3)) == 2 and all("is not a possible image size" in l for l in at(3)), err
    assert any("image/width=0 is not" in l for l in at(4)), err
    assert any("image is 120x90 but the record says image/height=91" in l for l in at(4)), err
    assert any("image is 120x90 but the record says image/height=91" in l for l in at(5)), err
    assert any("no image/width" in l for l in at(6)), err


def test_empty_file_is_a_problem(tmp_path: Path, capsys) -> None:
    out = _good(tmp_path)
    empty = out / "train-00002-of-00003.tfrecord"
    empty.write_bytes(b"")
    rc = main([str(out)])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert f"od: problem: {empty}: empty file: no records" in cap.err
    assert "4 records in 4 file(s)" in cap.out and "1 problem(s)" in cap.out
    res = inspect_records([str(empty)])
    assert [(p.index, p.problem) for p in res.problems] == [(-1, "empty file: no records (0 bytes)")]


def test_inconsistent_texts_without_label_map(tmp_path: Path) -> None:
    f = tmp_path / "x.record"
    write_records(f, [
        _example("a.jpg", [Box(1, 1, 20, 20, name="cat")], [1]),
        _example("b.jpg", [Box(1, 1, 20, 20, name="cat")], [3]),
        _example("c.jpg", [Box(1, 1, 20, 20, name="dog")], [0]),
        _example("d.jpg", [Box(1, 1, 20, 20, name="dog")], [1]),
    ])
    res = inspect_records([str(f)])
    msgs = [str(p) for p in res.problems]
    assert any("class text 'cat' has several ids" in m for m in msgs), msgs
    assert any("record 2 (c.jpg): box 0 has class id 0" in m for m in msgs), msgs
    assert any("class id 1 has several texts: 'cat' first at" in m and "record 3" in m for m in msgs), msgs


def test_truncated_file_and_usage_errors(tmp_path: Path, capsys) -> None:
    f = tmp_path / "t.tfrecord"
    write_records(f, [_example(f"{i}.jpg", [], []) for i in range(3)])
    data = f.read_bytes()
    f.write_bytes(data[:-40])
    res = inspect_records([str(f)])
    assert res.records_per_file[str(f)] == 2
    assert any(p.index == -1 and "after 2 good record(s)" in p.problem for p in res.problems)
    junk = tmp_path / "photo.tfrecord"
    junk.write_bytes(_jpeg(20, 20))
    res = inspect_records([str(junk)])
    assert [p.index for p in res.problems] == [-1] and "not readable as TFRecord" in res.problems[0].problem

    assert main([str(tmp_path / "nothing-*.tfrecord")]) == 2
    assert "no TFRecord files match" in capsys.readouterr().err
    assert main([str(f), "--label-map", str(tmp_path / "missing.pbtxt")]) == 2
    assert "missing.pbtxt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2


@pytest.mark.timeout(30)
def test_only_regular_files_are_opened(tmp_path: Path, capsys) -> None:
    out = _good(tmp_path)
    os.mkfifo(out / "train-00009-of-00010.tfrecord")  # found in the folder
    (out / "sub.tfrecord").mkdir()  # a folder named like a record, in the folder
    (out / "notes").mkdir()  # an ordinary sub-folder: not looked at
    fifo = tmp_path / "a.tfrecord"  # named on the command line
    os.mkfifo(fifo)
    folder = tmp_path / "b.tfrecord"
    folder.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "c.tfrecord"))
        rc = main([str(out), str(fifo), str(folder), str(tmp_path / "c.*"),
                   "--label-map", str(tmp_path / "label_map.pbtxt")])
    finally:
        sock.close()
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    problems = [l for l in cap.err.splitlines() if l.startswith("od: problem:")]
    for path, kind in ((out / "train-00009-of-00010.tfrecord", "a FIFO"), (out / "sub.tfrecord", "a folder"),
                       (fifo, "a FIFO"), (folder, "a folder"), (tmp_path / "c.tfrecord", "a socket")):
        assert any(l.startswith(f"od: problem: {path}: not a regular file ({kind})") for l in problems), (path, cap.err)
    assert len(problems) == 5, cap.err
    assert "notes" not in cap.err
    assert "4 records in 8 file(s)" in cap.out  # the good records are all read
    # The library call alike: a FIFO is reported, not opened (open() would wait for a writer).
    res = inspect_records([str(fifo), str(out / "val-00000-of-00001.tfrecord")])
    assert [(p.file, p.problem.split(";")[0]) for p in res.problems] == [(str(fifo), "not a regular file (a FIFO)")]
    assert res.num_records == 1


def test_file_names_that_are_not_utf8(tmp_path: Path, capsys) -> None:
    folder = os.path.join(os.fsencode(tmp_path), b"recs")
    os.mkdir(folder)
    name = os.fsdecode(os.path.join(folder, b"train-00000-of-00002-\xe9.tfrecord"))  # Latin-1 byte
    write_records(name, [_example("a.jpg", [Box(1, 1, 20, 20, name="circle")], [1])])
    open(os.path.join(folder, b"train-00001-of-00002-\xff.tfrecord"), "wb").close()  # empty: a problem
    png = tmp_path / "g" / "gallery.png"
    rc = main([os.fsdecode(folder), "--gallery", "16", "--out", str(png.parent)])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert "train-00000-of-00002-\\xe9.tfrecord  " in cap.out  # the per-file table
    assert "train-00001-of-00002-\\xff.tfrecord: empty file: no records" in cap.err
    assert "\\udc" not in cap.err and png.is_file()


def test_expand_inputs(tmp_path: Path) -> None:
    out = _good(tmp_path)
    (out / "report.json").write_text("{}")
    files, unmatched = expand_inputs([str(out), str(out / "val-*"), str(tmp_path / "nope")])
    assert [Path(p).name for p in files] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "val-00000-of-00001.tfrecord",
    ]
    assert unmatched == [str(tmp_path / "nope")]


def test_gallery(tmp_path: Path, capsys) -> None:
    out = _good(tmp_path)
    png = tmp_path / "gallery" / "gallery.png"
    rc = main([str(out), "--label-map", str(tmp_path / "label_map.pbtxt"), "--gallery", "3",
               "--out", str(png.parent), "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    with Image.open(png) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[0] > 300 and arr.shape[1] > 600  # a 2x2 grid of 320 px cells
    pixels = arr.reshape(-1, 3)
    for cid in (1, 2):
        hits = np.all(pixels == np.array(color_for(cid), dtype=np.uint8), axis=1).sum()
        assert hits > 100, (cid, hits)  # box outlines / label backgrounds in the class colour
    # The same seed picks the same examples.
    png2 = tmp_path / "g2" / "gallery.png"
    main([str(out), "--label-map", str(tmp_path / "label_map.pbtxt"), "--gallery", "3",
          "--out", str(png2.parent), "--seed", "1"])
    assert png2.read_bytes() == png.read_bytes()


def test_old_od_api_record(capsys) -> None:
    rec = RACCOON / "test.record"
    if not rec.exists():
        pytest.skip(f"{rec} not present")
    rc = main([str(rec), "--label-map", str(RACCOON / "label_map.pbtxt")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "non-numeric image/source_id" in cap.err  # a warning, not a problem
    assert "40 records in 1 file(s): 44 boxes" in cap.out


# --------------------------------------------------------------------------- classification records


def _labelled(name: str, label: int, text: str, w: int = 64, h: int = 48) -> bytes:
    from od.io.example import encode_classification_example

    return encode_classification_example(image_bytes=_jpeg(w, h), image_format="jpeg", width=w, height=h,
                                         filename=name, source_id=source_id_for(name), label=label, text=text)


def test_classification_records_count_images_per_class_and_draw_the_class(tmp_path, capsys):
    from od.data import synthetic_classes
    from od.records import main as records_main

    synthetic_classes.generate(tmp_path / "data", 18, seed=1)
    assert records_main([str(tmp_path / "data"), "--out", str(tmp_path / "r"), "--label-map",
                         str(tmp_path / "r" / "label_map.pbtxt"), "--quiet"]) == 0
    capsys.readouterr()
    rc = main([str(tmp_path / "r"), "--label-map", str(tmp_path / "r" / "label_map.pbtxt"), "--gallery", "4",
               "--out", str(tmp_path / "g")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "class     id  label  images" in cap.out and "classification records" in cap.out
    for name in synthetic_classes.CLASSES:  # 18 images, 3 of each class; ids sorted by name
        line = next(ln for ln in cap.out.splitlines() if ln.startswith(name + " "))
        assert line.split()[-1] == "3", line
    assert "box" not in cap.out.split("\n\n")[-1].replace("box-less", "")
    g = Image.open(tmp_path / "g" / "gallery.png")
    assert g.size[0] >= 640


def test_classification_label_outside_the_map_or_disagreeing_with_its_text_is_a_problem(tmp_path, capsys):
    write_records(tmp_path / "train-00000-of-00001.tfrecord", [
        _labelled("ok.jpg", 0, "circle"),
        _labelled("far.jpg", 7, "hexagon"),  # id 8: not in a two-class map
        _labelled("swapped.jpg", 1, "circle"),  # label 1 is square
    ])
    write_label_map(tmp_path / "label_map.pbtxt", LM)
    rc = main([str(tmp_path / "train-00000-of-00001.tfrecord"), "--label-map", str(tmp_path / "label_map.pbtxt")])
    cap = capsys.readouterr()
    assert rc == 1
    problems = [ln for ln in cap.err.splitlines() if ln.startswith("od: problem:")]
    assert len(problems) == 3, cap.err
    assert "record 1 (far.jpg)" in problems[0] and "no id 8 in the label map" in problems[0]
    assert "record 2 (swapped.jpg)" in problems[1] and "'circle'" in problems[1] and "'square'" in problems[1]
    assert "class text 'circle' has several ids" in problems[2]  # one class, two labels: training would split it
