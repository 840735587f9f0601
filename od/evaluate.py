"""``python -m od.evaluate`` — detection metrics and plots for a trained model dir or an export.

Two layers, so the numbers can be tested without TensorFlow:

* a pure numpy/pycocotools core, :func:`compute_metrics`, over small per-image dataclasses
  (boxes in pixels ``xmin, ymin, xmax, ymax``);
* the CLI, which reads the split's records, runs the model (a checkpoint through Model
  Garden's own inference path, or an exported SavedModel's ``serving_default`` signature),
  then writes ``eval/metrics.json`` and the PNGs from :mod:`od.plots`.

Conventions (written into metrics.json under ``notes``):

* COCO metrics (AP, AP50, AP75, AR@100 ...) are pycocotools' own, over ground truth built in
  memory from the records. Like Model Garden's evaluator during training, every box counts
  (``difficult`` is a Pascal VOC notion). Per-class AP is read from ``COCOeval.eval['precision']``
  (the pip pycocotools does not report it) and checked against the overall AP.
* Pascal VOC AP@0.5 uses VOC2010+ all-point interpolation; a detection whose best-overlap
  ground truth is ``difficult`` is neither a true nor a false positive, and difficult boxes are
  not counted in recall, as in the VOC devkit. IoU >= 0.5 counts as a match (OD API convention).
* The confusion matrix matches boxes of any class at IoU >= 0.5 (greedy, highest IoU first),
  over predictions scoring at least ``--score-threshold``; the last row/column is background
  (a missed box / a false detection). Difficult boxes are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.io.files import atomic_write_text

METRICS_VERSION = 1
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
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


# --------------------------------------------------------------------------------------
# Inputs of the metric core
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Geometry and Pascal VOC AP
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# COCO metrics through pycocotools, ground truth built in memory
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Records, checkpoints, inference (TensorFlow imported lazily, after argument parsing)
# --------------------------------------------------------------------------------------


class EvalError(Exception):
    """A problem with the user's input; the message says what to do."""


@dataclass
class GalleryItem:
    caption: str
    image_bytes: bytes
    ground_truth: ImageGroundTruth
    predictions: ImagePredictions


@dataclass
class EvalData:
    ground_truths: list[ImageGroundTruth]
    predictions: list[ImagePredictions]
    gallery: list[GalleryItem]
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    dropped_predictions: int = 0


def _glob_chars(s: str) -> bool:
    return any(c in s for c in "*?[")


def find_split_files(records: str, split: str) -> list[str]:
    """Record files of ``split``: DIR holds ``{split}-NNNNN-of-MMMMM.tfrecord`` shards; a file or
    glob is taken as is (e.g. a ``test.record`` written by the OD API tools)."""
    if _glob_chars(records):
        files = sorted(glob.glob(records))
    elif Path(records).is_file():
        files = [records]
    elif Path(records).is_dir():
        from od.io.shards import shard_pattern

        files = sorted(glob.glob(os.path.join(records, shard_pattern(split))))
        if not files:
            present = sorted(p.name for p in Path(records).iterdir() if p.suffix in (".tfrecord", ".record"))
            raise EvalError(
                f"no {split} records ({shard_pattern(split)}) in {records}"
                + (f"; found {', '.join(present[:6])}" if present else "")
                + "; write them with `python -m od.records`, or pass --records FILE_OR_GLOB"
            )
    else:
        raise EvalError(f"{records}: no such records directory, file or glob")
    if not files:
        raise EvalError(f"{records}: matches no record files")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty:
        raise EvalError(f"empty record file(s): {', '.join(empty)}; re-run `python -m od.records`")
    return files


def list_checkpoints(model_dir: str) -> list[str]:
    return sorted(
        (str(p)[: -len(".index")] for p in Path(model_dir).glob("**/*.index")),
        key=lambda s: (len(s), s),
    )


