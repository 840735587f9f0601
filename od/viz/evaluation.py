"""The PNGs of one evaluation (learning curves, PR curves, confusion matrix, gallery) from a
:func:`od.metrics.detection.compute_metrics` result; the gallery's drawings via :mod:`od.viz.draw`."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from od.console import warn

if TYPE_CHECKING:
    from od.metrics.boxes import ImageGroundTruth, ImagePredictions


@dataclass
class GalleryItem:
    caption: str
    image_bytes: bytes
    ground_truth: ImageGroundTruth
    predictions: ImagePredictions


def gallery_images(items: Sequence[GalleryItem], classes: Mapping[int, str], score_threshold: float):
    """(caption, GT drawing, prediction drawing) triples via od.viz.draw."""
    from PIL import Image

    from od.viz.draw import draw_boxes, draw_detections
    from od.core import Box, Detection

    out = []
    for it in items:
        image = Image.open(io.BytesIO(it.image_bytes)).convert("RGB")
        gt = it.ground_truth
        gt_boxes = [
            Box(*map(float, b), name=classes.get(int(c), str(c)), difficult=bool(d))
            for b, c, d in zip(gt.boxes, gt.class_ids, gt.difficult)
        ]
        labels = [b.name + (" (difficult)" if b.difficult else "") for b in gt_boxes]
        left = draw_boxes(image, gt_boxes, labels, [int(c) for c in gt.class_ids])
        p = it.predictions
        keep = p.scores >= score_threshold
        dets = [
            Detection(Box(*map(float, b), name=classes.get(int(c), str(c))), int(c), classes.get(int(c), str(c)), float(s))
            for b, s, c in zip(p.boxes[keep], p.scores[keep], p.class_ids[keep])
        ]
        right = draw_detections(image, dets)
        out.append((f"{it.caption} ({len(gt_boxes)} boxes / {len(dets)} dets)", left, right))
    return out


def write_plots(
    metrics: Mapping[str, Any],
    out_dir: Path,
    *,
    model_dir: str | None,
    gallery: Sequence[GalleryItem] = (),
    classes: Mapping[int, str] | None = None,
    score_threshold: float = 0.5,
) -> dict[str, str]:
    """All PNGs; a plot that fails is reported and the others still get written."""
    from od.viz import plots

    written: dict[str, str] = {}

    def attempt(name: str, fn) -> None:
        try:
            written[name] = str(fn())
        except Exception as e:  # noqa: BLE001 - one broken plot must not lose the metrics
            warn(f"could not draw {name}: {type(e).__name__}: {e}")

    if model_dir:
        attempt(
            "learning_curves",
            lambda: plots.plot_learning_curves(
                plots.read_scalars(os.path.join(model_dir, "train")),
                plots.read_scalars(os.path.join(model_dir, "validation")),
                out_dir / "learning_curves.png",
            ),
        )
    prs = metrics.get("_pr_curves") or {}
    curves = [(pr.name, pr.recall, pr.precision, pr.ap) for pr in prs.values()]
    attempt("pr_curves", lambda: plots.plot_pr_curves(curves, out_dir / "pr_curves.png"))
    cmd = metrics["confusion_matrix"]
    attempt(
        "confusion_matrix",
        lambda: plots.plot_confusion_matrix(
            cmd["matrix"], cmd["labels"], out_dir / "confusion_matrix.png",
            title=f"confusion matrix (IoU>={cmd['iou_threshold']}, score>={cmd['score_threshold']})",
        ),
    )
    if gallery and classes is not None:
        attempt(
            "gallery",
            lambda: plots.plot_gallery(
                gallery_images(gallery, classes, score_threshold), out_dir / "gallery.png",
                right_title=f"predictions (score>={score_threshold})",
            ),
        )
    return written
