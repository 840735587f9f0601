"""All classification metrics of one evaluation together, JSON-ready: :func:`compute_classification_metrics`.

Pure numpy (no TensorFlow). Labels are 0-based class indices (label-map id - 1, the way
od writes classification records); ``per_class`` reports the label-map id again. The
conventions are written into metrics.json under ``notes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NOTES = {
    "labels": "0-based class index = label-map id - 1; per_class ids are label-map ids",
    "top1": "fraction of images whose highest probability is the true class; "
    "ties go to the lowest class index (numpy argmax)",
    "top5": "fraction of images whose true class is among the 5 highest probabilities "
    "(stable order: ties go to the lower index, unlike tf.math.in_top_k which counts ties); "
    "null when there are 5 classes or fewer (it would always be 1)",
    "precision": "per class: correct predictions of the class / predictions of the class; "
    "0.0 when the class was never predicted",
    "recall": "per class: correct predictions of the class / images of the class; "
    "0.0 when the class has no images",
    "f1": "per class: 2 * precision * recall / (precision + recall); 0.0 when both are 0",
    "macro": "unweighted mean over the classes that have images or predictions "
    "(classes with neither are left out)",
    "confusion_matrix": "rows = true class, columns = predicted class (top-1), counts",
}

TOP_K = 5


def _check_inputs(labels, probabilities, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of the right shapes and values, or a ValueError that says what is wrong."""
    probs = np.asarray(probabilities, dtype=np.float64)
    raw = np.asarray(labels)
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError("no classes given")
    if raw.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {raw.shape}")
    if probs.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, num_classes), got {probs.shape}")
    if probs.shape[0] != raw.shape[0]:
        raise ValueError(f"{raw.shape[0]} labels but {probs.shape[0]} probability rows")
    if probs.shape[1] != num_classes:
        raise ValueError(
            f"probabilities have {probs.shape[1]} columns but there are {num_classes} class names; "
            "does the model belong to this label map?"
        )
    if raw.shape[0] == 0:
        raise ValueError("no images to evaluate")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or infinity")
    integral = raw.dtype.kind in "iu" or (
        raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))
    )
    if not integral:
        raise ValueError(f"labels must be integer class indices, got dtype {raw.dtype}")
    lab = raw.astype(np.int64)
    bad = sorted({int(v) for v in lab[(lab < 0) | (lab >= num_classes)]})
    if bad:
        raise ValueError(
            f"labels {bad[:5]} are outside 0..{num_classes - 1} (0-based: label-map id - 1)"
        )
    return lab, probs


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _top_k_hits(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the true label among the k highest probabilities (ties: lower index first)?"""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def compute_classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Top-1/top-5 accuracy, per-class and macro precision/recall/F1, confusion matrix — JSON-ready.

    ``labels``: (N,) true 0-based class indices; ``probabilities``: (N, C) scores, one column
    per name in ``class_names`` (index i = label-map id i + 1).
    """
    lab, probs = _check_inputs(labels, probabilities, class_names)
    n, c = probs.shape
    pred = np.argmax(probs, axis=1)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (lab, pred), 1)

    per_class = []
    for i, name in enumerate(class_names):
        tp = int(cm[i, i])
        support = int(cm[i, :].sum())
        predicted = int(cm[:, i].sum())
        p = _ratio(tp, predicted)
        r = _ratio(tp, support)
        per_class.append(
            {
                "id": i + 1,
                "name": str(name),
                "precision": p,
                "recall": r,
                "f1": _f1(p, r),
                "support": support,
                "predicted": predicted,
            }
        )
    active = [row for row in per_class if row["support"] > 0 or row["predicted"] > 0]

    def macro(key: str) -> float:
        return float(np.mean([row[key] for row in active]))

    return {
        "task": "classification",
        "num_images": int(n),
        "num_classes": int(c),
        "top1": float(np.mean(pred == lab)),
        "top5": float(np.mean(_top_k_hits(lab, probs, TOP_K))) if c > TOP_K else None,
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "confusion_labels": [str(name) for name in class_names],
        "notes": dict(NOTES),
    }


def per_class_rows(metrics: Mapping[str, Any]) -> tuple[tuple[str, ...], list[list[object]]]:
    """Headers and rows for :func:`od.console.print_table`.

    One row per class, then ``all``: the image count, macro precision/recall/F1 and the top-1
    accuracy (a ``top-5`` column is added when the metrics have one).
    """
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    with_top5 = metrics.get("top5") is not None
    headers = ("class", "support", "precision", "recall", "f1", "top-1") + (("top-5",) if with_top5 else ())
    rows: list[list[object]] = []
    for row in metrics["per_class"]:
        cells: list[object] = [row["name"], row["support"], f(row["precision"]), f(row["recall"]), f(row["f1"]), "-"]
        rows.append(cells + (["-"] if with_top5 else []))
    rows.append(
        ["all", metrics["num_images"], f(metrics["macro_precision"]), f(metrics["macro_recall"]),
         f(metrics["macro_f1"]), f(metrics["top1"])] + ([f(metrics["top5"])] if with_top5 else [])
    )
    return headers, rows


def mistakes_first(labels: np.ndarray, probabilities: np.ndarray) -> list[int]:
    """Image indices in gallery order: wrong predictions first, the most confident wrong one
    first, then the right ones, the least confident first (ties keep the input order)."""
    lab = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    if lab.ndim != 1 or probs.ndim != 2 or probs.shape[0] != lab.shape[0]:
        raise ValueError(f"labels {lab.shape} and probabilities {probs.shape} do not match: want (N,) and (N, C)")
    pred = np.argmax(probs, axis=1) if probs.shape[0] else np.zeros(0, dtype=np.int64)
    conf = probs.max(axis=1) if probs.shape[0] else np.zeros(0)
    wrong = [int(i) for i in np.flatnonzero(pred != lab)]
    right = [int(i) for i in np.flatnonzero(pred == lab)]
    wrong.sort(key=lambda i: -conf[i])
    right.sort(key=lambda i: conf[i])
    return wrong + right
