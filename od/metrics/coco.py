"""COCO metrics through pycocotools, over ground truth built in memory.

The 12 summary numbers are pycocotools' own; every box counts (``difficult`` is a Pascal
VOC notion), like Model Garden's evaluator during training. Per-class AP is read from
``COCOeval.eval['precision']`` (the pip pycocotools does not report it).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Mapping, Sequence

import numpy as np

from od.metrics.boxes import ImageGroundTruth, ImagePredictions

COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def _coco_ann(ann_id: int, image_id: int, class_id, box) -> dict:
    """One COCO annotation from a pixel ``(xmin, ymin, xmax, ymax)`` box."""
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(class_id),
        "bbox": [float(box[0]), float(box[1]), w, h],
        "area": max(w, 0.0) * max(h, 0.0),
        "iscrowd": 0,
    }


def _coco_objects(
    ground_truths: Sequence[ImageGroundTruth],
    predictions: Mapping[str, ImagePredictions],
    classes: Mapping[int, str],
):
    from pycocotools.coco import COCO

    images, gt_anns, dt_anns = [], [], []
    for num, gt in enumerate(ground_truths, start=1):
        images.append({"id": num, "width": int(gt.width), "height": int(gt.height), "file_name": gt.image_id})
        for box, cid in zip(gt.boxes, gt.class_ids):
            gt_anns.append(_coco_ann(len(gt_anns) + 1, num, cid, box))
        pred = predictions.get(gt.image_id)
        if pred is None:
            continue
        for box, score, cid in zip(pred.boxes, pred.scores, pred.class_ids):
            dt_anns.append(dict(_coco_ann(len(dt_anns) + 1, num, cid, box), score=float(score)))
    categories = [{"id": int(k), "name": v, "supercategory": "object"} for k, v in classes.items()]
    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
    # Built by hand rather than with loadRes, which fails on an empty result list.
    coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt.createIndex()
    return coco_gt, coco_dt


def coco_metrics(
    ground_truths: Sequence[ImageGroundTruth],
    predictions: Mapping[str, ImagePredictions],
    classes: Mapping[int, str],
) -> tuple[dict[str, float], dict[int, dict[str, float | None]], str]:
    """The 12 COCO summary numbers, per-class AP/AP50/AP75, and pycocotools' printed summary."""
    from pycocotools.cocoeval import COCOeval

    coco_gt, coco_dt = _coco_objects(ground_truths, predictions, classes)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.catIds = sorted(classes)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: _clean(float(v)) for name, v in zip(COCO_STAT_NAMES, ev.stats)}
    # precision: [T iou thresholds, R recall thresholds, K classes, A area ranges, M max dets]
    precision = ev.eval["precision"]
    iou_thrs = ev.params.iouThrs
    area_all = ev.params.areaRngLbl.index("all")
    max100 = len(ev.params.maxDets) - 1
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    per_class: dict[int, dict[str, float | None]] = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, area_all, max100]
        per_class[cid] = {
            "AP": _masked_mean(p),
            "AP50": _masked_mean(p[t50]),
            "AP75": _masked_mean(p[t75]),
        }
    return stats, per_class, buf.getvalue()


def _masked_mean(a: np.ndarray) -> float | None:
    """Mean over valid entries (pycocotools marks 'no ground truth' with -1)."""
    valid = a[a > -1]
    return float(np.mean(valid)) if valid.size else None


def _clean(v: float) -> float | None:
    """pycocotools reports -1 for 'undefined'; JSON gets null."""
    return None if (v is None or not math.isfinite(v) or v < 0) else v
