"""Pascal VOC AP: devkit matching per class into a precision/recall curve, all-point AP.

VOC2010+ all-point interpolation; a detection whose best-overlap ground truth is
``difficult`` is neither a true nor a false positive, and difficult boxes are not counted in
recall, as in the VOC devkit. IoU >= 0.5 counts as a match by default (OD API convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from od.metrics.boxes import ImageGroundTruth, ImagePredictions, iou_matrix


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the precision envelope, summed where recall changes."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@dataclass
class ClassPR:
    """The ranked detections of one class turned into a precision/recall curve."""

    class_id: int
    name: str
    num_gt: int  # non-difficult boxes (the VOC recall denominator)
    recall: np.ndarray = field(default_factory=lambda: np.zeros(0))
    precision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ap: float | None = None  # None when the class has no (non-difficult) ground truth
    tp: int = 0
    fp: int = 0


def voc_class_pr(
    class_id: int,
    name: str,
    ground_truths: Sequence[ImageGroundTruth],
    predictions: Mapping[str, ImagePredictions],
    iou_threshold: float = 0.5,
) -> ClassPR:
    """VOC devkit matching for one class: each detection (highest score first) takes its
    best-overlap ground truth; a taken or too-weak match is a false positive, a difficult one
    is ignored."""
    gts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    num_gt = 0
    for gt in ground_truths:
        sel = gt.class_ids == class_id
        boxes, diff = gt.boxes[sel], gt.difficult[sel]
        gts[gt.image_id] = (boxes, diff, np.zeros(len(boxes), dtype=bool))
        num_gt += int((~diff).sum())
    # Per detection: its image, its best-overlap ground truth there (-1: none) and that IoU,
    # computed image by image in one matrix each.
    det_img: list[str] = []
    det_best: list[np.ndarray] = []
    det_iou: list[np.ndarray] = []
    det_score: list[np.ndarray] = []
    for image_id, pred in predictions.items():
        sel = pred.class_ids == class_id
        if not sel.any():
            continue
        g_boxes = gts[image_id][0] if image_id in gts else np.zeros((0, 4))
        ious = iou_matrix(pred.boxes[sel], g_boxes)
        if ious.shape[1]:
            best = np.argmax(ious, axis=1)
            det_best.append(best)
            det_iou.append(ious[np.arange(len(best)), best])
        else:
            det_best.append(np.full(len(ious), -1))
            det_iou.append(np.zeros(len(ious)))
        det_img += [image_id] * int(sel.sum())
        det_score.append(pred.scores[sel])
    result = ClassPR(class_id=class_id, name=name, num_gt=num_gt)
    if not det_img:
        result.ap = 0.0 if num_gt else None
        return result
    best_gt = np.concatenate(det_best)
    best_iou = np.concatenate(det_iou)
    scores = np.concatenate(det_score)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    keep = np.ones(len(order), dtype=bool)
    for rank, d in enumerate(order):
        j = int(best_gt[d])
        if j < 0:
            fp[rank] = 1
            continue
        _, g_diff, g_used = gts[det_img[d]]
        if best_iou[d] >= iou_threshold:
            if g_diff[j]:
                keep[rank] = False
            elif not g_used[j]:
                tp[rank] = 1
                g_used[j] = True
            else:
                fp[rank] = 1
        else:
            fp[rank] = 1
    tp, fp = tp[keep], fp[keep]
    result.scores = scores[order][keep]
    result.tp, result.fp = int(tp.sum()), int(fp.sum())
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        result.precision = np.where(ctp + cfp > 0, ctp / np.maximum(ctp + cfp, 1e-12), 0.0)
    if num_gt == 0:
        result.recall = np.zeros_like(ctp)
        result.ap = None
        return result
    result.recall = ctp / num_gt
    result.ap = voc_ap(result.recall, result.precision)
    return result
