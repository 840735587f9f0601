"""od.draw: boxes land where told, labels stay inside the image, nothing crashes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from od.viz.draw import (
    color_for,
    draw_boxes,
    draw_detections,
    font_size_for,
    format_label,
    label_rect,
    line_width_for,
    text_color_for,
)
from od.core import Box, Detection

BG = (40, 40, 40)


def _mask(img: Image.Image, color) -> np.ndarray:
    """Boolean HxW: pixels exactly of ``color``."""
    a = np.asarray(img.convert("RGB"))
    return np.all(a == np.array(color, dtype=np.uint8), axis=-1)


def test_colors_stable_and_distinct():
    first = [color_for(i) for i in range(1, 61)]
    assert first == [color_for(i) for i in range(1, 61)]  # stable
    assert len(set(first)) == len(first)  # distinct
    for c in first + [color_for(0), color_for(-3), color_for(10_000)]:
        assert len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)


def test_text_color_contrasts():
    assert text_color_for((255, 255, 0)) == (0, 0, 0)
    assert text_color_for((0, 0, 128)) == (255, 255, 255)
    for i in range(1, 30):
        assert text_color_for(color_for(i)) in ((0, 0, 0), (255, 255, 255))


def test_sizes_scale_with_image():
    assert line_width_for(4000, 3000) > line_width_for(640, 480) >= 1
    assert font_size_for(4000, 3000) > font_size_for(640, 480) >= 10
    assert font_size_for(8, 8) == 10 and line_width_for(1, 1) == 1


def test_box_drawn_where_told():
    img = Image.new("RGB", (400, 300), BG)
    box = Box(100, 80, 260, 200, name="cat")
    out = draw_boxes(img, [box], [""], [1])  # no label: only the outline
    assert out is not img and img.getpixel((100, 80)) == BG  # input untouched
    m = _mask(out, color_for(1))
    # all four edges carry the colour
    assert m[80, 150] and m[200, 150] and m[120, 100] and m[120, 260]
    # nothing far from the box, nor in its interior
    ys, xs = np.nonzero(m)
    assert xs.min() >= 100 and xs.max() <= 260 and ys.min() >= 80 and ys.max() <= 200
    assert not m[140, 180]


def test_label_has_class_colour_background_and_text():
    img = Image.new("RGB", (640, 480), BG)
    det = Detection(Box(200, 200, 400, 400, name="raccoon"), 2, "raccoon", 0.97)
    out = draw_detections(img, [det])
    m = _mask(out, color_for(2))
    ys, xs = np.nonzero(m)
    assert ys.min() < 200  # label background sits above the box
    label_region = np.asarray(out)[ys.min():200, 200:300]
    text_rgb = np.array(text_color_for(color_for(2)), dtype=np.uint8)
    assert np.any(np.all(label_region == text_rgb, axis=-1))  # text pixels drawn on it


@pytest.mark.parametrize(
    "box",
    [
        Box(0, 0, 100, 60),  # top-left corner: label must flip below the top edge
        Box(560, 0, 640, 40),  # top-right: flip + clamp right
        Box(600, 300, 640, 480),  # right edge, bottom
        Box(0, 460, 640, 480),  # thin strip at the bottom
        Box(-50, -50, 700, 600),  # larger than the image
    ],
)
def test_labels_inside_image_at_edges(box):
    w, h = 640, 480
    img = Image.new("RGB", (w, h), BG)
    label = "a rather long class name 99%"
    out = draw_boxes(img, [box], [label], [5])
    assert out.size == (w, h)
    m = _mask(out, color_for(5))
    # The filled label background: rows with a long run of the class colour...
    rows_with_fill = [y for y in range(h) if m[y].sum() > 60]
    assert rows_with_fill, "label background not drawn"
    # ...carrying the label text (text colour pixels within those rows), i.e. visible in the image.
    y0, y1 = min(rows_with_fill), max(rows_with_fill)
    band = np.asarray(out)[y0 : y1 + 1]
    text_rgb = np.array(text_color_for(color_for(5)), dtype=np.uint8)
    assert np.all(band == text_rgb, axis=-1).sum() > 20


def test_label_rect_rules():
    # room above: placed above the box
    assert label_rect((100, 100, 200, 200), 50, 20, 640, 480) == (100, 80, 150, 100)
    # no room above: flipped to just inside the box top
    assert label_rect((100, 5, 200, 200), 50, 20, 640, 480) == (100, 5, 150, 25)
    # right edge: shifted left to fit
    assert label_rect((620, 100, 639, 200), 50, 20, 640, 480) == (590, 80, 640, 100)
    # wider than the image: starts at 0
    assert label_rect((10, 100, 20, 200), 900, 20, 640, 480)[0] == 0
    # bottom edge: kept inside
    x0, y0, x1, y1 = label_rect((10, 479, 20, 479), 50, 20, 640, 20)
    assert y0 >= 0 and y1 <= 20


def test_label_text_fully_inside_when_at_top_right():
    """The label of a box touching the top-right corner is drawn fully (flipped + clamped)."""
    w, h = 320, 240
    img = Image.new("RGB", (w, h), BG)
    out = draw_boxes(img, [Box(250, 0, 319, 50)], ["raccoon dog 88%"], [3])
    m = _mask(out, color_for(3))
    # The filled label rectangle: a run of coloured pixels on row 2 wider than the box itself.
    row = np.nonzero(m[2])[0]
    assert row.min() < 250 and row.max() == w - 1


@pytest.mark.parametrize(
    "box",
    [
        Box(50, 50, 50, 50),  # zero size
        Box(80, 90, 20, 10),  # swapped corners
        Box(float("nan"), 0, 10, 10),
        Box(0, float("inf"), 10, 10),
        Box(5000, 5000, 6000, 6000),  # fully outside
        Box(-10, -10, -1, -1),
        Box(10.4, 10.6, 10.9, 11.2),  # sub-pixel
    ],
)
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (100, 100)])
def test_degenerate_boxes_never_crash(box, size):
    img = Image.new("RGB", size, BG)
    out = draw_boxes(img, [box], ["thing 50%"], [1])
    assert out.size == size and out.mode == "RGB"


def test_swapped_corners_drawn_as_ordered():
    out = draw_boxes(Image.new("RGB", (100, 100), BG), [Box(80, 90, 20, 10)], [""], [1])
    m = _mask(out, color_for(1))
    assert m[10, 50] and m[90, 50] and m[50, 20] and m[50, 80]


def test_any_mode_in_rgb_out():
    for mode in ("L", "RGBA", "P", "I;16"):
        img = Image.new(mode, (64, 48))
        out = draw_boxes(img, [Box(5, 5, 40, 30)], ["x 10%"], [1])
        assert out.mode == "RGB" and out.size == (64, 48)


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError):
        draw_boxes(Image.new("RGB", (10, 10)), [Box(1, 1, 5, 5)], [], [1])


def test_format_label():
    assert format_label("raccoon", 0.97) == "raccoon 97%"
    assert format_label("raccoon", 0.994) == "raccoon 99%"
    assert format_label("raccoon", float(np.float32(0.9))) == "raccoon 90%"
    assert format_label("raccoon", 1.0) == "raccoon 100%"
    assert format_label("raccoon", 0.29) == "raccoon 29%"
    assert format_label("raccoon", None) == "raccoon"


def test_draw_detections_higher_score_on_top():
    img = Image.new("RGB", (200, 200), BG)
    lo = Detection(Box(20, 40, 180, 180), 1, "a", 0.6)
    hi = Detection(Box(20, 40, 180, 180), 2, "b", 0.9)
    out = draw_detections(img, [hi, lo])
    assert out.getpixel((100, 40)) == color_for(2)  # the higher score's outline wins


def test_draw_does_not_import_tensorflow():
    code = "import sys, od.viz.draw; print('tensorflow' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
