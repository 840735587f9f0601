"""All detection metrics of one evaluation together, JSON-ready: :func:`compute_metrics`.

Pure numpy/pycocotools (no TensorFlow). Conventions (written into metrics.json under ``notes``):

* COCO metrics (AP, AP50, AP75, AR@100 ...) are pycocotools' own (:mod:`od.metrics.coco`).
  Like Model Garden's evaluator during training, every box counts (``difficult`` is a Pascal
  VOC notion). Per-class AP is read from ``COCOeval.eval['precision']`` (the pip pycocotools
  does not report it) and checked against the overall AP.
* Pascal VOC AP@0.5 uses VOC2010+ all-point interpolation; a detection whose best-overlap
  ground truth is ``difficult`` is neither a true nor a false positive, and difficult boxes are
  not counted in recall, as in the VOC devkit (:mod:`od.metrics.voc`). IoU >= 0.5 counts as a
  match (OD API convention).
* The confusion matrix matches boxes of any class at IoU >= 0.5 (greedy, highest IoU first),
  over predictions scoring at least ``score_threshold``; the last row/column is background
  (a missed box / a false detection). Difficult boxes are left out (:mod:`od.metrics.confusion`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from od.console import warn
from od.metrics.boxes import ImageGroundTruth, ImagePredictions
from od.metrics.coco import coco_metrics
from od.metrics.confusion import confusion_matrix
from od.metrics.voc import voc_class_pr

NOTES = {
    "boxes": "pixels of the stored image, xmin ymin xmax ymax",
    "coco": "pycocotools COCOeval over ground truth from the records; all boxes count "
    "(difficult included, like Model Garden's evaluator during training)",
    "per_class_ap": "from COCOeval eval['precision']; mean over classes with ground truth == AP",
    "voc": "Pascal VOC AP at IoU>=0.5, VOC2010+ all-point interpolation, difficult boxes ignored",
    "confusion_matrix": "rows = ground truth, columns = prediction, last = background; "
    "greedy class-agnostic matching at IoU>=0.5 over predictions with score >= score_threshold; "
    "difficult boxes left out",
}


def _class_table(class_names: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    """Label-map ids -> names; a plain sequence means ids 1..n in order (id 0 is background)."""
    if isinstance(class_names, Mapping):
        table = {int(k): str(v) for k, v in class_names.items()}
    else:
        table = {i + 1: str(n) for i, n in enumerate(class_names)}
    if not table:
        raise ValueError("no classes given")
    if any(k <= 0 for k in table):
        raise ValueError("class ids must be >= 1 (0 is the background)")
    return dict(sorted(table.items()))


def compute_metrics(
    ground_truths: Sequence[ImageGroundTruth],
    predictions: Sequence[ImagePredictions] | Mapping[str, ImagePredictions],
    class_names: Mapping[int, str] | Sequence[str],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> dict:
    """COCO AP/AP50/AP75/AR@100, per-class AP, VOC AP@0.5, confusion matrix — JSON-ready.

    ``class_names`` maps label-map ids to names (a plain list means ids 1..n). Images in
    ``predictions`` must be among ``ground_truths`` (an image with no prediction simply has
    none); ids outside the label map are an error. PR curves are returned under the private
    key ``_pr_curves`` (for plotting; left out of metrics.json).
    """
    classes = _class_table(class_names)
    gt_ids = [g.image_id for g in ground_truths]
    if len(set(gt_ids)) != len(gt_ids):
        dup = sorted({i for i in gt_ids if gt_ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate image ids in the ground truth: {dup}")
    if isinstance(predictions, Mapping):
        preds = dict(predictions)
    else:
        preds = {}
        for p in predictions:
            if p.image_id in preds:
                raise ValueError(f"two prediction sets for image {p.image_id}")
            preds[p.image_id] = p
    unknown_images = set(preds) - set(gt_ids)
    if unknown_images:
        raise ValueError(f"predictions for images not in the ground truth: {sorted(unknown_images)[:5]}")
    for g in ground_truths:
        bad = sorted({int(c) for c in g.class_ids} - set(classes))
        if bad:
            raise ValueError(f"image {g.image_id}: ground-truth class ids {bad} are not in the label map")
    for p in preds.values():
        bad = sorted({int(c) for c in p.class_ids} - set(classes))
        if bad:
            raise ValueError(
                f"image {p.image_id}: predicted class ids {bad} are not in the label map "
                f"(ids {sorted(classes)}); does the model belong to this label map?"
            )

    stats, coco_per_class, coco_summary = coco_metrics(ground_truths, preds, classes)
    prs = {cid: voc_class_pr(cid, name, ground_truths, preds, iou_threshold) for cid, name in classes.items()}
    cm = confusion_matrix(ground_truths, preds, list(classes), iou_threshold, score_threshold)

    per_class = []
    for cid, name in classes.items():
        n_all = int(sum(int((g.class_ids == cid).sum()) for g in ground_truths))
        n_diff = int(sum(int(((g.class_ids == cid) & g.difficult).sum()) for g in ground_truths))
        n_img = int(sum(1 for g in ground_truths if (g.class_ids == cid).any()))
        n_pred = int(sum(int((p.class_ids == cid).sum()) for p in preds.values()))
        per_class.append(
            {
                "id": cid,
                "name": name,
                "num_images": n_img,
                "num_gt": n_all,
                "num_difficult": n_diff,
                "num_predictions": n_pred,
                "AP": coco_per_class[cid]["AP"],
                "AP50": coco_per_class[cid]["AP50"],
                "AP75": coco_per_class[cid]["AP75"],
                "voc_AP50": prs[cid].ap,
            }
        )

    # pycocotools' overall AP is the mean of its per-class AP over classes with ground truth.
    valid_ap = [c["AP"] for c in per_class if c["AP"] is not None]
    mean_ap = float(np.mean(valid_ap)) if valid_ap else None
    check_ok = (mean_ap is None) == (stats["AP"] is None) and (
        mean_ap is None or abs(mean_ap - stats["AP"]) <= 1e-6
    )
    if not check_ok:
        # A bug signal, not a user error: keep the numbers but say loudly that they disagree.
        warn(
            f"mean per-class AP {mean_ap} != COCO AP {stats['AP']}; the pycocotools precision "
            "array layout may have changed: do not trust the per-class AP"
        )
    voc_valid = [c["voc_AP50"] for c in per_class if c["voc_AP50"] is not None]
    voc_map = float(np.mean(voc_valid)) if voc_valid else None
    labels = [classes[c] for c in classes] + ["background"]
    return {
        "num_images": len(ground_truths),
        "num_gt_boxes": int(sum(len(g.boxes) for g in ground_truths)),
        "num_difficult": int(sum(int(g.difficult.sum()) for g in ground_truths)),
        "num_predictions": int(sum(len(p.boxes) for p in preds.values())),
        "AP": stats["AP"],
        "AP50": stats["AP50"],
        "AP75": stats["AP75"],
        "AR100": stats["AR100"],
        "voc_mAP50": voc_map,
        "coco": stats,
        "per_class_check": {"mean_per_class_AP": mean_ap, "AP": stats["AP"], "ok": bool(check_ok)},
        "per_class": per_class,
        "voc": {
            "iou_threshold": iou_threshold,
            "mAP": voc_map,
            "per_class": {classes[c]: prs[c].ap for c in classes},
        },
        "confusion_matrix": {
            "labels": labels,
            "iou_threshold": iou_threshold,
            "score_threshold": score_threshold,
            "matrix": cm.tolist(),
        },
        "notes": dict(NOTES),
        "_coco_summary": coco_summary,
        "_pr_curves": prs,
    }


def public_metrics(metrics: Mapping[str, Any]) -> dict:
    """The JSON part of :func:`compute_metrics`' result (private ``_`` keys dropped)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def per_class_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [
        [c["name"], c["num_images"], c["num_gt"], c["num_predictions"], f(c["AP"]), f(c["AP50"]), f(c["AP75"]), f(c["voc_AP50"])]
        for c in metrics["per_class"]
    ]
    rows.append(
        ["all", metrics["num_images"], metrics["num_gt_boxes"], metrics["num_predictions"],
         f(metrics["AP"]), f(metrics["AP50"]), f(metrics["AP75"]), f(metrics["voc_mAP50"])]
    )
    return rows


PER_CLASS_HEADERS = ("class", "images", "boxes", "preds", "AP", "AP50", "AP75", "VOC AP50")
