"""Boxes and labels on an image, readable at any image size.

Used by ``od.detect`` (annotated outputs) and ``od.inspect`` (record gallery). Pillow only:
no TensorFlow, so the data tools that draw stay fast to start.
"""

from __future__ import annotations

import colorsys
import functools
import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from od.core import Box, Detection

# Hand-picked, mutually distinct colours (bright enough to see on photos). Class ids 1..N map
# to these in order, so the first classes of every label map always get the same colours.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),    # red
    (60, 180, 75),    # green
    (0, 130, 200),    # blue
    (255, 225, 25),   # yellow
    (245, 130, 48),   # orange
    (145, 30, 180),   # purple
    (70, 240, 240),   # cyan
    (240, 50, 230),   # magenta
    (210, 245, 60),   # lime
    (250, 190, 212),  # pink
    (0, 128, 128),    # teal
    (220, 190, 255),  # lavender
    (170, 110, 40),   # brown
    (255, 250, 200),  # beige
    (128, 0, 0),      # maroon
    (170, 255, 195),  # mint
    (128, 128, 0),    # olive
    (255, 215, 180),  # apricot
    (0, 0, 128),      # navy
    (128, 128, 128),  # grey
)

_GOLDEN = 0.618033988749895


def color_for(class_id: int) -> tuple[int, int, int]:
    """A stable colour for a class id: the palette first, then golden-ratio hues (never random)."""
    i = int(class_id)
    if 1 <= i <= len(_PALETTE):
        return _PALETTE[i - 1]
    # Beyond the palette (or id 0 / negative ids from odd models): spread hues by the golden
    # ratio, with alternating saturation/value so neighbouring ids stay apart.
    hue = (abs(i) * _GOLDEN) % 1.0
    sat = 0.85 if i % 2 else 0.6
    val = 0.95 if (i // 2) % 2 else 0.8
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (round(r * 255), round(g * 255), round(b * 255))


def text_color_for(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (Rec. 601 luma)."""
    r, g, b = background[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 140 else (255, 255, 255)


def line_width_for(width: int, height: int) -> int:
    """Box outline width: 3 px at 640x480, growing with the image's geometric size."""
    return max(1, round(math.sqrt(max(1, width) * max(1, height)) / 200))


def font_size_for(width: int, height: int) -> int:
    """Label font size: ~16 px at 640x480, never below 10 px (unreadable) on tiny images."""
    return max(10, round(math.sqrt(max(1, width) * max(1, height)) / 35))


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable font of ``size`` px: Pillow's built-in TrueType font, else DejaVu, else bitmap."""
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: no font file needed
    except (TypeError, ImportError, OSError, AttributeError):
        pass
    for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def _clean_box(box: Box, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Order, clip and validate a box; None when it cannot be drawn (NaN, or fully outside)."""
    try:
        x0, y0, x1, y1 = (float(v) for v in (box.xmin, box.ymin, box.xmax, box.ymax))
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
        return None
    return (max(0.0, x0), max(0.0, y0), min(float(width - 1), x1), min(float(height - 1), y1))


@functools.lru_cache(maxsize=4096)
def _text_size(text: str, size: int) -> tuple[int, int, int]:
    """(width, height, top offset) of ``text`` at font ``size`` drawn at the origin (cached:
    the same few labels, e.g. "raccoon 97%", recur on every image)."""
    left, top, right, bottom = _font(size).getbbox(text)
    return right - left, bottom - top, top


def _fit_text(text: str, size: int, max_width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``max_width`` (labels wider than the image)."""
    if _text_size(text, size)[0] <= max_width:
        return text
    for n in range(len(text) - 1, 0, -1):
        candidate = text[:n].rstrip() + "…"
        if _text_size(candidate, size)[0] <= max_width:
            return candidate
    return text[:1]


def label_rect(
    box_xy: tuple[float, float, float, float],
    label_w: int,
    label_h: int,
    width: int,
    height: int,
) -> tuple[int, int, int, int]:
    """Where a label of ``label_w x label_h`` goes for a box: above its top-left corner, or just
    inside the box top when there is no room above; shifted left at the right edge; always
    inside the image when it fits."""
    x0, y0, _, _ = box_xy
    lx = int(round(x0))
    ly = int(round(y0)) - label_h
    if ly < 0:  # no room above: flip below the box's top edge (inside the box)
        ly = int(round(y0))
    ly = min(ly, height - label_h)
    lx = min(lx, width - label_w)
    lx, ly = max(0, lx), max(0, ly)
    return lx, ly, lx + label_w, ly + label_h


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Box],
    labels: Sequence[str],
    class_ids: Sequence[int],
) -> Image.Image:
    """Return a new RGB copy of ``image`` with each box outlined in its class colour and labelled.

    Boxes are drawn first and labels after, so no outline crosses a label. Degenerate boxes
    (swapped corners, zero size, partly outside) are clipped and drawn; NaN/inf or fully outside
    boxes are skipped.
    """
    if not (len(boxes) == len(labels) == len(class_ids)):
        raise ValueError(
            f"draw_boxes: {len(boxes)} boxes, {len(labels)} labels, {len(class_ids)} class ids; need one each"
        )
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    width, height = out.size
    if width == 0 or height == 0 or not boxes:
        return out
    draw = ImageDraw.Draw(out)
    lw = line_width_for(width, height)
    size = font_size_for(width, height)
    font = _font(size)
    pad = max(1, lw)

    placed: list[tuple[tuple[float, float, float, float], str, tuple[int, int, int]]] = []
    for box, label, cid in zip(boxes, labels, class_ids):
        xy = _clean_box(box, width, height)
        if xy is None:
            continue
        color = color_for(cid)
        x0, y0, x1, y1 = xy
        # Pillow draws `width` px inward from the given rectangle; keep the outline visible even
        # for boxes thinner than the line.
        w = max(1, min(lw, int((x1 - x0) // 2) + 1, int((y1 - y0) // 2) + 1))
        draw.rectangle((x0, y0, x1, y1), outline=color, width=w)
        if label:
            placed.append((xy, str(label), color))

    for xy, label, color in placed:
        text = _fit_text(label, size, max(1, width - 2 * pad))
        tw, th, top = _text_size(text, size)
        lx0, ly0, lx1, ly1 = label_rect(xy, tw + 2 * pad, th + 2 * pad, width, height)
        draw.rectangle((lx0, ly0, lx1 - 1, ly1 - 1), fill=color)
        draw.text((lx0 + pad, ly0 + pad - top), text, font=font, fill=text_color_for(color))
    return out


def format_label(class_name: str, score: float | None) -> str:
    """``"raccoon 97%"``: the score rounded to a whole percent (float32 0.9 shows as 90%)."""
    if score is None or not math.isfinite(float(score)):
        return class_name
    return f"{class_name} {max(0, min(100, round(float(score) * 100)))}%"


def draw_detections(image: Image.Image, detections: Sequence[Detection]) -> Image.Image:
    """Draw detections labelled like ``raccoon 97%``; the highest scores are drawn last (on top)."""
    ordered = sorted(detections, key=lambda d: float(d.score))
    return draw_boxes(
        image,
        [d.box for d in ordered],
        [format_label(d.class_name or str(d.class_id), d.score) for d in ordered],
        [d.class_id for d in ordered],
    )