def resolve_checkpoint(model_dir: str, choice: str | None) -> tuple[str, str]:
    """-> (checkpoint prefix, how it was chosen). ``best`` is Model Garden's best_ckpt/ (AP50)."""
    import tensorflow as tf

    best_dir = os.path.join(model_dir, "best_ckpt")
    if choice in (None, "best"):
        best = tf.train.latest_checkpoint(best_dir) if os.path.isdir(best_dir) else None
        if best:
            if choice is None:
                note_default("checkpoint", f"best ({best})")
            return best, "best"
        if choice == "best":
            raise EvalError(
                f"no best checkpoint in {best_dir} (it is written when validation runs during training); "
                "use --checkpoint latest or a path"
            )
    if choice in (None, "latest", "best"):
        latest = tf.train.latest_checkpoint(model_dir)
        if not latest:
            raise EvalError(
                f"no checkpoint in {model_dir}; train first (`python -m od.train`) or pass --checkpoint PATH"
            )
        if choice is None:
            note_default("checkpoint", f"latest ({latest}; no best_ckpt/ yet)")
        return latest, "latest"
    path = choice
    if os.path.isdir(path):
        found = tf.train.latest_checkpoint(path)
        if not found:
            raise EvalError(f"{path}: directory holds no checkpoint (no 'checkpoint' file / ckpt-N.index)")
        return found, "path"
    if not os.path.exists(path + ".index"):
        have = list_checkpoints(model_dir)
        raise EvalError(
            f"checkpoint {path} not found (no {path}.index)"
            + (f"; checkpoints in {model_dir}: {', '.join(have[-6:])}" if have else "")
        )
    return path, "path"


def checkpoint_step(path: str) -> int | None:
    import tensorflow as tf

    try:
        for name, _ in tf.train.list_variables(path):
            if name.startswith("global_step/"):
                return int(tf.train.load_variable(path, name))
    except (tf.errors.OpError, ValueError):
        pass
    tail = os.path.basename(path).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _model_input(params) -> tuple[list[int], list[int], bool]:
    from official.vision.ops import preprocess_ops

    model = params.task.model
    size = list(model.input_size[:2])
    parser = params.task.validation_data.parser
    pad = getattr(parser, "pad", True)
    padded = preprocess_ops.compute_padded_size(size, 2 ** model.max_level) if pad else size
    return size, [int(v) for v in padded], bool(getattr(parser, "keep_aspect_ratio", True))


class CheckpointPredictor:
    """Model Garden's inference path on a restored checkpoint: the eval parser's normalise +
    resize-and-pad, the model at ``training=False``, boxes mapped back to original pixels."""

    def __init__(self, params, checkpoint: str):
        import tensorflow as tf
        from official.core import task_factory
        from official.vision.ops import anchor, preprocess_ops

        self.params = params
        task = task_factory.get_task(params.task)
        self.model = task.build_model()
        try:
            status = tf.train.Checkpoint(model=self.model).read(checkpoint).expect_partial()
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise EvalError(
                f"checkpoint {checkpoint} does not fit the model in pipeline.yaml "
                f"(was the model dir trained with a different config?): {str(e)[:300]}"
            ) from None
        size, padded, keep_ar = _model_input(params)
        m = params.task.model
        anchors = anchor.build_anchor_generator(
            min_level=m.min_level, max_level=m.max_level, num_scales=m.anchor.num_scales,
            aspect_ratios=m.anchor.aspect_ratios, anchor_size=m.anchor.anchor_size,
        )(image_size=padded)

        def preprocess(serialized):
            feats = tf.io.parse_single_example(serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            image = tf.io.decode_image(feats["image/encoded"], channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            # Float pixels in [0, 255] need the 0-255 mean/std (the default pair is for [0, 1]).
            x = preprocess_ops.normalize_image(
                tf.cast(image, tf.float32), offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB
            )
            x, info = preprocess_ops.resize_and_crop_image(
                x, size, padded_size=padded, aug_scale_min=1.0, aug_scale_max=1.0, keep_aspect_ratio=keep_ar
            )
            x.set_shape(padded + [3])
            return serialized, x, info

        self.preprocess = preprocess

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, *padded, 3], tf.float32),
                tf.TensorSpec([None, 4, 2], tf.float32),
            ]
        )
        def infer(images, image_info):
            n = tf.shape(images)[0]
            batch_anchors = {
                k: tf.tile(tf.expand_dims(v, 0), [n, 1, 1, 1]) for k, v in anchors.items()
            }
            out = self.model(
                images, image_shape=image_info[:, 1, :], anchor_boxes=batch_anchors, training=False
            )
            # Boxes are in the resized image's pixels: divide by the scale -> original pixels.
            scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
            boxes = out["detection_boxes"] / scale
            hw = tf.tile(image_info[:, 0:1, :], [1, 1, 2])
            boxes = tf.clip_by_value(boxes, 0.0, hw)
            return boxes, out["detection_scores"], out["detection_classes"], out["num_detections"]

        self.infer = infer

    def run(self, files: Sequence[str], batch_size: int):
        """Yield (serialized example, original height, width, yxyx px boxes, scores, classes)."""
        import tensorflow as tf

        ds = tf.data.TFRecordDataset(list(files)).map(self.preprocess, num_parallel_calls=2, deterministic=True)
        # An undecodable image drops its own record only (counted by collect()).
        ds = ds.ignore_errors().batch(batch_size).prefetch(1)
        for serialized, images, info in ds:
            boxes, scores, classes, num = self.infer(images, info)
            boxes, scores, classes, num = boxes.numpy(), scores.numpy(), classes.numpy(), num.numpy()
            info = info.numpy()
            for i in range(len(num)):
                k = int(num[i])
                yield (
                    bytes(serialized[i].numpy()),
                    int(round(info[i, 0, 0])),
                    int(round(info[i, 0, 1])),
                    boxes[i, :k],
                    scores[i, :k],
                    classes[i, :k].astype(np.int64),
                )


