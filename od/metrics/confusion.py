"""The confusion matrix of a detector: class-agnostic greedy box matching at an IoU threshold."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from od.metrics.boxes import ImageGroundTruth, ImagePredictions, iou_matrix


def confusion_matrix(
    ground_truths: Sequence[ImageGroundTruth],
    predictions: Mapping[str, ImagePredictions],
    class_ids: Sequence[int],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """[(K+1) x (K+1)] counts; rows ground truth, columns prediction, index K background."""
    index = {int(c): i for i, c in enumerate(class_ids)}
    bg = len(class_ids)
    cm = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    for gt in ground_truths:
        pred = predictions.get(gt.image_id)
        if pred is None:
            pred = ImagePredictions(gt.image_id, np.zeros((0, 4)), np.zeros(0), np.zeros(0))
        sel = pred.scores >= score_threshold
        p_boxes, p_cls = pred.boxes[sel], pred.class_ids[sel]
        ious = iou_matrix(gt.boxes, p_boxes)
        gi, pj = np.nonzero(ious >= iou_threshold)
        order = np.argsort(-ious[gi, pj], kind="mergesort")
        gt_used = np.zeros(len(gt.boxes), dtype=bool)
        pred_used = np.zeros(len(p_boxes), dtype=bool)
        for o in order:
            g, p = gi[o], pj[o]
            if gt_used[g] or pred_used[p]:
                continue
            gt_used[g] = pred_used[p] = True
            if not gt.difficult[g]:
                cm[index[int(gt.class_ids[g])], index[int(p_cls[p])]] += 1
        for g in np.nonzero(~gt_used & ~gt.difficult)[0]:
            cm[index[int(gt.class_ids[g])], bg] += 1
        for p in np.nonzero(~pred_used)[0]:
            cm[bg, index[int(p_cls[p])]] += 1
    return cm
