"""The built-in synthetic classification dataset (``python -m od.demo --task classify``).

A folder per class (``<out>/<class>/<class>_00000.jpg``), one centred-ish shape per image: six
classes distinct by outline, in random colours and sizes on the detection demo's textured, noisy
backgrounds (:func:`od.data.synthetic._background`, with fewer clutter strokes), so colour never
tells the class and a small ResNet trained from scratch on a CPU has to learn shape. Images are
96-192 px JPEGs; the shape fills 55-90% of the shorter side, sits somewhat off-centre and is tilted
up to ~20 degrees (with free rotation and heavy clutter a from-scratch CPU model needs far more than
the demo's few minutes).

Deterministic like the detection demo: image ``i`` depends only on ``(seed, i)``; its class is
``i % len(CLASSES)`` so every class gets the same count, and more images only add files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from od.data.synthetic import JPEG_QUALITY, _background, _colour

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
# 960: with 480 the 800-step demo ended between 0.94 and 1.0 val top-1 from run to run (94 val images,
# the template overfits); 960 gave 0.989 at the same steps and ~190 val images for a steadier figure.
DEFAULT_NUM_IMAGES = 960
MIN_SIDE, MAX_SIDE = 96, 192


def _polygon(cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Regular ``n``-gon (or a star when ``inner`` is the inner radius ratio) around ``(cx, cy)``."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        rad = r * (inner if inner and k % 2 else 1.0)
        a = angle + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw(draw: ImageDraw.ImageDraw, cls: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
    fill = _colour(rng, (0.55, 1.0), (0.55, 1.0))
    angle = float(rng.uniform(-0.35, 0.35)) - math.pi / 2  # upright-ish: up to ~20 degrees off
    if cls == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif cls == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(3, int(r * 0.3)))
    elif cls == "square":
        draw.polygon(_polygon(cx, cy, r, 4, angle + math.pi / 4), fill=fill)
    elif cls == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, angle), fill=fill)
    elif cls == "star":
        draw.polygon(_polygon(cx, cy, r, 5, angle, inner=0.45), fill=fill)
    else:  # cross: two bars through the centre
        w = r * 0.32
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon(
                [(cx - dx * r + px, cy - dy * r + py), (cx + dx * r + px, cy + dy * r + py),
                 (cx + dx * r - px, cy + dy * r - py), (cx - dx * r - px, cy - dy * r - py)],
                fill=fill,
            )


def make_image(seed: int, index: int) -> tuple[Image.Image, str]:
    """Image ``index`` of the dataset for ``seed`` and its class name."""
    cls = CLASSES[index % len(CLASSES)]
    rng = np.random.default_rng([seed, index, 1])
    w, h = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    img = _background(rng, w, h, strokes=(0, 4))
    r = min(w, h) * float(rng.uniform(0.55, 0.9)) / 2
    cx = w / 2 + float(rng.uniform(-1, 1)) * (w / 2 - r) * 0.5
    cy = h / 2 + float(rng.uniform(-1, 1)) * (h / 2 - r) * 0.5
    _draw(ImageDraw.Draw(img), cls, cx, cy, r, rng)
    arr = np.asarray(img, dtype=np.int16)
    amp = int(rng.integers(6, 18))
    arr = arr + rng.integers(-amp, amp + 1, size=arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), cls


def generate(out_dir: str | Path, num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0) -> dict:
    """Write ``<out_dir>/<class>/<class>_NNNNN.jpg``; returns ``{"images": n, "per_class": {class: n}}``."""
    out = Path(out_dir)
    counts = {c: 0 for c in CLASSES}
    for c in CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        img, cls = make_image(seed, i)
        img.save(out / cls / f"{cls}_{i:05d}.jpg", format="JPEG", quality=JPEG_QUALITY)
        counts[cls] += 1
    return {"images": num_images, "per_class": counts}
