"""The PNGs of ``od.evaluate``: learning curves, PR curves, confusion matrix, gallery.

Matplotlib's object API on the Agg canvas (no pyplot state, no display needed); every
figure is rendered to memory and written atomically. TensorBoard event files are read
with a small TFRecord reader over TensorBoard's Event proto, so this module never imports
TensorFlow.
"""

from __future__ import annotations

import io
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from od.io.files import atomic_write_bytes

Scalars = dict[str, list[tuple[int, float]]]  # tag -> [(step, value)] sorted by step

# --------------------------------------------------------------------------------------
# TensorBoard events
# --------------------------------------------------------------------------------------


def _iter_tfrecord(path: Path) -> Iterator[bytes]:
    """Records of one TFRecord file; a truncated tail (run still writing, or killed) ends it."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def _scalar_value(value) -> float | None:
    """A scalar from a TF1 ``simple_value`` or a TF2 scalar tensor summary."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind != "tensor":
        return None
    t = value.tensor
    if len(t.tensor_shape.dim) > 0 and any(d.size != 1 for d in t.tensor_shape.dim):
        return None
    # DataType enum: 1 float32, 2 float64, 3 int32, 9 int64, 19 float16, 14 bfloat16
    if t.float_val:
        return float(t.float_val[0])
    if t.double_val:
        return float(t.double_val[0])
    if t.int_val:
        return float(t.int_val[0])
    if t.int64_val:
        return float(t.int64_val[0])
    if t.tensor_content:
        dtype = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 19: "<f2"}.get(t.dtype)
        if dtype is None:
            return None
        arr = np.frombuffer(t.tensor_content, dtype=dtype)
        return float(arr[0]) if arr.size == 1 else None
    return None


def read_scalars(event_dir: str | os.PathLike) -> Scalars:
    """All scalar series of the ``events.out.tfevents.*`` files in ``event_dir`` (not recursive).

    Files are read in name (= creation time) order and a later value for the same step wins,
    so a resumed run reads as one series.
    """
    from tensorboard.compat.proto import event_pb2

    event_dir = Path(event_dir)
    series: dict[str, dict[int, float]] = {}
    if not event_dir.is_dir():
        return {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        try:
            records = list(_iter_tfrecord(path))
        except OSError:
            continue
        for rec in records:
            ev = event_pb2.Event()
            try:
                ev.ParseFromString(rec)
            except Exception:  # noqa: BLE001 - a damaged record is skipped, the rest still plot
                continue
            if not ev.HasField("summary"):
                continue
            for value in ev.summary.value:
                v = _scalar_value(value)
                if v is not None:
                    series.setdefault(value.tag, {})[int(ev.step)] = v
    return {tag: sorted(points.items()) for tag, points in sorted(series.items())}


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(out_path, buf.getvalue())
    return Path(out_path)


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)


def _metric_tag(scalars: Scalars, name: str) -> str | None:
    """``AP50`` may be written as ``AP50`` or nested as ``something/AP50``."""
    if name in scalars:
        return name
    for tag in scalars:
        if tag.rsplit("/", 1)[-1] == name:
            return tag
    return None


def _loss_tags(scalars: Scalars) -> list[str]:
    """Loss series worth a line: Model Garden also logs all-zero ones (``mask_loss`` of Faster
    R-CNN, ``validation_loss``) and ``training_loss`` as a copy of ``total_loss``."""
    tags = [t for t, pts in scalars.items() if "loss" in t.lower() and any(v != 0 for _, v in pts)]
    if "total_loss" in tags and "training_loss" in tags and scalars["total_loss"] == scalars["training_loss"]:
        tags.remove("training_loss")
    return tags


