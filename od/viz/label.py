"""One label across the top of an image: what ``od.classify --save-images`` draws.

The same fonts, colours and sizing as the boxes of ``od.detect`` (:mod:`od.viz.draw`), so a class
looks the same in both. Pillow only.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from od.viz.draw import _fit_text, _font, _text_size, color_for, font_size_for, line_width_for, text_color_for

UNSURE_COLOR = (128, 128, 128)


def classification_label(name: str, score: float, unsure: bool = False) -> str:
    """``"circle 0.93"``; ``"unsure: circle 0.41"`` below the threshold."""
    text = f"{name} {score:.2f}"
    return f"unsure: {text}" if unsure else text


def draw_label(image: Image.Image, text: str, class_id: int | None) -> Image.Image:
    """A new RGB copy of ``image`` with ``text`` on a banner in the class colour (grey when
    ``class_id`` is None) at its top-left corner, shortened with an ellipsis to fit the width."""
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    width, height = out.size
    if width == 0 or height == 0 or not text:
        return out
    size = font_size_for(width, height)
    pad = max(1, line_width_for(width, height))
    color = UNSURE_COLOR if class_id is None else color_for(class_id)
    text = _fit_text(text, size, max(1, width - 2 * pad))
    tw, th, top = _text_size(text, size)
    x1, y1 = min(width, tw + 2 * pad), min(height, th + 2 * pad)
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, x1 - 1, y1 - 1), fill=color)
    draw.text((pad, pad - top), text, font=_font(size), fill=text_color_for(color))
    return out
