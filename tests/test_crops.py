"""od.crops: every VOC box as an image in OUT/<class>/, exact pixels, margin, min size, safe output."""

from __future__ import annotations

import io
import json

import numpy as np
from hostile import xml
from PIL import Image

from od import crops, records
from od.core import Box
from od.data.crops import crop_window


def _photo(path, size=(120, 90), seed=0):
    """A textured JPEG (every pixel differs), so a crop from the wrong place cannot match."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return np.asarray(Image.open(path).convert("RGB"))


def _voc(root, n=3):
    """n images, each with a cat box and a dog box; returns {stem: decoded pixels}."""
    pixels = {}
    for i in range(n):
        pixels[f"p{i}"] = _photo(root / f"p{i}.jpg", seed=i)
        xml(root / f"p{i}.xml", f"p{i}.jpg", (120, 90), [("cat", 10 + i, 5, 50, 45), ("dog", 60, 30, 110, 85)])
    return pixels


def _crop(out, rel):
    return np.asarray(Image.open(out / rel))


def test_crops_land_in_class_folders_with_the_source_pixels(tmp_path):
    pixels = _voc(tmp_path / "V")
    out = tmp_path / "C"
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--quiet"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == sorted(f"{c}/p{i}_{k}.png" for i in range(3) for k, c in enumerate(("cat", "dog")))
    for i in range(3):
        src = pixels[f"p{i}"]
        assert np.array_equal(_crop(out, f"cat/p{i}_0.png"), src[5:45, 10 + i:50])
        assert np.array_equal(_crop(out, f"dog/p{i}_1.png"), src[30:85, 60:110])


def test_margin_grows_the_box_and_stops_at_the_image_edge(tmp_path):
    pixels = _voc(tmp_path / "V", n=1)
    out = tmp_path / "C"
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--margin", "0.25", "--quiet"]) == 0
    src = pixels["p0"]
    assert np.array_equal(_crop(out, "cat/p0_0.png"), src[0:55, 0:60])  # 10 px either way; 5 - 10 clipped to 0
    assert np.array_equal(_crop(out, "dog/p0_1.png"), src[16:90, 47:120])  # clipped at the right and bottom
    assert crop_window(Box(20, 20, 40, 30), 100, 100, 0.5) == (10, 15, 50, 35)


def test_min_size_drops_small_boxes_and_says_so(tmp_path, capsys):
    _voc(tmp_path / "V", n=2)
    out = tmp_path / "C"
    rc = crops.main([str(tmp_path / "V"), "--out", str(out), "--min-size", "45", "--quiet"])
    assert rc == 1
    assert sorted(p.name for p in out.rglob("*.png")) == ["p0_1.png", "p1_1.png"]  # cats are 40 px high
    text = capsys.readouterr().out
    assert text.count("below --min-size 45; not written [dropped_box]") == 2
    # Both sides count: the dog boxes are 50x55, so 52 drops them too (nothing left: exit 1, one error).
    assert crops.main([str(tmp_path / "V"), "--out", str(tmp_path / "C2"), "--min-size", "52", "--quiet"]) == 1
    assert not list((tmp_path / "C2").rglob("*.png"))
    assert "crop 50x55 is below --min-size 52" in capsys.readouterr().out


def test_one_bad_xml_or_image_is_reported_and_the_rest_go_on(tmp_path, capsys):
    _voc(tmp_path / "V", n=2)
    (tmp_path / "V" / "p1.jpg").write_bytes(b"\xff\xd8 no longer an image")
    (tmp_path / "V" / "broken.xml").write_text("<annotation><filename>")
    out = tmp_path / "C"
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--quiet"]) == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["cat/p0_0.png", "dog/p0_1.png"]
    text = capsys.readouterr().out
    assert "broken.xml: malformed XML" in text and "p1.jpg:" in text


def test_files_it_did_not_write_are_kept_unless_force(tmp_path, capsys):
    _voc(tmp_path / "V", n=1)
    out = tmp_path / "C"
    (out / "cat").mkdir(parents=True)
    (out / "cat" / "p0_0.png").write_bytes(b"mine")
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--quiet"]) == 1
    assert (out / "cat" / "p0_0.png").read_bytes() == b"mine"
    assert "not written by od.crops; not replaced" in capsys.readouterr().out
    # Its own crops are replaced by a rerun; with --force the user's file too.
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--quiet", "--force"]) == 0
    assert (out / "cat" / "p0_0.png").read_bytes()[:4] == b"\x89PNG"
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--quiet", "--margin", "0.1"]) == 0
    assert json.loads((out / ".od-crops.json").read_text())["files"] == ["cat/p0_0.png", "dog/p0_1.png"]
    # A box gone from the XML: its crop (od's own) goes too.
    xml(tmp_path / "V" / "p0.xml", "p0.jpg", (120, 90), [("cat", 10, 5, 50, 45)])
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["cat/p0_0.png"]


def test_crops_convert_with_od_records_as_a_classification_dataset(tmp_path):
    _voc(tmp_path / "V", n=4)
    out = tmp_path / "C"
    assert crops.main([str(tmp_path / "V"), "--out", str(out), "--quiet"]) == 0
    rec = tmp_path / "R"
    rc = records.main([str(out), "--out", str(rec), "--label-map", str(rec / "lm.pbtxt"), "--quiet", "--workers", "1"])
    assert rc == 0
    rep = json.loads((rec / "report.json").read_text())
    assert rep["task"] == "classification" and rep["labels"] == ["cat", "dog"]
    assert rep["summary"]["images_converted"] == 8 and rep["summary"]["images_skipped"] == 0
    assert {p["action"] for p in rep["problems"]} == {"fixed"}  # PNG crops (exact pixels) stored as JPEG
    assert (rec / "labels.txt").read_text() == "cat\ndog\n"


def test_usage_errors(tmp_path, capsys):
    assert crops.main([str(tmp_path / "missing"), "--out", str(tmp_path / "C")]) == 2
    (tmp_path / "empty").mkdir()
    assert crops.main([str(tmp_path / "empty"), "--out", str(tmp_path / "C")]) == 2
    err = capsys.readouterr().err
    assert err.count("od: error:") == 2 and "Traceback" not in err
