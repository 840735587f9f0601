"""Box-size statistics for report.json: how big the boxes are, and how small they get at a template's input.

Sizes are in pixels of the stored image; a box's *size* is ``sqrt(width * height)`` (see
``od.io.schema.BOX_SIZE_DEFINITION`` for why: it is what Model Garden's anchors and COCO's APs measure).
"At a template" mirrors Model Garden's detection parser at evaluation (``resize_and_crop_image`` with
``aug_scale_min = aug_scale_max = 1``): the image is scaled by ``s = min(H / height, W / width)`` keeping its
aspect ratio, each side rounded (``round(height * s)``), so a box scales by ``round(width * s) / width``
across and ``round(height * s) / height`` down. Training jitters that scale by ``aug_scale_min..max``
around it. The template input sizes are passed in (od.data knows nothing of templates).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from od.io.schema import (
    BOX_SIZE_DEFINITION,
    BOX_SIZE_THRESHOLDS,
    BOX_STAT_KEYS,
    percentile,
)

SKETCH_POINTS = 1001  # relative sizes kept: every box up to this many, else the 0.1% quantiles


class SizedBox(NamedTuple):
    """One box as stored in the records, with the size of its image."""

    name: str
    width: float
    height: float
    image_width: int
    image_height: int

    @property
    def size(self) -> float:
        return math.sqrt(self.width * self.height)


def resize_scale(image_width: int, image_height: int, input_hw: tuple[int, int]) -> tuple[float, float]:
    """(x scale, y scale) of Model Garden's keep-aspect resize of an image to ``input_hw`` (height, width)."""
    s = min(input_hw[0] / image_height, input_hw[1] / image_width)
    # Python's round and tf.round both round half to even.
    return round(image_width * s) / image_width, round(image_height * s) / image_height


def size_at(box: SizedBox, input_hw: tuple[int, int]) -> float:
    """The box's size (sqrt of its area) after its image is resized for an input of ``input_hw``."""
    sx, sy = resize_scale(box.image_width, box.image_height, input_hw)
    return math.sqrt(box.width * sx * box.height * sy)


def _summary(values: list[float]) -> dict:
    v = sorted(values)
    return {k: round(x, 2) for k, x in zip(BOX_STAT_KEYS, (v[0], percentile(v, 0.1), percentile(v, 0.5), v[-1]))}


def _stats(boxes: list[SizedBox], templates: Mapping[str, tuple[int, int]]) -> dict:
    out: dict = {"count": len(boxes)}
    if not boxes:
        return out
    out["width"] = _summary([b.width for b in boxes])
    out["height"] = _summary([b.height for b in boxes])
    out["area"] = _summary([b.width * b.height for b in boxes])
    out["size"] = _summary([b.size for b in boxes])
    at: dict = {}
    for name, hw in templates.items():
        sizes = sorted(size_at(b, hw) for b in boxes)
        t = {"p10_size": round(percentile(sizes, 0.1), 2), "median_size": round(percentile(sizes, 0.5), 2)}
        for px in BOX_SIZE_THRESHOLDS:
            t[f"under_{px}"] = round(sum(s < px for s in sizes) / len(sizes), 4)
        at[name] = t
    out["at_templates"] = at
    return out


def relative_sizes(boxes: Iterable[SizedBox]) -> dict:
    """``{"count", "quantiles"}``: box size / longer image side, sorted (see ``od.io.schema.BoxSizeSketch``)."""
    rel = sorted(b.size / max(b.image_width, b.image_height) for b in boxes)
    n = len(rel)
    if n > SKETCH_POINTS:
        rel = [percentile(rel, i / (SKETCH_POINTS - 1)) for i in range(SKETCH_POINTS)]
    return {"count": n, "quantiles": [float(f"{x:.6g}") for x in rel]}


def box_size_stats(boxes: Iterable[SizedBox], templates: Mapping[str, tuple[int, int]],
                   class_names: Iterable[str] = ()) -> dict:
    """report.json's ``box_sizes``: per class (every label-map class, in order) and all, plus the sketch.

    ``templates``: name -> (input height, input width) of each detection template to evaluate.
    """
    boxes = list(boxes)
    per_class: dict[str, list[SizedBox]] = {n: [] for n in class_names}
    for b in boxes:
        per_class.setdefault(b.name, []).append(b)
    return {
        "size": BOX_SIZE_DEFINITION,
        "templates": {n: [int(hw[0]), int(hw[1])] for n, hw in templates.items()},
        "all": _stats(boxes, templates),
        "per_class": {n: _stats(bs, templates) for n, bs in per_class.items()},
        "relative_size": relative_sizes(boxes),
    }
