"""A grid of record examples with their ground-truth boxes (``od.inspect --gallery``).

Pillow only (no TensorFlow). Each sample is ``(record file, record index, DecodedExample[, class])``
as ``od.inspect`` collects them.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from od.io.files import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image


def class_name(class_id: int, text: str, label_map) -> str:
    """The name to show for a box: the label map's name, else the record's class text, else ``id N``."""
    if label_map is not None and class_id in label_map.id_to_name:
        return label_map.id_to_name[class_id]
    return text or f"id {class_id}"


def _caption_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def make_gallery(samples: Sequence, label_map=None, cell: int = 320) -> Image.Image:
    """One grid image: each sample resized into a ``cell`` square, then boxes drawn at that size.

    Drawing after resizing keeps outlines and labels legible however large the photos are.
    """
    from PIL import Image, ImageDraw

    from od.viz.draw import draw_boxes

    n = len(samples)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    caption_h = max(14, cell // 18)
    font = _caption_font(caption_h - 3)
    sheet = Image.new("RGB", (cols * cell, rows * (cell + caption_h)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for k, (path, index, ex, *label) in enumerate(samples):  # label: a classification record's class
        with Image.open(io.BytesIO(ex.image_bytes)) as im:
            im = im.convert("RGB")
        scale = min(cell / im.width, cell / im.height)
        w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.LANCZOS)
        boxes = ex.boxes_px(w, h)  # normalised coordinates -> pixels of the thumbnail
        ids = [int(c) for c in ex.class_ids]
        labels = [class_name(c, ex.class_texts[i], label_map) for i, c in enumerate(ids)]
        tile = draw_boxes(im, boxes, labels, ids)
        x0, y0 = (k % cols) * cell, (k // cols) * (cell + caption_h)
        sheet.paste(tile, (x0 + (cell - w) // 2, y0 + cell - h))  # bottom: caption right below
        caption = f"{Path(path).name}#{index} {ex.filename}"
        if label and label[0]:
            caption = f"{label[0]}: {caption}"
        while len(caption) > 4 and draw.textlength(caption, font=font) > cell - 4:
            caption = caption[:-2]
        draw.text((x0 + 2, y0 + cell + 1), caption, fill=(230, 230, 230), font=font)
    return sheet


def write_gallery(path: str | os.PathLike, samples: Sequence, label_map=None) -> None:
    buf = io.BytesIO()
    make_gallery(samples, label_map).save(buf, "PNG", optimize=False)
    atomic_write_bytes(path, buf.getvalue())