class ExportedPredictor:
    """An exported SavedModel's ``serving_default``: uint8 [1,H,W,3] in, OD API outputs
    (normalised yxyx boxes relative to the input image, label-map ids) out."""

    def __init__(self, export_dir: str):
        import tensorflow as tf

        sm = os.path.join(export_dir, "saved_model")
        if not os.path.isdir(sm):
            sm = export_dir
        if not tf.saved_model.contains_saved_model(sm):
            raise EvalError(f"{export_dir}: no SavedModel (expected {os.path.join(export_dir, 'saved_model')})")
        self.loaded = tf.saved_model.load(sm)
        if "serving_default" not in self.loaded.signatures:
            raise EvalError(f"{sm}: no serving_default signature (has {sorted(self.loaded.signatures)})")
        self.fn = self.loaded.signatures["serving_default"]
        _, kwargs = self.fn.structured_input_signature
        if len(kwargs) != 1:
            raise EvalError(f"{sm}: serving_default takes {sorted(kwargs)}; expected one uint8 image input")
        self.input_name = next(iter(kwargs))
        self.input_dtype = kwargs[self.input_name].dtype
        missing = {"detection_boxes", "detection_scores", "detection_classes"} - set(self.fn.structured_outputs)
        if missing:
            raise EvalError(f"{sm}: serving_default lacks outputs {sorted(missing)} (not an OD API style model)")

    def run(self, files: Sequence[str], batch_size: int = 1):
        import tensorflow as tf

        def decode(serialized):
            feats = tf.io.parse_single_example(serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            image = tf.io.decode_image(feats["image/encoded"], channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return serialized, image

        ds = tf.data.TFRecordDataset(list(files)).map(decode, num_parallel_calls=2, deterministic=True)
        ds = ds.ignore_errors().prefetch(2)
        for serialized, image in ds:
            h, w = int(image.shape[0]), int(image.shape[1])
            out = self.fn(**{self.input_name: tf.cast(image[None], self.input_dtype)})
            boxes = out["detection_boxes"].numpy()[0].astype(np.float64)
            scores = out["detection_scores"].numpy()[0]
            classes = np.rint(out["detection_classes"].numpy()[0]).astype(np.int64)
            k = int(out["num_detections"].numpy().reshape(-1)[0]) if "num_detections" in out else len(scores)
            boxes = boxes[:k] * np.array([h, w, h, w], dtype=np.float64)
            yield bytes(serialized.numpy()), h, w, boxes, scores[:k], classes[:k]


def collect(
    predictor,
    files: Sequence[str],
    classes: Mapping[int, str],
    *,
    batch_size: int = 4,
    gallery_size: int = 6,
    progress: bool = True,
) -> EvalData:
    """Run ``predictor`` over the records; ground truth decoded from the same records."""
    from od.io.example import decode_example

    gts: list[ImageGroundTruth] = []
    preds: list[ImagePredictions] = []
    gallery: list[GalleryItem] = []
    skipped: list[str] = []
    dropped = 0
    seen: set[str] = set()
    by_name = {name: cid for cid, name in classes.items()}
    total = count_records(files)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="od: evaluating", unit="img", file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    from od.io.example import ExampleError

    for n, (serialized, h, w, yxyx, scores, cls) in enumerate(predictor.run(files, batch_size)):
        if bar is not None:
            bar.update(1)
        try:
            ex = decode_example(serialized)
        except ExampleError as e:
            skipped.append(f"record #{n}: {e}")
            continue
        image_id = ex.source_id or ex.filename or f"#{n}"
        if image_id in seen:
            image_id = f"{image_id}#{n}"
        seen.add(image_id)
        label = ex.filename or image_id
        if ex.width > 0 and ex.height > 0 and (ex.width, ex.height) != (w, h):
            warn(f"{label}: record says {ex.width}x{ex.height}, image decodes to {w}x{h}; using the image")
        yx = ex.boxes_yxyx.astype(np.float64)
        gt_boxes = np.stack([yx[:, 1] * w, yx[:, 0] * h, yx[:, 3] * w, yx[:, 2] * h], axis=1) if len(yx) else np.zeros((0, 4))
        class_ids = ex.class_ids
        if (class_ids == 0).any():  # records without labels (old tools): take the class text
            class_ids = np.array(
                [by_name.get(t, 0) if c == 0 else c for c, t in zip(class_ids, ex.class_texts)], dtype=np.int64
            )
        unknown = sorted({int(c) for c in class_ids} - set(classes))
        if unknown:
            skipped.append(f"{label}: class ids {unknown} not in the label map")
            continue
        gt = ImageGroundTruth(image_id, gt_boxes, class_ids, ex.difficult, width=w, height=h)
        ok = np.isin(cls, list(classes))
        dropped += int((~ok).sum())
        yxyx, scores, cls = np.asarray(yxyx)[ok], np.asarray(scores)[ok], np.asarray(cls)[ok]
        px = np.stack([yxyx[:, 1], yxyx[:, 0], yxyx[:, 3], yxyx[:, 2]], axis=1) if len(yxyx) else np.zeros((0, 4))
        pred = ImagePredictions(image_id, px, scores, cls)
        gts.append(gt)
        preds.append(pred)
        if len(gallery) < gallery_size:
            gallery.append(GalleryItem(label, ex.image_bytes, gt, pred))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    seen_records = len(gts) + len(skipped)
    if total > seen_records:
        skipped.append(
            f"{total - seen_records} of {total} records: image could not be decoded "
            "(check them with `python -m od.inspect`)"
        )
    return EvalData(gts, preds, gallery, seconds, skipped, dropped)


def count_records(files: Sequence[str]) -> int:
    """Records in the files, counting up to the first unreadable byte of a damaged file."""
    import tensorflow as tf

    return int(tf.data.TFRecordDataset(list(files)).ignore_errors().reduce(0, lambda n, _: n + 1))


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


def gallery_images(items: Sequence[GalleryItem], classes: Mapping[int, str], score_threshold: float):
    """(caption, GT drawing, prediction drawing) triples via od.draw."""
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


def write_metrics_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")


def predictions_json(data: EvalData, classes: Mapping[int, str]) -> dict:
    return {
        "boxes": "pixels xmin ymin xmax ymax of the original image",
        "images": [
            {
                "image_id": p.image_id,
                "width": g.width,
                "height": g.height,
                "detections": [
                    {"class_id": int(c), "class_name": classes.get(int(c), str(c)), "score": round(float(s), 6),
                     "box": [round(float(v), 3) for v in b]}
                    for b, s, c in zip(p.boxes, p.scores, p.class_ids)
                ],
            }
            for g, p in zip(data.ground_truths, data.predictions)
        ],
    }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.evaluate",
        description="COCO AP/AP50/AP75/AR@100, per-class AP and Pascal VOC AP@0.5 of a trained model "
        "(checkpoint in a model dir, or an exported SavedModel) on the val/test records; writes "
        "metrics.json and plots (learning curves, PR curves, confusion matrix, gallery).",
    )
    ap.add_argument("--model-dir", help="od model dir (runs/NAME) with pipeline.yaml and checkpoints")
    ap.add_argument("--checkpoint", help="best (default when best_ckpt/ exists), latest, or a checkpoint path")
    ap.add_argument("--exported", help="evaluate an exported model (exported/NAME) instead of a checkpoint")
    ap.add_argument("--records", help="records dir (default: the one the model was trained on), or a file/glob")
    ap.add_argument("--split", default="val", choices=("val", "test", "train"), help="which split's shards (default val)")
    ap.add_argument("--label-map", help="label map (default: the model dir's / export's label_map.pbtxt)")
    ap.add_argument("--out", help="output dir (default MODEL_DIR/eval, or EXPORTED/eval with --exported)")
    ap.add_argument("--batch-size", type=int, default=4, help="images per inference batch (checkpoint path)")
    ap.add_argument("--score-threshold", type=float, default=0.5, help="for the confusion matrix and gallery (default 0.5)")
    ap.add_argument("--iou-threshold", type=float, default=0.5, help="VOC AP / confusion matrix IoU (default 0.5)")
    ap.add_argument("--gallery", type=int, default=6, metavar="N", help="images in gallery.png (0: none; default 6)")
    ap.add_argument("--no-plots", action="store_true", help="metrics.json only")
    ap.add_argument("--save-predictions", action="store_true", help="also write predictions.json (pixel boxes)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _run(args: argparse.Namespace) -> int:
    from od.io.label_map import LabelMapError, read_label_map

    model_dir = args.model_dir
    export_dir = args.exported
    params = header = None
    if export_dir:
        if not os.path.isdir(export_dir):
            parent = Path(export_dir).parent
            have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            raise EvalError(f"{export_dir}: no such export" + (f"; exports in {parent}: {', '.join(have)}" if have else ""))
        model_json = _load_json(os.path.join(export_dir, "model.json"))
        if not model_dir and model_json.get("model_dir") and os.path.isdir(str(model_json["model_dir"])):
            model_dir = str(model_json["model_dir"])
    if model_dir:
        from od.configs import ConfigError, load_model_dir

        try:
            params, header = load_model_dir(model_dir)
        except ConfigError as e:
            if not export_dir:
                raise EvalError(str(e)) from None
            warn(f"{e}; evaluating the export without it (no learning curves)")
            model_dir = None

    # Label map: --label-map, then the export's / model dir's copy, then the header's.
    candidates = [args.label_map] if args.label_map else [
        *( [os.path.join(export_dir, "label_map.pbtxt")] if export_dir else []),
        *( [os.path.join(model_dir, "label_map.pbtxt")] if model_dir else []),
        *( [str(header["label_map"])] if header and header.get("label_map") else []),
    ]
    lm_path = next((c for c in candidates if c and os.path.isfile(c)), None)
    if lm_path is None:
        raise EvalError(f"no label map found (tried {', '.join(candidates) or 'nothing'}); pass --label-map PATH")
    if not args.label_map:
        note_default("label map", lm_path)
    try:
        label_map = read_label_map(lm_path)
    except (LabelMapError, OSError) as e:
        raise EvalError(str(e)) from None
    classes = dict(label_map.items)
    if params is not None and not export_dir and params.task.model.num_classes != label_map.num_classes + 1:
        raise EvalError(
            f"the model has num_classes={params.task.model.num_classes} but {lm_path} has "
            f"{label_map.num_classes} classes (needs {label_map.num_classes + 1} incl. background); "
            "pass the label map the model was trained with (--label-map)"
        )

    # Records: --records, then the dir the model was trained on.
    records = args.records
    if not records:
        if header and header.get("records"):
            records = str(header["records"])
        elif params is not None and params.task.validation_data.input_path:
            paths = params.task.validation_data.input_path
            first = paths[0] if isinstance(paths, (list, tuple)) else str(paths).split(",")[0]
            records = os.path.dirname(str(first))
        else:
            raise EvalError("which records? pass --records DIR")
        note_default("records", records)
    files = find_split_files(records, args.split)

    out_dir = Path(args.out) if args.out else Path(export_dir or model_dir) / "eval"
    if not args.out:
        note_default("output dir", out_dir)

    info: dict[str, Any] = {
        "version": METRICS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_dir": model_dir,
        "exported": export_dir,
        "checkpoint": None,
        "checkpoint_choice": None,
        "step": None,
        "split": args.split if Path(records).is_dir() else None,  # a file/glob is taken whole
        "records": files,
        "label_map": lm_path,
        "classes": [{"id": i, "name": n} for i, n in label_map.items],
    }
    if export_dir:
        predictor = ExportedPredictor(export_dir)
        ck = _load_json(os.path.join(export_dir, "model.json")).get("checkpoint")
        if isinstance(ck, Mapping):  # od.export's model.json: {"path", "kind", "step"}
            info.update(checkpoint=ck.get("path"), checkpoint_choice=ck.get("kind"), step=ck.get("step"))
    else:
        ckpt, how = resolve_checkpoint(model_dir, args.checkpoint)
        info.update(checkpoint=ckpt, checkpoint_choice=how, step=checkpoint_step(ckpt))
        predictor = CheckpointPredictor(params, ckpt)

    data = collect(
        predictor, files, classes, batch_size=max(1, args.batch_size),
        gallery_size=0 if args.no_plots else max(0, args.gallery), progress=not args.quiet,
    )
    for s in data.skipped:
        warn(f"skipped {s}")
    if data.dropped_predictions:
        warn(f"dropped {data.dropped_predictions} predictions with class ids not in {lm_path}")
    if not data.ground_truths:
        raise EvalError(f"no usable images in {', '.join(files)}")

    metrics = compute_metrics(
        data.ground_truths, data.predictions, classes,
        iou_threshold=args.iou_threshold, score_threshold=args.score_threshold,
    )
    result = {**info, **public_metrics(metrics)}
    result["seconds"] = round(data.seconds, 2)
    result["images_per_second"] = round(len(data.ground_truths) / data.seconds, 3) if data.seconds > 0 else None
    result["skipped"] = data.skipped

    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        result["plots"] = write_plots(
            metrics, out_dir, model_dir=model_dir, gallery=data.gallery, classes=classes,
            score_threshold=args.score_threshold,
        )
    if args.save_predictions:
        atomic_write_text(out_dir / "predictions.json", json.dumps(predictions_json(data, classes), indent=1) + "\n")
    write_metrics_json(out_dir / "metrics.json", result)

    what = f"export {export_dir}" if export_dir else f"{info['checkpoint']} (step {info['step']})"
    split = f"{args.split} images" if Path(records).is_dir() else f"images of {records}"
    print(f"od: {what} on {len(data.ground_truths)} {split} ({result['images_per_second']} img/s)")
    print_table(PER_CLASS_HEADERS, per_class_rows(metrics))
    print(f"od: AR@100 {_fmt(metrics['AR100'])}; wrote {out_dir / 'metrics.json'}"
          + (f" and {len(result.get('plots', {}))} plots" if not args.no_plots else ""))
    return EXIT_FAILURES if data.skipped else EXIT_OK


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.model_dir and not args.exported:
        error("pass --model-dir runs/NAME (a trained model) or --exported exported/NAME")
        return EXIT_USAGE
    if args.exported and args.checkpoint:
        error("--checkpoint applies to --model-dir; an export has its checkpoint baked in")
        return EXIT_USAGE
    try:
        return _run(args)
    except EvalError as e:
        error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
