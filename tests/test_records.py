"""od.records end to end on small hand-made datasets (no training)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hostile import img as _img
from hostile import xml as _xml
from od import records
from od.data import convert, plan, synthetic
from od.data import layout as odlayout
from od.io.label_map import read_label_map
from od.io.example import decode_example
from od.io.tfrecord import iter_records
from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE
from od.data.voc import apply_box_rules, parse_voc

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
RACCOON = SHARED / "datasets" / "raccoon"


# --------------------------------------------------------------------------- helpers


def _convert(args: list[str], workers: int = 1) -> tuple[int, dict | None]:
    rc = records.main([*args, "--quiet", "--workers", str(workers)])
    out = Path(args[args.index("--out") + 1])
    rep = out / "report.json"
    return rc, json.loads(rep.read_text()) if rep.exists() else None


def _examples(out: Path) -> dict[str, tuple[str, object]]:
    """filename -> (split, DecodedExample) over every shard in ``out``."""
    res = {}
    for shard in sorted(out.glob("*.tfrecord")):
        split = shard.name.split("-")[0]
        for rec in iter_records(shard):  # checks every CRC
            ex = decode_example(rec)
            res[ex.filename] = (split, ex)
    return res


IN_A_FRESH_PROCESS = (
    "from od import records\n"
    "from od.data import convert, shards\n"
    "shards.MIN_POOL_BYTES = 0  # worker processes even for a small dataset\n"
)


def _python(script: str, timeout: int = 120) -> str:
    """stdout + stderr of ``script`` run by a fresh interpreter in the repo (workers fork from a clean process)."""
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return res.stdout + res.stderr


def _problems(report: dict) -> dict[str, list[tuple[str, str]]]:
    d: dict[str, list[tuple[str, str]]] = {}
    for p in report["problems"]:
        d.setdefault(p["file"], []).append((p["problem"], p["action"]))
    return d


# --------------------------------------------------------------------------- Model Garden interop


def test_model_garden_decoder_reads_boxes_and_labels_equal_to_xml(tmp_path):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 10, seed=7)
    _img(ds / "edge.jpg", (100, 50))
    _xml(ds / "edge.xml", "edge.jpg", (100, 50),
         [("square", -10, 5.5, 30.25, 40), ("circle", 60, 10, 140, 70), ("triangle", 10, 10, 10, 20)])
    out = tmp_path / "rec"
    rc, rep = _convert([str(ds), "--out", str(out), "--label-map", str(tmp_path / "lm.pbtxt"), "--val-fraction", "0.3"])
    assert rc == 0
    assert set(rep) == {"version", "data_dir", "label_map", "classes", "num_classes", "splits", "problems", "outside_roots", "summary", "box_sizes"}
    assert rep["classes"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
    assert set(rep["splits"]) == {"train", "val"} and rep["num_classes"] == 3
    for sp in rep["splits"].values():
        assert set(sp) == {"files", "num_images", "num_boxes", "negatives", "per_class"}
        assert all((out / f).is_file() for f in sp["files"])
    assert {p["action"] for p in rep["problems"]} == {FIXED, DROPPED_BOX}

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder

    decoder = TfExampleDecoder()
    lm = read_label_map(tmp_path / "lm.pbtxt")
    files = [str(out / f) for sp in rep["splits"].values() for f in sp["files"]]
    seen_ids = set()
    n = 0
    for rec in tf.data.TFRecordDataset(files):  # TF's reader checks every CRC
        d = {k: v.numpy() for k, v in decoder.decode(rec).items()}
        ex = decode_example(rec.numpy())
        ann = parse_voc(ds / Path(ex.filename).with_suffix(".xml"), ds)
        h, w = d["height"], d["width"]
        assert d["image"].shape == (h, w, 3)
        expected, _ = apply_box_rules(ann.boxes, w, h, "x")
        got = d["groundtruth_boxes"] * np.array([h, w, h, w])
        want = np.array([[b.ymin, b.xmin, b.ymax, b.xmax] for b in expected]).reshape(-1, 4)
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert list(d["groundtruth_classes"]) == [lm.name_to_id[b.name] for b in expected]
        np.testing.assert_allclose(d["groundtruth_area"], [b.area for b in expected], rtol=1e-5)
        sid = d["source_id"].decode()
        assert sid.isdigit() and sid not in seen_ids
        seen_ids.add(sid)
        if ex.filename == "edge.jpg":
            np.testing.assert_allclose(want, [[5.5, 0, 40, 30.25], [10, 60, 50, 100]])
        n += 1
    assert n == 11


# --------------------------------------------------------------------------- bad input


def test_bad_input_corpus_each_reported_rest_converted(tmp_path):
    ds = tmp_path / "ds"
    A, I = ds / "annotations", ds / "images"
    _img(tmp_path / "outside.jpg")
    for name in ("good1", "good2", "twin", "boxes", "mismatch", "zebra"):
        _img(I / f"{name}.jpg")
    _xml(A / "good1.xml", "good1.jpg", objects=[("cat", 1, 2, 30, 40)])
    _xml(A / "good2.xml", "good2.jpg", objects=[("dog", 1.5, 2.5, 70.5, 50)])
    _img(I / "malformed.jpg")
    _xml(A / "malformed.xml", "", raw="<annotation><filename>malformed.jpg</filename><object>")
    _img(I / "xxe.jpg")
    _xml(A / "xxe.xml", "", raw='<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>'
                                "<filename>xxe.jpg</filename><object><name>&x;</name></object></annotation>")
    laughs = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10 if i else "lol"}">' for i in range(10))
    _img(I / "laughs.jpg")
    _xml(A / "laughs.xml", "", raw=f"<!DOCTYPE a [{laughs}]><annotation><filename>laughs.jpg</filename>"
                                   "<folder>&l9;</folder></annotation>")
    _xml(A / "dotdot.xml", "../../outside.jpg", objects=[("cat", 1, 1, 9, 9)])
    _xml(A / "absolute.xml", str(tmp_path / "outside.jpg"), objects=[("cat", 1, 1, 9, 9)])
    _xml(A / "missing.xml", "missing.jpg", objects=[("cat", 1, 1, 9, 9)])
    (I / "zero.jpg").write_bytes(b"")
    _xml(A / "zero.xml", "zero.jpg", objects=[("cat", 1, 1, 9, 9)])
    full = io.BytesIO()
    Image.effect_noise((300, 200), 50).convert("RGB").save(full, "JPEG")
    (I / "truncated.jpg").write_bytes(full.getvalue()[:3000])
    _xml(A / "truncated.xml", "truncated.jpg", (300, 200), [("cat", 1, 1, 9, 9)])
    (I / "notimage.jpg").write_text("hello, I am a text file")
    _xml(A / "notimage.xml", "notimage.jpg", objects=[("cat", 1, 1, 9, 9)])
    _xml(A / "twin_a.xml", "twin.jpg", objects=[("cat", 1, 1, 9, 9)])
    _xml(A / "twin_b.xml", "twin.jpg", objects=[("dog", 1, 1, 9, 9)])
    _xml(A / "boxes.xml", "boxes.jpg", objects=[
        ("cat", 30, 10, 20, 20), ("cat", 10, 10, 10, 20), ("cat", 200, 200, 300, 300), ("dog", -5, 50, 20, 90),
        ("cat", 5, 5, 25, 25)])
    _xml(A / "mismatch.xml", "mismatch.jpg", (640, 480), [("cat", 1, 1, 9, 9)])
    _xml(A / "zebra.xml", "zebra.jpg", objects=[("zebra", 1, 1, 9, 9), ("cat", 10, 10, 20, 20)])
    lm = tmp_path / "lm.pbtxt"
    lm.write_text("item { id: 1 name: 'cat' }\nitem { id: 2 name: 'dog' }\n")

    out = tmp_path / "rec"
    rc, rep = _convert([str(ds), "--out", str(out), "--label-map", str(lm)])
    assert rc == 1  # converted, with skipped images
    pr = _problems(rep)

    def has(file, words, action):
        assert any(all(w in msg for w in words) and a == action for msg, a in pr.get(file, [])), (file, pr.get(file))

    has("annotations/malformed.xml", ["malformed XML"], SKIPPED_IMAGE)
    has("annotations/xxe.xml", ["DOCTYPE"], SKIPPED_IMAGE)
    has("annotations/laughs.xml", ["DOCTYPE"], SKIPPED_IMAGE)
    has("annotations/dotdot.xml", ["'..'", "not read"], SKIPPED_IMAGE)
    has("annotations/absolute.xml", ["absolute path", "not read"], SKIPPED_IMAGE)
    has("annotations/missing.xml", ["image not found", "missing.jpg"], SKIPPED_IMAGE)
    has("images/zero.jpg", ["empty"], SKIPPED_IMAGE)
    has("images/truncated.jpg", ["truncated"], SKIPPED_IMAGE)
    has("images/notimage.jpg", ["not an image"], SKIPPED_IMAGE)
    has("annotations/twin_b.xml", ["same image", "images/twin.jpg", "twin_a.xml"], SKIPPED_IMAGE)
    has("annotations/boxes.xml", ["reversed"], DROPPED_BOX)
    has("annotations/boxes.xml", ["zero area"], DROPPED_BOX)
    has("annotations/boxes.xml", ["entirely outside"], DROPPED_BOX)
    has("annotations/boxes.xml", ["clipped to [0, 50, 20, 60]"], FIXED)
    has("images/mismatch.jpg", ["XML <size> 640x480", "80x60"], FIXED)
    has("annotations/zebra.xml", ["'zebra'", "not in the label map", "--add-classes"], DROPPED_BOX)
    assert "passwd" not in json.dumps(rep) and "root:" not in json.dumps(rep)

    ex = _examples(out)
    assert sorted(ex) == ["boxes.jpg", "good1.jpg", "good2.jpg", "mismatch.jpg", "twin.jpg", "zebra.jpg"]
    assert [b.name for b in ex["boxes.jpg"][1].boxes_px()] == ["dog", "cat"]
    assert ex["twin.jpg"][1].class_texts == ["cat"]  # twin_a kept
    assert list(ex["zebra.jpg"][1].class_ids) == [1]
    assert rep["summary"]["images_converted"] == 6 and rep["summary"]["images_skipped"] == 10
    assert read_label_map(lm).names == ["cat", "dog"]  # user's file untouched


def test_nothing_convertible_and_usage_errors(tmp_path, capsys):
    ds = tmp_path / "ds"
    _xml(ds / "a.xml", "nope.jpg")
    out = tmp_path / "rec"
    rc, rep = _convert([str(ds), "--out", str(out), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 1 and rep is None and not out.exists()
    assert "image not found" in capsys.readouterr().err
    assert records.main([str(tmp_path / "absent"), "--out", str(out)]) == 2
    (tmp_path / "empty").mkdir()
    assert records.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no Pascal VOC XML found" in capsys.readouterr().err
    assert records.main([]) == 2
    with pytest.raises(SystemExit) as e:
        records.main([str(ds), "--val-fraction", "1.5"])
    assert e.value.code == 2


# --------------------------------------------------------------------------- images end to end


def _exif6() -> bytes:
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)


def test_exif_orientation_boxes_land_on_the_right_pixels(tmp_path):
    ds = tmp_path / "ds"
    box = (12, 6, 44, 26)
    shown = Image.new("RGB", (96, 64), (90, 90, 90))
    shown.paste((255, 0, 0), box)
    # XML drawn on the rotated (displayed) frame: stored sideways + EXIF 6
    shown.transpose(Image.Transpose.ROTATE_90).save(ds.mkdir() or ds / "rot.jpg", "JPEG", quality=95, exif=_exif6())
    _xml(ds / "rot.xml", "rot.jpg", (96, 64), [("red", *box)])
    # XML drawn on the raw pixels although EXIF says 6
    shown.save(ds / "raw.jpg", "JPEG", quality=95, exif=_exif6())
    _xml(ds / "raw.xml", "raw.jpg", (96, 64), [("red", *box)])
    out = tmp_path / "rec"
    rc, rep = _convert([str(ds), "--out", str(out), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 0
    for name in ("rot.jpg", "raw.jpg"):
        ex = _examples(out)[name][1]
        im = Image.open(io.BytesIO(ex.image_bytes))
        assert im.size == (96, 64) == (ex.width, ex.height)
        assert im.getexif().get(0x0112) in (None, 1)  # nothing downstream will rotate it again
        [b] = ex.boxes_px()
        a = np.asarray(im.convert("RGB"), dtype=int)
        x0, y0, x1, y1 = (int(round(v)) for v in (b.xmin, b.ymin, b.xmax, b.ymax))
        inside = a[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
        assert ((inside[..., 0] > 200) & (inside[..., 1] < 60)).mean() > 0.95, name
        a[y0:y1, x0:x1] = 0
        assert ((a[..., 0] > 200) & (a[..., 1] < 60)).mean() < 0.01, name
    msgs = [p["problem"] for p in rep["problems"]]
    assert any("matches the rotated image" in m for m in msgs) and any("matches the raw pixels" in m for m in msgs)


def test_conversions_and_byte_for_byte_fast_path(tmp_path):
    ds = tmp_path / "ds"
    _img(ds / "plain.jpg", quality=77)
    _img(ds / "gray.jpg", mode="L")
    _img(ds / "png.png", fmt="PNG")
    _img(ds / "rgba.png", fmt="PNG", mode="RGBA")
    _img(ds / "cmyk.jpg", mode="CMYK")
    for n in ("plain.jpg", "gray.jpg", "png.png", "rgba.png", "cmyk.jpg"):
        _xml(ds / f"{Path(n).stem}.xml", n, objects=[("thing", 5, 5, 50, 40)])
    out = tmp_path / "rec"
    rc, rep = _convert([str(ds), "--out", str(out), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 0
    ex = _examples(out)
    assert ex["plain.jpg"][1].image_bytes == (ds / "plain.jpg").read_bytes()
    for n in ("gray.jpg", "png.png", "rgba.png", "cmyk.jpg"):
        e = ex[n][1]
        im = Image.open(io.BytesIO(e.image_bytes))
        assert im.format == "JPEG" and im.mode == "RGB" and e.image_format == "jpeg"
        want = [round(0.299 * 40 + 0.587 * 120 + 0.114 * 200)] * 3 if n == "gray.jpg" else [40, 120, 200]
        assert np.abs(np.asarray(im, int)[30, 40] - want).max() < 25, n
    assert rep["summary"]["images_copied_unchanged"] == 1 and rep["summary"]["images_reencoded"] == 4
    assert sum("converted to RGB JPEG" in p["problem"] for p in rep["problems"]) == 4


# --------------------------------------------------------------------------- splits, determinism, layouts


def test_split_stability_when_images_are_added(tmp_path):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 40, seed=5)
    rc, rep = _convert([str(ds), "--out", str(tmp_path / "r1"), "--label-map", str(tmp_path / "lm.pbtxt")])
    first = {k: v[0] for k, v in _examples(tmp_path / "r1").items()}
    assert rc == 0 and set(first.values()) == {"train", "val"}
    synthetic.generate(ds, 70, seed=5)  # same first 40 files, 30 new ones
    rc, rep = _convert([str(ds), "--out", str(tmp_path / "r2"), "--label-map", str(tmp_path / "lm.pbtxt")])
    second = {k: v[0] for k, v in _examples(tmp_path / "r2").items()}
    assert len(second) == 70 and all(second[k] == s for k, s in first.items())
    assert 0.1 < list(second.values()).count("val") / 70 < 0.35


def test_rerun_byte_identical_and_workers_do_not_change_output(tmp_path):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 24, seed=9)
    _img(ds / "gray.jpg", mode="L")
    _xml(ds / "gray.xml", "gray.jpg", objects=[("square", 5, 5, 40, 40)])
    lm = tmp_path / "lm.pbtxt"
    args = [str(ds), "--label-map", str(lm), "--shards", "2", "--test-fraction", "0.2"]
    assert _convert([*args, "--out", str(tmp_path / "a")])[0] == 0
    assert _convert([*args, "--out", str(tmp_path / "b")])[0] == 0
    # separate processes with pools of 2 and 3 workers (forked: nothing else is loaded there),
    # through the CLI; TF must never be imported by it
    for workers, name in ((2, "c"), (3, "d")):
        script = IN_A_FRESH_PROCESS + (
            "import sys\n"
            f"rc = records.main({[*args, '--out', str(tmp_path / name), '--workers', str(workers)]!r})\n"
            "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-FREE', rc)\n"
        )
        out = _python(script)
        assert "TF-FREE 0" in out, out

    def snapshot(d: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir())}

    a, b, c, d = (snapshot(tmp_path / n) for n in "abcd")
    names = sorted(a)
    assert "train-00000-of-00002.tfrecord" in names and "test-00001-of-00002.tfrecord" in names
    assert a == b == c == d


def test_help_is_fast_and_tf_free():
    script = (
        "import sys\nfrom od import records\n"
        "try:\n    records.main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-FREE', code)\n"
    )
    out = _python(script, timeout=60)
    assert "TF-FREE 0" in out and "--add-classes" in out


@pytest.mark.parametrize("ann_name, img_name", [("annotations", "images"), ("annots", "imgs"), ("xml", "JPEGImages")])
def test_layout_annotations_beside_images(tmp_path, ann_name, img_name):
    ds = tmp_path / "ds"
    _img(ds / img_name / "a.jpg")
    _xml(ds / ann_name / "a.xml", "a.jpg", objects=[("cat", 1, 1, 20, 20)])
    layout = odlayout.detect_layout(ds)
    assert layout.kind == "folders" and layout.annotations_dir == ds / ann_name and layout.images_dir == ds / img_name
    rc, rep = _convert([str(ds), "--out", str(tmp_path / "r"), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 0 and rep["summary"]["layout"] == "folders" and rep["summary"]["images_converted"] == 1


def test_layout_flat_nested_and_explicit_override(tmp_path):
    ds = tmp_path / "flat"
    for sub in ("", "day/", "night/"):
        _img(ds / f"{sub}p.jpg")
        _xml(ds / f"{sub}p.xml", "p.jpg", objects=[("cat", 1, 1, 20, 20)])
    assert odlayout.detect_layout(ds).kind == "flat"
    rc, rep = _convert([str(ds), "--out", str(tmp_path / "r"), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 0 and rep["summary"]["images_converted"] == 3
    ex = _examples(tmp_path / "r")
    assert sorted(ex) == ["day/p.jpg", "night/p.jpg", "p.jpg"]
    assert len({e.source_id for _, e in ex.values()}) == 3

    odd = tmp_path / "odd"
    _img(odd / "pics" / "q.jpg")
    _xml(odd / "labels" / "q.xml", "q.jpg", objects=[("cat", 1, 1, 20, 20)])
    with pytest.raises(odlayout.UsageError):
        odlayout.detect_layout(odd / "pics")
    rc, rep = _convert([str(odd), "--annotations", "labels", "--images", "pics",
                        "--out", str(tmp_path / "r2"), "--label-map", str(tmp_path / "lm.pbtxt")])
    assert rc == 0 and rep["summary"]["layout"] == "explicit" and rep["summary"]["images_converted"] == 1


def test_vocdevkit_imagesets_split_honoured(tmp_path):
    root = tmp_path / "VOCdevkit"
    voc = root / "VOC2007"
    for stem in ("000001", "000002", "000003", "000004", "000005"):
        _img(voc / "JPEGImages" / f"{stem}.jpg")
        _xml(voc / "Annotations" / f"{stem}.xml", f"{stem}.jpg",
             objects=[("cat", 1, 1, 20, 20, stem == "000002"), ("dog", 30, 30, 60, 50)])
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("000001\n000002\n")
    (main / "val.txt").write_text("000003\n")
    (main / "test.txt").write_text("000004\n")
    layout = odlayout.detect_layout(root)  # the VOCdevkit root with a single year folder works too
    assert layout.kind == "voc" and layout.root == voc and layout.imagesets_dir == main
    rc, rep = _convert([str(voc), "--out", str(tmp_path / "r"), "--label-map", str(tmp_path / "lm.pbtxt"),
                        "--skip-difficult"])
    assert rc == 0
    got = {k: v[0] for k, v in _examples(tmp_path / "r").items()}
    assert got == {"000001.jpg": "train", "000002.jpg": "train", "000003.jpg": "val", "000004.jpg": "test"}
    assert rep["summary"]["not_in_imagesets"] == 1 and rep["summary"]["split_source"] == "ImageSets/Main"
    assert rep["summary"]["difficult_boxes_skipped"] == 1 and rep["splits"]["train"]["num_boxes"] == 3


# --------------------------------------------------------------------------- strict, label map, interruption


def test_strict_exits_before_writing_anything(tmp_path, capsys):
    ds = tmp_path / "ds"
    _img(ds / "a.jpg")
    _xml(ds / "a.xml", "a.jpg", objects=[("cat", 1, 1, 20, 20)])
    _img(ds / "b.jpg", mode="L")  # a conversion is a decision the report records: strict refuses it
    _xml(ds / "b.xml", "b.jpg", objects=[("cat", 1, 1, 20, 20)])
    out, lm = tmp_path / "rec", tmp_path / "lm.pbtxt"
    rc, rep = _convert([str(ds), "--out", str(out), "--label-map", str(lm), "--strict"])
    assert rc == 1 and not out.exists() and not lm.exists()
    err = capsys.readouterr().err
    assert "b.jpg" in err and "--strict" in err and "nothing written" in err
    (ds / "b.xml").unlink()
    rc, rep = _convert([str(ds), "--out", str(out), "--label-map", str(lm), "--strict"])
    assert rc == 0 and rep["summary"]["images_converted"] == 1


def test_existing_label_map_honoured_and_add_classes(tmp_path):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 12, seed=11)
    lm = tmp_path / "lm.pbtxt"
    original = "# my classes\nitem {\n  id: 7\n  name: 'circle'\n  display_name: 'Circle'\n}\nitem { name: 'square' id: 3 }\n"
    lm.write_text(original)
    rc, rep = _convert([str(ds), "--out", str(tmp_path / "r1"), "--label-map", str(lm)])
    assert rc == 0  # boxes dropped, but every image converted
    assert lm.read_text() == original
    assert rep["classes"] == [{"id": 3, "name": "square"}, {"id": 7, "name": "circle"}] and rep["num_classes"] == 7
    assert any("'triangle'" in p["problem"] and p["action"] == DROPPED_BOX for p in rep["problems"])
    for _, e in _examples(tmp_path / "r1").values():
        assert set(e.class_texts) <= {"circle", "square"}
        assert all({"circle": 7, "square": 3}[t] == i for t, i in zip(e.class_texts, e.class_ids))

    rc, rep = _convert([str(ds), "--out", str(tmp_path / "r2"), "--label-map", str(lm), "--add-classes"])
    assert rc == 0 and not any("triangle" in p["problem"] for p in rep["problems"])
    new = read_label_map(lm)
    assert new.name_to_id == {"square": 3, "circle": 7, "triangle": 8}
    assert any(8 in e.class_ids for _, e in _examples(tmp_path / "r2").values())


def test_interrupted_run_leaves_no_finished_looking_shard(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 12, seed=2)
    out, lm = tmp_path / "rec", tmp_path / "lm.pbtxt"
    assert _convert([str(ds), "--out", str(out), "--label-map", str(lm)])[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    synthetic.generate(ds, 20, seed=2)  # more data, then the next run is interrupted part-way

    real = convert._convert_item
    calls = {"n": 0}

    def flaky(item, name_to_id):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(item, name_to_id)

    monkeypatch.setattr(convert, "_convert_item", flaky)
    rc = records.main([str(ds), "--out", str(out), "--label-map", str(lm), "--quiet", "--workers", "1", "--shards", "2"])
    assert rc == 130
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # old shards + report untouched, no temp files, no new-looking shards
    # a stale temp from a killed process is cleaned by the next run
    (out / ".train-00000-of-00002.tfrecord.999.tmp").write_bytes(b"partial")
    monkeypatch.setattr(convert, "_convert_item", real)
    assert _convert([str(ds), "--out", str(out), "--label-map", str(lm), "--shards", "2"])[0] == 0
    names = sorted(p.name for p in out.iterdir())
    rep = json.loads((out / "report.json").read_text())
    listed = sorted(f for sp in rep["splits"].values() for f in sp["files"])
    assert names == ["report.json", *listed] and "train-00001-of-00002.tfrecord" in listed
    assert sum(sp["num_images"] for sp in rep["splits"].values()) == 20


def test_worker_processes_write_whole_shards_with_the_same_bytes(tmp_path):
    """Shards written by several worker processes == the same shards written by this process."""
    ds = tmp_path / "ds"
    synthetic.generate(ds, 60, seed=4)
    lm = tmp_path / "lm.pbtxt"
    args = [str(ds), "--label-map", str(lm), "--shards", "3"]
    assert _convert([*args, "--out", str(tmp_path / "one")])[0] == 0
    script = IN_A_FRESH_PROCESS + (
        "import os\n"
        "print('PARENT', os.getpid(), flush=True)\n"
        "real = shards.write_shard\n"
        "def spy(task, progress):\n"
        "    os.write(1, f'SHARD {os.getpid()} {os.path.basename(task.final_path)}\\n'.encode())  # one atomic write\n"
        "    return real(task, progress)\n"
        "shards.write_shard = spy\n"
        f"rc = records.main({[*args, '--out', str(tmp_path / 'three'), '--workers', '3', '--quiet']!r})\n"
        "print('RC', rc)\n"
    )
    out = _python(script)
    assert "RC 0" in out, out
    parent = next(ln.split()[1] for ln in out.splitlines() if ln.startswith("PARENT"))
    written = [ln.split() for ln in out.splitlines() if ln.startswith("SHARD")]
    assert len(written) == 6 and len({w[2] for w in written}) == 6  # each shard once, whole
    pids = {w[1] for w in written}
    assert len(pids) >= 2 and parent not in pids  # worker processes wrote them
    one = {p.name: p.read_bytes() for p in sorted((tmp_path / "one").iterdir())}
    three = {p.name: p.read_bytes() for p in sorted((tmp_path / "three").iterdir())}
    assert len(one) == 7 and one == three


def test_spawned_workers_once_tensorflow_is_loaded_give_the_same_bytes(tmp_path, monkeypatch):
    """Forking after TensorFlow is loaded is unsafe (its threads): then workers are spawned."""
    from od.data import shards

    ds = tmp_path / "ds"
    synthetic.generate(ds, 30, seed=12)
    args = [str(ds), "--label-map", str(tmp_path / "lm.pbtxt"), "--shards", "2"]
    assert _convert([*args, "--out", str(tmp_path / "one")])[0] == 0
    monkeypatch.setattr(shards, "MIN_POOL_BYTES", 0)
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow") or types.ModuleType("tensorflow"))
    started = []
    real = shards.ProcessPoolExecutor

    def spy(*a, **kw):
        started.append(kw["mp_context"].get_start_method())
        return real(*a, **kw)

    monkeypatch.setattr(shards, "ProcessPoolExecutor", spy)
    assert _convert([*args, "--out", str(tmp_path / "two")], workers=2)[0] == 0
    assert started == ["spawn"]
    one = {p.name: p.read_bytes() for p in sorted((tmp_path / "one").iterdir())}
    assert len(one) == 5 and one == {p.name: p.read_bytes() for p in sorted((tmp_path / "two").iterdir())}


def test_default_shard_count_grows_with_the_data_not_with_workers(tmp_path):
    mb = 1024 * 1024

    def shard_counts(n_images: int, image_mb: float) -> int:
        items = [plan.Item(i, f"k{i}", "train", "x.xml", "x.jpg", "x.jpg", "x.jpg", None, (), i + 1,
                           size=int(image_mb * mb)) for i in range(n_images)]
        return len(plan.make_shard_tasks(types.SimpleNamespace(items=items), tmp_path, None, {}))

    assert shard_counts(200, 0.07) == 1  # raccoon-sized: one shard, one job
    assert shard_counts(2000, 0.03) == 1  # < 2 x MIN_SHARD_BYTES: not worth splitting
    assert shard_counts(100, 1.2) == 3  # 120 MB: 3 workers can share it
    assert shard_counts(400, 1.2) == plan.PARALLEL_SHARDS  # 480 MB: 8 shards of 60 MB
    assert shard_counts(2000, 1.2) == 16  # 2.4 GB: ~150 MB each
    assert shard_counts(5, 100) == 5  # never more shards than images


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_failing_worker_stops_the_run_and_leaves_no_temp_files(tmp_path, how):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 40, seed=6)
    out = tmp_path / "rec"
    fail = "raise RuntimeError('disk on fire')" if how == "raises" else "os._exit(3)"
    script = IN_A_FRESH_PROCESS + (
        "import os, time\n"
        "parent = os.getpid()\n"
        "real = convert._convert_item\n"
        "def boom(item, name_to_id):\n"
        "    if os.getpid() != parent and item.index % 2:\n"
        f"        {fail}\n"
        "    time.sleep(0.01)\n"
        "    return real(item, name_to_id)\n"
        "convert._convert_item = boom\n"
        "try:\n"
        f"    print('RC', records.main({[str(ds), '--out', str(out), '--label-map', str(tmp_path / 'lm.pbtxt'), '--workers', '2', '--shards', '2', '--quiet']!r}))\n"
        "except RuntimeError as e:\n"
        "    print('RUNTIME-ERROR', e)\n"
    )
    said = _python(script)
    if how == "raises":  # a bug in a worker surfaces as itself, as it would in one process
        assert "RUNTIME-ERROR disk on fire" in said, said
    else:  # a killed worker is an expected failure: one error line, exit 1
        assert "od: error: a worker process died" in said and "RC 1" in said and "Traceback" not in said, said
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_ctrl_c_while_workers_write_stops_them_and_leaves_no_temp_files(tmp_path):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 40, seed=3)
    out, lm = tmp_path / "rec", tmp_path / "lm.pbtxt"
    args = [str(ds), "--out", str(out), "--label-map", str(lm), "--shards", "2"]
    assert _convert(args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = (
        "import multiprocessing, os, time, tqdm\n"
        "class Bar:\n"
        "    def __init__(self, *a, **kw):\n"
        "        pass\n"
        "    def update(self, n=1):\n"
        "        if n:\n"
        "            raise KeyboardInterrupt  # Ctrl-C lands in the parent while the workers convert\n"
        "    def close(self):\n"
        "        pass\n"
        "tqdm.tqdm = Bar\n"
        + IN_A_FRESH_PROCESS
        + "real = convert._convert_item\n"
        "def slow(item, name_to_id):\n"
        "    time.sleep(0.05)\n"
        "    return real(item, name_to_id)\n"
        "convert._convert_item = slow\n"
        f"rc = records.main({[*args, '--workers', '2']!r})\n"
        "print('RC', rc, 'ALIVE', len(multiprocessing.active_children()))\n"
    )
    said = _python(script)
    assert "RC 130 ALIVE 0" in said and "interrupted" in said, said
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, nothing replaced


def test_progress_counts_every_image_whoever_converts_it(tmp_path):
    ds = tmp_path / "ds"
    synthetic.generate(ds, 40, seed=8)
    script = (
        "import io, contextlib, tqdm\n"
        "counts = {}\n"
        "class Bar:\n"
        "    def __init__(self, total=None, desc='', **kw):\n"
        "        self.desc = desc; counts[desc] = [total, 0]\n"
        "    def update(self, n=1):\n"
        "        counts[self.desc][1] += n\n"
        "    def close(self):\n"
        "        pass\n"
        "tqdm.tqdm = Bar\n"
        + IN_A_FRESH_PROCESS
        + "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = records.main({[str(ds), '--out', str(tmp_path / 'r'), '--label-map', str(tmp_path / 'lm.pbtxt'), '--workers', '2', '--shards', '3']!r})\n"
        "print('RC', rc, sorted(counts.items()))\n"
    )
    out = _python(script)
    assert "RC 0 [('converting', [40, 40])]" in out, out


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not RACCOON.is_dir(), reason="../shared/datasets/raccoon not present")
def test_raccoon_dataset_converts_and_matches_od_api_records(tmp_path):
    out = tmp_path / "rec"
    rc, rep = _convert([str(RACCOON), "--out", str(out), "--label-map", str(tmp_path / "lm.pbtxt")], workers=2)
    assert rc == 0
    s = rep["summary"]
    assert s["images_converted"] == 200 and s["boxes"] == 217 and s["layout"] == "folders"
    assert s["images_copied_unchanged"] == 197 and s["images_reencoded"] == 3
    assert sorted(p["file"] for p in rep["problems"]) == [
        "images/raccoon-150.jpg", "images/raccoon-152.jpg", "images/raccoon-161.jpg"]
    ours = {k: v[1] for k, v in _examples(out).items()}
    # the old OD API tools' test.record: same boxes (normalised) for the same files
    old_path = RACCOON / "test.record"
    if old_path.is_file():
        checked = 0
        for rec in iter_records(old_path):
            old = decode_example(rec)
            if old.filename in ours:
                np.testing.assert_allclose(ours[old.filename].boxes_yxyx, old.boxes_yxyx, atol=1e-6)
                checked += 1
        assert checked > 0
