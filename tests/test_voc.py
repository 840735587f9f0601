"""od.voc: hardened parsing, safe image lookup, box rules, LabelImg-style writing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from lxml import etree
from PIL import Image

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Box
from od.data.voc import _parser, apply_box_rules, format_voc, parse_voc, write_voc


def _jpg(path: Path, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path, "JPEG")
    return path


def _xml(filename: str, objects: str = "", size: str = "<width>64</width><height>48</height><depth>3</depth>") -> str:
    return (
        f"<annotation><folder>x</folder><filename>{filename}</filename><size>{size}</size>"
        f"<segmented>0</segmented>{objects}</annotation>"
    )


def _obj(name="cat", xmin="1", ymin="2", xmax="30", ymax="40", difficult="0", truncated="0") -> str:
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{truncated}</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def test_parse_plain_labelimg_xml_with_floats_and_flags(tmp_path):
    img = _jpg(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text(
        _xml("a.jpg", _obj("cat", "1.5", "2.25", "30.75", "40") + _obj("dog", difficult="1", truncated="1"))
    )
    ann = parse_voc(tmp_path / "a.xml", tmp_path)
    assert ann.problems == ()
    assert Path(ann.image_path) == img
    assert (ann.width, ann.height) == (64, 48)
    assert ann.boxes[0] == Box(1.5, 2.25, 30.75, 40.0, name="cat")
    assert ann.boxes[1].difficult and ann.boxes[1].truncated and ann.boxes[1].name == "dog"


def test_write_voc_is_labelimg_format_and_round_trips(tmp_path):
    img = _jpg(tmp_path / "imgs" / "p.jpg", (100, 80))
    boxes = [Box(0, 5, 40.7, 60, name="circle"), Box(10, 10, 100, 80, name="square", difficult=True)]
    write_voc(tmp_path / "imgs" / "p.xml", image_path=img, width=100, height=80, boxes=boxes)
    text = (tmp_path / "imgs" / "p.xml").read_text()
    assert text.startswith("<annotation>\n\t<folder>imgs</folder>\n\t<filename>p.jpg</filename>\n\t<path>")
    assert "\t\t<database>Unknown</database>" in text and "\t\t\t<xmin>1</xmin>" in text  # LabelImg: min 1
    assert "<xmax>40</xmax>" in text  # integer pixels like LabelImg
    ann = parse_voc(tmp_path / "imgs" / "p.xml", tmp_path)
    assert ann.problems == ()
    assert [(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in ann.boxes] == [
        ("circle", 1, 5, 40, 60), ("square", 10, 10, 100, 80)]
    assert ann.boxes[1].difficult and ann.boxes[1].truncated  # touches the border -> LabelImg marks truncated
    order = [el.tag for el in etree.fromstring(text.encode())]
    assert order == ["folder", "filename", "path", "source", "size", "segmented", "object", "object"]


@pytest.mark.parametrize(
    "payload",
    [
        # XXE: external entity reading a local file
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<annotation><filename>&x;</filename></annotation>",
        # billion laughs
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
        + "]><annotation><filename>&lol9;</filename></annotation>",
        # external DTD over the network
        '<!DOCTYPE annotation SYSTEM "http://example.invalid/x.dtd"><annotation/>',
        # lower-case / spaced declarations
        "<!doctype annotation><annotation/>",
    ],
)
def test_doctype_and_entities_refused_never_expanded(tmp_path, payload):
    _jpg(tmp_path / "evil.jpg")
    (tmp_path / "evil.xml").write_text(payload)
    t0 = time.perf_counter()
    ann = parse_voc(tmp_path / "evil.xml", tmp_path)
    assert time.perf_counter() - t0 < 1.0
    assert ann.image_path is None and ann.boxes == ()
    [p] = ann.problems
    assert p.action == SKIPPED_IMAGE and "DOCTYPE" in p.problem and p.file.endswith("evil.xml")


def test_doctype_in_utf16_refused(tmp_path):
    _jpg(tmp_path / "u.jpg")
    payload = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><annotation/>'
    (tmp_path / "u.xml").write_bytes(payload.encode("utf-16"))
    ann = parse_voc(tmp_path / "u.xml", tmp_path)
    assert ann.problems[0].action == SKIPPED_IMAGE and "DOCTYPE" in ann.problems[0].problem


def test_parser_itself_never_expands_entities():
    """Defence in depth: even past the pre-scan, lxml is configured not to resolve entities."""
    doc = b'<!DOCTYPE a [<!ENTITY e "EXPANDED">]><a>&e;</a>'
    root = etree.fromstring(doc, _parser())
    assert "EXPANDED" not in (etree.tostring(root).decode())


@pytest.mark.parametrize(
    "content, reason",
    [
        ("<annotation><filename>a.jpg</filename>", "malformed XML"),
        ("", "empty"),
        ("<html><body/></html>", "not a Pascal VOC annotation"),
        ("\x00\x01garbage", "malformed XML"),
    ],
)
def test_unreadable_xml_is_skipped_with_reason(tmp_path, content, reason):
    _jpg(tmp_path / "bad.jpg")
    (tmp_path / "bad.xml").write_text(content)
    ann = parse_voc(tmp_path / "bad.xml", tmp_path)
    assert ann.image_path is None
    assert ann.problems[-1].action == SKIPPED_IMAGE and reason in ann.problems[-1].problem


@pytest.mark.parametrize("filename", ["../secret.jpg", "sub/../../secret.jpg", "..\\secret.jpg", "ABSOLUTE"])
def test_filename_outside_dataset_never_read(tmp_path, filename):
    secret = _jpg(tmp_path / "secret.jpg")
    ds = tmp_path / "ds"
    ds.mkdir()
    if filename == "ABSOLUTE":
        filename = str(secret)
    (ds / "x.xml").write_text(_xml(filename, _obj()))
    ann = parse_voc(ds / "x.xml", ds)
    assert ann.image_path is None
    assert ann.problems[-1].action == SKIPPED_IMAGE
    assert "not read" in ann.problems[-1].problem
    # with an image named like the XML, that one is used instead (and the decision reported)
    _jpg(ds / "x.jpg")
    ann = parse_voc(ds / "x.xml", ds)
    assert Path(ann.image_path) == ds / "x.jpg"
    assert ann.problems[0].action == FIXED and "not read" in ann.problems[0].problem


def test_symlink_escaping_dataset_not_followed(tmp_path):
    secret = _jpg(tmp_path / "secret.jpg")
    ds = tmp_path / "ds"
    ds.mkdir()
    os.symlink(secret, ds / "link.jpg")
    (ds / "y.xml").write_text(_xml("link.jpg"))
    ann = parse_voc(ds / "y.xml", ds)
    assert ann.image_path is None and "outside the dataset" in ann.problems[-1].problem


def test_missing_filename_falls_back_to_xml_stem(tmp_path):
    img = _jpg(tmp_path / "pic.PNG".replace("PNG", "png"))
    (tmp_path / "pic.xml").write_text(_xml("renamed_later.jpg", _obj()))
    ann = parse_voc(tmp_path / "pic.xml", tmp_path)
    assert Path(ann.image_path) == img
    assert ann.problems[0].action == FIXED and "renamed_later.jpg" in ann.problems[0].problem
    (tmp_path / "lonely.xml").write_text(_xml("nothing.jpg"))
    ann = parse_voc(tmp_path / "lonely.xml", tmp_path)
    assert ann.image_path is None and "image not found" in ann.problems[0].problem


def test_images_dir_lookup(tmp_path):
    img = _jpg(tmp_path / "JPEGImages" / "0001.jpg")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "0001.xml").write_text(_xml("0001.jpg"))
    ann = parse_voc(tmp_path / "Annotations" / "0001.xml", tmp_path, tmp_path / "JPEGImages")
    assert Path(ann.image_path) == img and ann.problems == ()


def test_bad_objects_dropped_with_reason(tmp_path):
    _jpg(tmp_path / "o.jpg")
    objs = _obj(name="") + _obj(xmin="abc") + "<object><name>cat</name></object>" + _obj(xmax="nan") + _obj()
    (tmp_path / "o.xml").write_text(_xml("o.jpg", objs))
    ann = parse_voc(tmp_path / "o.xml", tmp_path)
    assert len(ann.boxes) == 1
    reasons = [p.problem for p in ann.problems]
    assert all(p.action == DROPPED_BOX for p in ann.problems) and len(reasons) == 4
    assert "no <name>" in reasons[0] and "non-numeric" in reasons[1] and "no <bndbox>" in reasons[2]


def test_box_rules_clip_and_drop():
    boxes = [
        Box(10, 10, 20, 20, name="ok"),
        Box(30, 10, 20, 20, name="reversed"),
        Box(10, 10, 10, 20, name="zero"),
        Box(200, 200, 300, 300, name="outside"),
        Box(-5.5, 40, 70, 120, name="clip"),
        Box(0.5, 0.25, 99.5, 79.75, name="float"),
    ]
    kept, problems = apply_box_rules(boxes, 100, 80, "a.xml")
    assert [b.name for b in kept] == ["ok", "clip", "float"]
    assert kept[1] == Box(0.0, 40, 70, 80, name="clip")
    assert kept[2] == boxes[5]
    by = {p.problem.split(" ")[2]: p for p in problems}
    assert by["(reversed)"].action == DROPPED_BOX and "reversed" in by["(reversed)"].problem
    assert by["(zero)"].action == DROPPED_BOX and "zero area" in by["(zero)"].problem
    assert by["(outside)"].action == DROPPED_BOX and "entirely outside" in by["(outside)"].problem
    assert by["(clip)"].action == FIXED and "clipped to [0, 40, 70, 80]" in by["(clip)"].problem
    assert all(p.file == "a.xml" for p in problems)


def test_format_voc_has_no_declaration_and_tabs_only():
    xml = format_voc(image_path="a.jpg", width=10, height=10, boxes=[Box(2, 2, 5, 5, name="x")], folder="f")
    assert xml.startswith(b"<annotation>\n\t<folder>f</folder>") and b"  " not in xml


def test_damaged_xml_never_raises(tmp_path):
    import random

    _jpg(tmp_path / "a.jpg")
    good = _xml("a.jpg", _obj() + _obj("dog", "1e3", "-4", "1e999", "2")).encode()
    rnd = random.Random(0)
    for k in range(200):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 8)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        (tmp_path / "a.xml").write_bytes(bytes(data[: rnd.randrange(1, len(data) + 1)] if k % 5 == 0 else data))
        ann = parse_voc(tmp_path / "a.xml", tmp_path)
        assert ann.image_path is not None or ann.problems[-1].action == SKIPPED_IMAGE