def plot_learning_curves(train: Scalars, validation: Scalars, out_path: str | os.PathLike) -> Path:
    """Losses (train solid, validation dashed) and validation AP50/AP against step."""
    fig = _figure(12, 4.2)
    ax_loss, ax_ap, ax_lr = fig.subplots(1, 3)

    loss_tags = _loss_tags(train)
    for tag in loss_tags:
        steps, vals = zip(*train[tag])
        ax_loss.plot(steps, vals, label=tag, lw=1.3, marker="." if len(steps) < 20 else None)
    for tag in _loss_tags(validation):
        steps, vals = zip(*validation[tag])
        ax_loss.plot(steps, vals, "--", marker="o", ms=3, label=f"val {tag}")
    ax_loss.set_title("losses")
    ax_loss.set_xlabel("step")
    if loss_tags or _loss_tags(validation):
        finite = [v for t in loss_tags for _, v in train[t] if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 50:
            ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=7)
    else:
        _empty_note(ax_loss, "no training summaries found")

    plotted = False
    for name, style in (("AP50", "o-"), ("AP", "s--"), ("AP75", "^:")):
        tag = _metric_tag(validation, name)
        if tag:
            steps, vals = zip(*validation[tag])
            ax_ap.plot(steps, vals, style, label=f"val {name}", ms=4)
            plotted = True
    ax_ap.set_title("validation AP")
    ax_ap.set_xlabel("step")
    ax_ap.set_ylim(-0.02, 1.02)
    if plotted:
        ax_ap.legend(fontsize=8)
        ax_ap.grid(alpha=0.3)
    else:
        _empty_note(ax_ap, "no validation summaries found")

    lr_tag = _metric_tag(train, "learning_rate")
    if lr_tag:
        steps, vals = zip(*train[lr_tag])
        ax_lr.plot(steps, vals, color="tab:purple")
    else:
        _empty_note(ax_lr, "no learning_rate summary")
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    return _save(fig, out_path)


def plot_pr_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, float | None]],
    out_path: str | os.PathLike,
    title: str = "precision-recall (IoU 0.5, VOC matching)",
) -> Path:
    """One panel per class: the raw curve and the VOC interpolated envelope, AP in the title.

    ``curves``: (class name, recall, precision, AP or None) in ranking order.
    """
    n = max(1, len(curves))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.6 * cols, 3.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, recall, precision, ap) in zip(axes, curves):
        recall = np.asarray(recall, dtype=float)
        precision = np.asarray(precision, dtype=float)
        if recall.size:
            ax.plot(recall, precision, color="tab:blue", lw=1, alpha=0.6, label="raw")
            env = np.maximum.accumulate(precision[::-1])[::-1]
            # The envelope from recall 0: precision at recall r is the best at any recall >= r.
            ax.step(np.r_[0.0, recall], np.r_[env[0], env], where="pre", color="tab:red", lw=1.6,
                    label="interpolated")
            ax.legend(fontsize=7, loc="upper right")
        else:
            _empty_note(ax, "no detections" if ap is not None else "no ground truth")
        ax.set_title(f"{name}  VOC AP50={'-' if ap is None else f'{ap:.3f}'}", fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
    for ax in axes[len(curves):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_path)


def plot_confusion_matrix(
    matrix: np.ndarray | Sequence[Sequence[int]],
    labels: Sequence[str],
    out_path: str | os.PathLike,
    title: str = "confusion matrix",
) -> Path:
    """Counts with row-normalised colour (rows = ground truth, columns = prediction)."""
    cm = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {k} labels")
    size = max(4.0, 0.55 * k + 2.5)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    sums = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, sums, out=np.zeros(cm.shape, dtype=float), where=sums > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
    fs = 9 if k <= 12 else 6
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fs,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out_path)


def plot_gallery(
    items: Iterable[tuple[str, "object", "object"]],
    out_path: str | os.PathLike,
    left_title: str = "ground truth",
    right_title: str = "predictions",
) -> Path:
    """Rows of (caption, left PIL image, right PIL image) side by side."""
    items = list(items)
    rows = max(1, len(items))
    fig = _figure(9, 3.6 * rows)
    axes = fig.subplots(rows, 2, squeeze=False)
    if not items:
        axes[0, 0].axis("off")
        axes[0, 1].axis("off")
        _empty_note(axes[0, 0], "no images")
    for r, (caption, left, right) in enumerate(items):
        for c, (img, head) in enumerate(((left, left_title), (right, right_title))):
            ax = axes[r, c]
            ax.imshow(np.asarray(img))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{head}: {caption}" if c == 0 else head, fontsize=9)
    fig.tight_layout()
    return _save(fig, out_path)
