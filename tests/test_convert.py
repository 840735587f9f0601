"""od.convert: round trips through every format (boxes, pixels, classes, splits as od.records reads
them), never writing into the input, --force and the manifest, bad images, EXIF, link modes."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile import img, xml
from PIL import Image

from od import convert, records
from od.core import Box
from od.data import layout as odlayout
from od.data import reformat, synthetic
from od.data.formats import LabelledImage
from od.data.voc import parse_voc, write_voc_dataset
from od.io.example import decode_example
from od.io.tfrecord import iter_records

REPO = Path(__file__).resolve().parents[1]
SPLIT_OF = ("train", "val", "test")
# The rounding each target format imposes on a box coordinate, in pixels (as the writers state;
# the VOC writer keeps 0.01 px). On the way back VOC's 0.01 px rounding applies once more.
TOLERANCE = {"voc": 0.0, "coco": 0.01, "yolo": 0.01, "csv": 0.01}


# --------------------------------------------------------------------------- helpers


def _voc_devkit(root: Path, n: int = 9) -> dict[str, list[tuple]]:
    """A VOC year folder of generated images with explicit train/val/test lists; image 0 has a box at
    x=0, image 1 half-pixel coordinates, image 2 no box (a negative). Returns stem -> boxes."""
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    lists: dict[str, list[str]] = {s: [] for s in SPLIT_OF}
    truth = {}
    for i in range(n):
        im, boxes = synthetic.make_image(3, i)
        stem = f"img{i:02d}"
        im.save(root / "JPEGImages" / f"{stem}.jpg", "JPEG", quality=90)
        objs = [(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes]
        if i == 0:
            objs = [("circle", 0, 0, 40, 30)] + objs
        if i == 1:
            objs = [(c, x0 + 0.5, y0 + 0.25, x1 - 0.5, y1 - 0.75) for c, x0, y0, x1, y1 in objs]
        if i == 2:
            objs = []
        xml(root / "Annotations" / f"{stem}.xml", f"{stem}.jpg", im.size, objs)
        lists[SPLIT_OF[i % 3]].append(stem)
        truth[stem] = objs
    for s, names in lists.items():
        (root / "ImageSets" / "Main" / f"{s}.txt").write_text("".join(f"{x}\n" for x in names))
    return truth


def _run(*args: str) -> int:
    return convert.main([*map(str, args), "--quiet"])


def _records(data: Path, out: Path, *extra: str) -> dict[str, tuple]:
    """filename -> (split, width, height, [class texts], boxes yxyx, image sha256) of od.records on ``data``."""
    rc = records.main([str(data), "--out", str(out), "--label-map", str(out) + ".pbtxt", "--quiet",
                       "--workers", "1", *extra])
    assert rc == 0, rc
    res = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for rec in iter_records(shard):
            ex = decode_example(rec)
            res[ex.filename] = (shard.name.split("-")[0], ex.width, ex.height, list(ex.class_texts),
                                np.asarray(ex.boxes_yxyx, dtype=np.float64),
                                hashlib.sha256(ex.image_bytes).hexdigest())
    return res


def _by_image(recs: dict) -> dict:
    """Records keyed by image name without a leading split folder: YOLO keeps splits as folders
    (images/train/x.jpg), which od.records then reads as part of the name (train/x.jpg)."""
    return {k.removeprefix(f"{v[0]}/"): v for k, v in recs.items()}


def _assert_same_records(a: dict, b: dict, tol_px: float) -> None:
    a, b = _by_image(a), _by_image(b)
    assert sorted(a) == sorted(b)
    for name in a:
        sa, wa, ha, ca, ba, pa = a[name]
        sb, wb, hb, cb, bb, pb = b[name]
        assert (sa, wa, ha, ca, pa) == (sb, wb, hb, cb, pb), name  # split, size, classes in order, pixels
        scale = np.array([ha, wa, ha, wa], dtype=np.float64)
        if tol_px == 0:
            assert np.array_equal(ba, bb), name
        else:
            np.testing.assert_allclose(ba * scale, bb * scale, atol=tol_px + 1e-3, rtol=0, err_msg=name)


def _snapshot(folder: Path) -> dict[str, tuple]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _exif6() -> bytes:
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo", "csv"])
def test_round_trip_through_each_format_keeps_boxes_pixels_classes_and_splits(tmp_path, fmt):
    src = tmp_path / "VOC"
    _voc_devkit(src)
    mid, back = tmp_path / f"as_{fmt}", tmp_path / "back"
    assert _run(src, "--to", fmt, "--out", mid) == 0
    assert odlayout.detect_layout(mid).kind == ("voc" if fmt == "voc" else fmt)  # found as that format
    assert _run(mid, "--to", "voc", "--out", back) == 0
    want = _records(src, tmp_path / "r_src")
    assert len(want) == 9 and {v[0] for v in want.values()} == set(SPLIT_OF)
    _assert_same_records(want, _records(mid, tmp_path / "r_mid"), TOLERANCE[fmt])  # od.records reads it directly
    _assert_same_records(want, _records(back, tmp_path / "r_back"), TOLERANCE[fmt])  # and after the way back
    assert (tmp_path / "r_src.pbtxt").read_bytes() == (tmp_path / "r_back.pbtxt").read_bytes()  # classes, ids
    # the exact corner cases survive: a box at x = 0 and half pixels (VOC keeps 0.01 px)
    b0 = _parse_back(back, "img00").boxes[0]
    assert (b0.xmin, b0.ymin, b0.xmax, b0.ymax) == (0, 0, 40, 30)
    b1 = _parse_back(back, "img01").boxes[0]
    assert abs(b1.xmin % 1 - 0.5) <= TOLERANCE[fmt] and abs(b1.ymin % 1 - 0.25) <= TOLERANCE[fmt]
    neg = _parse_back(back, "img02")
    assert neg.image_path is not None and neg.boxes == ()  # the negative stays one


def _parse_back(voc: Path, stem: str):
    """The annotation of ``stem`` in a VOC output (under a split folder when it came from YOLO)."""
    [x] = (voc / "Annotations").rglob(f"{stem}.xml")
    return parse_voc(x, voc, voc / "JPEGImages" / x.parent.relative_to(voc / "Annotations"))


def test_voc_output_reads_back_exactly_and_keeps_the_split_lists(tmp_path):
    src = tmp_path / "VOC"
    truth = _voc_devkit(src)
    out = tmp_path / "out"
    assert _run(src, "--to", "voc", "--out", out) == 0
    for stem, objs in truth.items():
        ann = parse_voc(out / "Annotations" / f"{stem}.xml", out, out / "JPEGImages")
        assert ann.image_path is not None
        assert [(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in ann.boxes] == [
            (c, float(x0), float(y0), float(x1), float(y1)) for c, x0, y0, x1, y1 in objs]
        assert (out / "JPEGImages" / f"{stem}.jpg").read_bytes() == (src / "JPEGImages" / f"{stem}.jpg").read_bytes()
    for s in SPLIT_OF:
        assert (out / "ImageSets/Main" / f"{s}.txt").read_text() == (src / "ImageSets/Main" / f"{s}.txt").read_text()


def test_sub_folders_kept_and_names_differing_by_suffix_both_survive(tmp_path):
    ds = tmp_path / "ds"
    for rel in ("sub/deep/a.jpg", "a.jpg", "a.png"):
        img(ds / "images" / rel, (60, 50), fmt="PNG" if rel.endswith("png") else "JPEG")
    xml(ds / "annotations" / "sub/deep/a.xml", "a.jpg", (60, 50), [("cat", 1, 2, 30, 40)])
    xml(ds / "annotations" / "a.xml", "a.jpg", (60, 50), [("dog", 3, 4, 20, 20)])
    xml(ds / "annotations" / "a2.xml", "a.png", (60, 50), [("cat", 5, 5, 25, 25)])
    out = tmp_path / "out"
    assert _run(ds, "--to", "voc", "--out", out) == 0
    assert (out / "JPEGImages/sub/deep/a.jpg").is_file() and (out / "JPEGImages/a.png").is_file()
    assert (out / "JPEGImages/a.png").read_bytes() == (ds / "images/a.png").read_bytes()  # RGB PNG: copied as is
    assert [b.name for b in parse_voc(out / "Annotations/sub/deep/a.xml", out, out / "JPEGImages/sub/deep").boxes] == ["cat"]
    assert [b.name for b in parse_voc(out / "Annotations/a.png.xml", out, out / "JPEGImages").boxes] == ["cat"]
    got = _records(out, tmp_path / "r")
    assert sorted(got) == ["a.jpg", "a.png", "sub/deep/a.jpg"]
    _assert_same_records(_records(ds, tmp_path / "r0"), got, 0)


def test_write_voc_dataset_rounds_to_a_hundredth_and_writes_crowd_boxes_as_difficult(tmp_path):
    src = img(tmp_path / "src.jpg", (50, 40))
    placed = []
    ims = [LabelledImage(str(src), "x/src.jpg", 50, 40, (
        Box(0, 0.123, 10.5, 20.999, name="cat"), Box(1, 2, 3, 4, name="crowd", is_crowd=True)), "val")]
    files = write_voc_dataset(ims, ["cat", "crowd"], tmp_path / "o", lambda s, d: placed.append((s, d)))
    assert placed == [(str(src), tmp_path / "o" / "JPEGImages/x/src.jpg")]
    assert tmp_path / "o/Annotations/x/src.xml" in files
    text = (tmp_path / "o/Annotations/x/src.xml").read_text()
    assert "<xmin>0</xmin>" in text and "<ymin>0.12</ymin>" in text and "<xmax>10.5</xmax>" in text
    assert "<ymax>21</ymax>" in text
    assert (tmp_path / "o/ImageSets/Main/val.txt").read_text() == "x/src\n"
    assert (tmp_path / "o/ImageSets/Main/train.txt").read_text() == ""
    (tmp_path / "o/JPEGImages/x").mkdir(parents=True)
    (tmp_path / "o/JPEGImages/x/src.jpg").write_bytes(src.read_bytes())
    boxes = parse_voc(tmp_path / "o/Annotations/x/src.xml", tmp_path / "o", tmp_path / "o/JPEGImages/x").boxes
    assert [(b.name, b.difficult) for b in boxes] == [("cat", False), ("crowd", True)]


@pytest.mark.parametrize("fmt", ["voc", "yolo", "csv"])
def test_coco_crowd_boxes_become_difficult_in_voc_and_are_dropped_where_no_flag_exists(tmp_path, capsys, fmt):
    ds = tmp_path / "coco"
    img(ds / "images" / "a.jpg", (80, 60))
    (ds / "annotations").mkdir()
    (ds / "annotations" / "instances_train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 30], "area": 600, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 10, 40, 40], "area": 1600,
                         "iscrowd": 1}]}))
    out = tmp_path / "out"
    assert _run(ds, "--to", fmt, "--out", out) == 0
    printed = capsys.readouterr().out
    back = tmp_path / "back"
    assert _run(out, "--to", "voc", "--out", back) == 0
    boxes = _parse_back(back, "a").boxes
    if fmt == "voc":
        assert "1 crowd box (iscrowd) written as difficult" in printed
        assert [(b.xmin, b.difficult) for b in boxes] == [(2, False), (30, True)]
    else:
        assert "1 crowd box (iscrowd) dropped" in printed and "[dropped_box]" in printed
        assert [(b.xmin, b.ymin, b.xmax, b.ymax, b.difficult) for b in boxes] == [(2, 3, 22, 33, False)]


# --------------------------------------------------------------------------- the input and the output


def test_never_writes_into_the_input(tmp_path, capsys):
    src = tmp_path / "VOC"
    _voc_devkit(src, 3)
    before = _snapshot(src)
    assert _run(src, "--to", "voc", "--out", src / "converted") == 2
    assert "inside the input" in capsys.readouterr().err
    assert _run(src / "JPEGImages", "--format", "voc", "--to", "voc", "--out", tmp_path) == 2  # input inside --out
    assert _run(src, "--to", "voc", "--out", src) == 2
    os.symlink(src, tmp_path / "alias")
    assert _run(src, "--to", "voc", "--out", tmp_path / "alias" / "x") == 2  # the same folder through a link
    assert _run(src, "--to", "voc", "--out", tmp_path / "out", "--images", "hardlink") == 0
    assert _snapshot(src) == before
    assert not any(p.name.startswith(".out.od-convert") for p in tmp_path.iterdir())  # no temp folder left


def test_out_not_empty_needs_force_and_force_replaces_only_an_earlier_od_convert_output(tmp_path, capsys):
    src = tmp_path / "VOC"
    _voc_devkit(src, 6)
    out = tmp_path / "out"
    assert _run(src, "--to", "voc", "--out", out) == 0
    manifest = json.loads((out / reformat.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                               if p.is_file() and p.name != reformat.MANIFEST)
    assert _run(src, "--to", "voc", "--out", out) == 2  # not empty, no --force
    assert "--force" in capsys.readouterr().err
    # fewer images now: --force replaces the whole earlier output (no stale image stays)
    for stem in ("img04", "img05"):
        (src / "Annotations" / f"{stem}.xml").unlink()
        (src / "JPEGImages" / f"{stem}.jpg").unlink()
    assert _run(src, "--to", "voc", "--out", out, "--force") == 0
    assert sorted(p.stem for p in (out / "JPEGImages").iterdir()) == [f"img0{i}" for i in range(4)]
    # a file od.convert did not write: never replaced, even with --force
    (out / "mine.txt").write_text("keep me")
    assert _run(src, "--to", "voc", "--out", out, "--force") == 2
    assert "mine.txt" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert _run(src, "--to", "voc", "--out", user, "--force") == 2
    assert (user / "notes.txt").read_text() == "mine" and len(list(user.iterdir())) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(src, "--to", "voc", "--out", empty) == 0  # an empty folder is fine


def test_output_that_does_not_read_back_is_not_written(tmp_path, monkeypatch, capsys):
    src = tmp_path / "VOC"
    _voc_devkit(src, 3)

    def lossy(images, classes, out, copy_image):  # drops every box: the read-back check must catch it
        return write_voc_dataset([LabelledImage(i.image_path, i.image_name, i.width, i.height, (), i.split)
                                  for i in images], classes, out, copy_image)

    monkeypatch.setattr(reformat, "writer", lambda fmt: lossy)
    assert _run(src, "--to", "voc", "--out", tmp_path / "out") == 1
    assert "read back" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [src]


def test_classification_dataset_is_refused(tmp_path, capsys):
    for c in ("a", "b"):
        img(tmp_path / "cls" / c / "x.jpg")
    assert _run(tmp_path / "cls", "--to", "coco", "--out", tmp_path / "out") == 2
    assert "classification" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- images


def test_corrupt_image_is_skipped_and_reported_and_strict_writes_nothing(tmp_path, capsys):
    src = tmp_path / "VOC"
    _voc_devkit(src, 3)
    (src / "JPEGImages" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    xml(src / "Annotations" / "bad.xml", "bad.jpg", (80, 60), [("circle", 1, 1, 20, 20)])
    (src / "ImageSets/Main/train.txt").write_text((src / "ImageSets/Main/train.txt").read_text() + "bad\n")
    assert _run(src, "--to", "voc", "--out", tmp_path / "strict", "--strict") == 1
    assert not (tmp_path / "strict").exists()
    assert "--strict" in capsys.readouterr().err
    out = tmp_path / "out"
    assert _run(src, "--to", "voc", "--out", out) == 1
    printed = capsys.readouterr().out
    assert "JPEGImages/bad.jpg:" in printed and "[skipped_image]" in printed
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == ["img00.jpg", "img01.jpg", "img02.jpg"]
    assert not (out / "Annotations" / "bad.xml").exists()
    assert "bad" not in (out / "ImageSets/Main/train.txt").read_text().split()


def test_exif_rotated_and_alpha_images_are_written_as_the_pixels_od_records_stores(tmp_path, capsys):
    ds = tmp_path / "ds"
    ds.mkdir()
    box = (12, 6, 44, 26)
    shown = Image.new("RGB", (96, 64), (90, 90, 90))
    shown.paste((255, 0, 0), box)
    shown.transpose(Image.Transpose.ROTATE_90).save(ds / "rot.jpg", "JPEG", quality=95, exif=_exif6())
    xml(ds / "rot.xml", "rot.jpg", (96, 64), [("red", *box)])  # drawn on the image as viewers show it
    rgba = shown.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(ds / "alpha.png")
    xml(ds / "alpha.xml", "alpha.png", (96, 64), [("red", *box)])
    shown.save(ds / "plain.png")
    xml(ds / "plain.xml", "plain.png", (96, 64), [("red", *box)])
    out = tmp_path / "out"
    assert _run(ds, "--to", "voc", "--out", out, "--images", "hardlink") == 0
    printed = capsys.readouterr().out
    assert "rot.jpg: written as rot.jpg, the JPEG od.records stores" in printed
    assert "alpha.png: written as alpha.jpg" in printed
    assert (out / "JPEGImages/plain.png").read_bytes() == (ds / "plain.png").read_bytes()  # RGB PNG copied
    assert not (out / "JPEGImages/alpha.png").exists()
    for name in ("rot.jpg", "alpha.jpg"):
        path = out / "JPEGImages" / name
        assert os.stat(path).st_nlink == 1  # a new file even in hardlink mode
        im = Image.open(path)
        assert im.size == (96, 64) and im.getexif().get(0x0112) in (None, 1)
        [b] = parse_voc(out / "Annotations" / f"{Path(name).stem}.xml", out, out / "JPEGImages").boxes
        a = np.asarray(im.convert("RGB"), dtype=int)
        inside = a[int(b.ymin) + 2:int(b.ymax) - 2, int(b.xmin) + 2:int(b.xmax) - 2]
        assert ((inside[..., 0] > 200) & (inside[..., 1] < 150)).mean() > 0.95, name  # the box is on the patch
        a[int(b.ymin):int(b.ymax), int(b.xmin):int(b.xmax)] = 0
        assert ((a[..., 0] > 200) & (a[..., 1] < 60)).mean() < 0.01, name
    # and od.records stores the same pixels from the converted set as from the original
    got, want = _records(out, tmp_path / "r1"), _records(ds, tmp_path / "r0")
    assert {Path(k).stem: v[5] for k, v in got.items()} == {Path(k).stem: v[5] for k, v in want.items()}


def test_hardlink_and_symlink_modes(tmp_path, capsys):
    src = tmp_path / "VOC"
    _voc_devkit(src, 3)
    hard, soft = tmp_path / "hard", tmp_path / "soft"
    assert _run(src, "--to", "voc", "--out", hard, "--images", "hardlink") == 0
    assert _run(src, "--to", "voc", "--out", soft, "--images", "symlink") == 0
    assert "--follow-links" in capsys.readouterr().err
    for i in range(3):
        s = src / "JPEGImages" / f"img{i:02d}.jpg"
        h, l = hard / "JPEGImages" / s.name, soft / "JPEGImages" / s.name
        assert not h.is_symlink() and os.stat(h).st_ino == os.stat(s).st_ino
        assert l.is_symlink() and os.readlink(l) == str(s.resolve()) and l.read_bytes() == s.read_bytes()
    want = _records(src, tmp_path / "r0")
    _assert_same_records(want, _records(hard, tmp_path / "r1"), 0)
    _assert_same_records(want, _records(soft, tmp_path / "r2", "--follow-links"), 0)
    # --force on a symlinked output removes the links, never what they point at
    assert _run(src, "--to", "voc", "--out", soft, "--force") == 0
    assert all(p.is_file() for p in (src / "JPEGImages").iterdir()) and len(list((src / "JPEGImages").iterdir())) == 3
    assert not any(p.is_symlink() for p in (soft / "JPEGImages").iterdir())


def test_help_does_not_import_tensorflow():
    code = "import sys, od.convert; od.convert.build_parser().format_help(); print('tensorflow' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.stdout.strip() == "False", res.stderr
