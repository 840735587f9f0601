"""The built-in synthetic Pascal VOC dataset (written by ``python -m od.demo``).

Circles, squares and triangles in varied colours and sizes (28-110 px) on textured,
noisy backgrounds, 1-4 per image with some overlap, ~3% images with none. Images are
256-400 px JPEGs with a LabelImg-style XML beside each one (LabelImg's default layout:
``demo_00000.jpg`` + ``demo_00000.xml`` in one folder). The shapes are distinct enough
that a small Faster R-CNN trained from scratch on a CPU learns them in minutes.

Deterministic: image ``i`` depends only on ``(seed, i)``, so the same seed gives
byte-identical files wherever they are written (``<path>`` holds the bare file name),
and a larger ``num_images`` only adds files.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from od.core import Box
from od.data.voc import format_voc

CLASSES = ("circle", "square", "triangle")
DEFAULT_NUM_IMAGES = 300
DEFAULT_SEED = 0
MIN_SIZE, MAX_SIZE = 28, 110
NEGATIVE_RATE = 0.03
MAX_IOU = 0.3  # some overlap, never one shape hiding another
JPEG_QUALITY = 90
FOLDER = "demo"


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, w: int, h: int, strokes: tuple[int, int] = (3, 12)) -> Image.Image:
    """Muted low-frequency texture + ``strokes`` (min, max excluded) clutter strokes; shapes stay the
    saturated things."""
    base = np.array(_colour(rng, (0.0, 0.35), (0.25, 0.85)), dtype=np.float32)
    cells = rng.integers(3, 9)
    blobs = rng.normal(0.0, 28.0, size=(cells, cells, 3)).astype(np.float32)
    tex = Image.fromarray(np.clip(base + blobs, 0, 255).astype(np.uint8), "RGB").resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(tex)
    for _ in range(int(rng.integers(*strokes))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(-120, 121)), y0 + int(rng.integers(-120, 121))
        draw.line((x0, y0, x1, y1), fill=_colour(rng, (0.0, 0.3), (0.2, 0.9)), width=int(rng.integers(1, 4)))
    return tex.filter(ImageFilter.SMOOTH)


def _draw_shape(draw: ImageDraw.ImageDraw, cls: str, x0: int, y0: int, s: int, rng: np.random.Generator) -> None:
    fill = _colour(rng, (0.55, 1.0), (0.55, 1.0))
    outline = tuple(int(c * 0.5) for c in fill) if rng.random() < 0.5 else None
    x1, y1 = x0 + s - 1, y0 + s - 1
    if cls == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=2)
    elif cls == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill, outline=outline, width=2)
    else:
        mid = x0 + (s - 1) / 2
        pts = [(x0, y1), (x1, y1), (mid, y0)] if rng.random() < 0.7 else [(x0, y0), (x1, y0), (mid, y1)]
        draw.polygon(pts, fill=fill, outline=outline, width=2)


def make_image(seed: int, index: int) -> tuple[Image.Image, list[Box]]:
    """Image ``index`` of the dataset for ``seed`` and its boxes (VOC pixel coordinates)."""
    rng = np.random.default_rng([seed, index])
    w, h = int(rng.integers(256, 401)), int(rng.integers(256, 401))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    boxes: list[Box] = []
    taken: list[tuple[int, int, int, int]] = []
    n = 0 if rng.random() < NEGATIVE_RATE else int(rng.integers(1, 5))
    for _ in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        for _try in range(20):
            s = int(rng.integers(MIN_SIZE, min(MAX_SIZE, w - 2, h - 2) + 1))
            x0, y0 = int(rng.integers(1, w - s)), int(rng.integers(1, h - s))
            cand = (x0, y0, x0 + s, y0 + s)
            if all(_iou(cand, t) <= MAX_IOU for t in taken):
                break
        else:
            continue
        _draw_shape(draw, cls, x0, y0, s, rng)
        taken.append(cand)
        boxes.append(Box(*cand, name=cls))
    arr = np.asarray(img, dtype=np.int16)
    amp = int(rng.integers(6, 18))  # uniform sensor-like noise over shapes and background
    arr = arr + rng.integers(-amp, amp + 1, size=arr.shape, dtype=np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img, boxes


def generate(out_dir: str | Path, num_images: int = DEFAULT_NUM_IMAGES, seed: int = DEFAULT_SEED) -> dict:
    """Write the dataset into ``out_dir`` (created); returns counts per class and negatives."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {c: {"images": 0, "boxes": 0} for c in CLASSES}
    negatives = 0
    for i in range(num_images):
        img, boxes = make_image(seed, i)
        name = f"demo_{i:05d}.jpg"
        img.save(out / name, format="JPEG", quality=JPEG_QUALITY)
        xml = format_voc(image_path=name, width=img.width, height=img.height, boxes=boxes, folder=FOLDER)
        (out / f"demo_{i:05d}.xml").write_bytes(xml)
        negatives += not boxes
        for c in {b.name for b in boxes}:
            counts[c]["images"] += 1
        for b in boxes:
            counts[b.name]["boxes"] += 1
    return {"images": num_images, "negatives": negatives, "per_class": counts}
