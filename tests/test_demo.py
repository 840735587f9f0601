"""od.data.synthetic: a deterministic LabelImg-format dataset that od.voc reads back cleanly; the od.demo CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from od import demo
from od.data import synthetic
from od.data.voc import parse_voc


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_byte_identical_anywhere(tmp_path):
    synthetic.generate(tmp_path / "a", 12, seed=3)
    synthetic.generate(tmp_path / "elsewhere" / "b", 12, seed=3)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "elsewhere" / "b")
    assert len(a) == 24 and a == b
    synthetic.generate(tmp_path / "c", 12, seed=4)
    assert _files(tmp_path / "c") != a
    # more images only adds files: the first ones do not change
    synthetic.generate(tmp_path / "d", 14, seed=3)
    d = _files(tmp_path / "d")
    assert all(d[k] == v for k, v in a.items())


def test_generated_dataset_reads_back_and_matches_spec(tmp_path):
    stats = synthetic.generate(tmp_path, 120, seed=0)
    xmls = sorted(tmp_path.glob("*.xml"))
    assert len(xmls) == 120 == len(list(tmp_path.glob("*.jpg")))
    sizes, counts, names = set(), [], set()
    for x in xmls:
        ann = parse_voc(x, tmp_path)
        assert ann.problems == (), ann.problems
        im = Image.open(ann.image_path)
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (ann.width, ann.height)
        assert 256 <= im.width <= 400 and 256 <= im.height <= 400
        sizes.add(im.size)
        counts.append(len(ann.boxes))
        for b in ann.boxes:
            names.add(b.name)
            assert 1 <= b.xmin < b.xmax <= im.width and 1 <= b.ymin < b.ymax <= im.height
            assert 27 <= b.xmax - b.xmin <= 110 and 27 <= b.ymax - b.ymin <= 110
    assert names == set(synthetic.CLASSES)
    assert max(counts) <= 4 and 0 in counts and len(sizes) > 50
    assert stats["negatives"] == counts.count(0)
    assert sum(v["boxes"] for v in stats["per_class"].values()) == sum(counts)


def test_shapes_are_drawn_inside_their_boxes(tmp_path):
    """The object's saturated colour sits at the centre of its box (labels match pixels)."""
    img, boxes = synthetic.make_image(0, 5)
    a = np.asarray(img.convert("HSV"), dtype=float)
    for b in boxes:
        cx, cy = int((b.xmin + b.xmax) / 2), int((b.ymin + b.ymax) / 2)
        if b.name == "triangle":
            cy = int(b.ymin + 0.6 * (b.ymax - b.ymin)) if a[cy, cx, 1] < 100 else cy
        assert a[cy - 1 : cy + 2, cx - 1 : cx + 2, 1].mean() > 90  # saturated object, not the muted background


def test_cli_writes_atomically_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--num-images", "5", "--seed", "1"]) == 0
    assert len(list(out.glob("*.xml"))) == 5
    assert "circle" in capsys.readouterr().out
    assert demo.main(["--out", str(out), "--num-images", "5"]) == 2
    assert "--force" in capsys.readouterr().err
    assert demo.main(["--out", str(out), "--num-images", "3", "--force"]) == 0
    assert len(list(out.glob("*.xml"))) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
