"""The per-image inputs of the detection metrics and the overlap between their boxes.

Boxes are pixels of the stored image, ``xmin, ymin, xmax, ymax`` (continuous coordinates);
class ids are label-map ids (0 is the background).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _as_boxes(boxes: Any) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {arr.shape}")
    return arr


@dataclass(frozen=True)
class ImageGroundTruth:
    """The labelled boxes of one image: pixels ``xmin, ymin, xmax, ymax``, label-map ids."""

    image_id: str
    boxes: np.ndarray
    class_ids: np.ndarray
    difficult: np.ndarray | None = None
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes)
        ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        diff = (
            np.zeros(len(ids), dtype=bool)
            if self.difficult is None
            else np.asarray(self.difficult, dtype=bool).reshape(-1)
        )
        if not (len(boxes) == len(ids) == len(diff)):
            raise ValueError(
                f"image {self.image_id}: {len(boxes)} boxes, {len(ids)} class ids, "
                f"{len(diff)} difficult flags"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "class_ids", ids)
        object.__setattr__(self, "difficult", diff)


@dataclass(frozen=True)
class ImagePredictions:
    """A detector's output for one image: pixel boxes, scores, label-map ids."""

    image_id: str
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(ids)):
            raise ValueError(
                f"image {self.image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(ids)} class ids"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", ids)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of ``a`` [N,4] and ``b`` [M,4] (continuous pixel coordinates)."""
    a = _as_boxes(a)
    b = _as_boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out
