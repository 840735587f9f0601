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


# --------------------------------------------------------------------------- classification demo


def test_classification_demo_is_deterministic_balanced_and_varied(tmp_path):
    from od.data import synthetic_classes

    a = synthetic_classes.generate(tmp_path / "a", 24, seed=3)
    synthetic_classes.generate(tmp_path / "b", 24, seed=3)
    files = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in sorted((tmp_path / "a").rglob("*.jpg"))}
    again = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in sorted((tmp_path / "b").rglob("*.jpg"))}
    assert len(files) == 24 and files == again
    assert a["per_class"] == {c: 4 for c in synthetic_classes.CLASSES}
    # each file sits in its class folder and is named after it; sizes vary within the spec
    sizes = set()
    for rel in files:
        assert rel.parts[0] == rel.name.rsplit("_", 1)[0] in synthetic_classes.CLASSES
        im = Image.open(tmp_path / "a" / rel)
        assert im.format == "JPEG" and im.mode == "RGB"
        assert synthetic_classes.MIN_SIDE <= min(im.size) and max(im.size) <= synthetic_classes.MAX_SIDE
        sizes.add(im.size)
    assert len(sizes) > 15
    synthetic_classes.generate(tmp_path / "c", 24, seed=4)
    assert (tmp_path / "c" / "circle" / "circle_00000.jpg").read_bytes() != files[Path("circle/circle_00000.jpg")]


def test_classification_demo_shapes_differ_by_outline_not_colour():
    """Drawn alone on black, each class covers a class-typical share of its bounding square (a ring
    has a hole, a circle fills ~pi/4, a square nearly all), and colours vary within every class."""
    import numpy as np
    from PIL import ImageDraw

    from od.data import synthetic_classes

    fill: dict[str, list[float]] = {}
    centre: dict[str, set[bool]] = {}
    hues: dict[str, set[int]] = {}
    for i in range(60):
        cls = synthetic_classes.CLASSES[i % 6]
        img = Image.new("RGB", (200, 200))
        synthetic_classes._draw(ImageDraw.Draw(img), cls, 100, 100, 80, np.random.default_rng(i))
        a = np.asarray(img.convert("HSV"), dtype=float)
        mask = a[..., 2] > 0
        ys, xs = np.nonzero(mask)
        fill.setdefault(cls, []).append(mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
        centre.setdefault(cls, set()).add(bool(mask[100, 100]))
        hues.setdefault(cls, set()).add(int(np.median(a[..., 0][mask]) // 32))
    lo = {c: min(v) for c, v in fill.items()}
    hi = {c: max(v) for c, v in fill.items()}
    assert abs(lo["circle"] - np.pi / 4) < 0.02 and abs(hi["circle"] - np.pi / 4) < 0.02, fill["circle"]
    assert centre["ring"] == {False} and hi["ring"] < 0.5  # a ring is a circle with a hole
    assert all(centre[c] == {True} for c in ("circle", "square", "triangle", "star", "cross"))
    assert lo["square"] > 0.6 and 0.4 < lo["triangle"] and hi["triangle"] < 0.55  # half its box
    assert hi["star"] < lo["triangle"] and hi["star"] < lo["cross"]  # thin points
    assert all(len(h) >= 3 for h in hues.values()), hues


def test_demo_cli_classify_writes_class_folders(tmp_path, capsys):
    assert demo.main(["--task", "classify", "--out", str(tmp_path / "c"), "--num-images", "12", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "a folder per class" in out and "circle" in out
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        ["circle", "square", "triangle", "star", "cross", "ring"]
    )
    assert demo.main(["--task", "classify", "--out", str(tmp_path / "c"), "--num-images", "12"]) == 2  # exists
