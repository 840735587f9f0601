"""The PNGs of a classification evaluation: learning curves, confusion matrix, gallery.

Reuses :mod:`od.viz.plots` (figures on the Agg canvas, atomic writes, the TensorBoard reader)
so classification plots look and behave like the detection ones; no TensorFlow import.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from od.console import warn
from od.viz.plots import (
    Scalars,
    _empty_note,
    _figure,
    _loss_tags,
    _metric_tag,
    _save,
    plot_confusion_matrix,
    read_scalars,
)

RIGHT_COLOUR = "#008000"
WRONG_COLOUR = "#d00000"
THUMBNAIL_PX = 256  # longest side: keeps a big gallery's figure light

# Model Garden names the top-k metric after its k (``evaluation.top_k``, 5 by default).
_TOP_K_TAG = re.compile(r"(?:^|/)top_(\d+)_accuracy$")


@dataclass(frozen=True)
class ClassificationGalleryItem:
    """One val image for the gallery: what it is, what the model said, how sure it was."""

    caption: str
    image_bytes: bytes
    true_name: str
    predicted_name: str
    score: float

    @property
    def correct(self) -> bool:
        return self.true_name == self.predicted_name


def _top_k_tags(scalars: Scalars) -> dict[int, str]:
    """k -> tag of each top-k accuracy series."""
    found: dict[int, str] = {}
    for tag in scalars:
        m = _TOP_K_TAG.search(tag)
        if m:
            found.setdefault(int(m.group(1)), tag)
    return found


def _accuracy_series(train: Scalars, validation: Scalars) -> list[tuple[str, str | None, str | None]]:
    """(shown name, train tag, validation tag): top-1 ``accuracy`` first, then each top-k."""
    series = [("top-1", _metric_tag(train, "accuracy"), _metric_tag(validation, "accuracy"))]
    train_k, val_k = _top_k_tags(train), _top_k_tags(validation)
    for k in sorted(set(train_k) | set(val_k)):
        series.append((f"top-{k}", train_k.get(k), val_k.get(k)))
    return series


def curves_figure(train: Scalars, validation: Scalars):
    """The learning curves' matplotlib Figure: a loss panel and an accuracy panel."""
    fig = _figure(10, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)

    train_losses = _loss_tags(train)
    val_losses = _loss_tags(validation)
    for tag in train_losses:
        steps, vals = zip(*train[tag])
        ax_loss.plot(steps, vals, "-", lw=1.3, label=tag, marker="." if len(steps) < 20 else None)
    for tag in val_losses:
        steps, vals = zip(*validation[tag])
        ax_loss.plot(steps, vals, "--", marker="o", ms=3, label=f"val {tag}")
    ax_loss.set_title("loss")
    ax_loss.set_xlabel("step")
    if train_losses or val_losses:
        finite = [v for t in train_losses for _, v in train[t] if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 50:
            ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=7)
        ax_loss.grid(alpha=0.3)
    else:
        _empty_note(ax_loss, "no loss summaries found")

    plotted = False
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
    for i, (shown, train_tag, val_tag) in enumerate(_accuracy_series(train, validation)):
        colour = colours[i % len(colours)]
        if train_tag:
            steps, vals = zip(*train[train_tag])
            ax_acc.plot(steps, vals, "-", color=colour, lw=1.3, label=f"train {shown}",
                        marker="." if len(steps) < 20 else None)
            plotted = True
        if val_tag:
            steps, vals = zip(*validation[val_tag])
            ax_acc.plot(steps, vals, "--", color=colour, marker="o", ms=4, label=f"val {shown}")
            plotted = True
    ax_acc.set_title("accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylim(-0.02, 1.02)
    if plotted:
        ax_acc.legend(fontsize=8)
        ax_acc.grid(alpha=0.3)
    else:
        _empty_note(ax_acc, "no accuracy summaries found")
    fig.tight_layout()
    return fig


def plot_classification_curves(train: Scalars, validation: Scalars, out_path: str | os.PathLike) -> Path:
    """Loss and accuracy (top-1, top-k) against step; train solid, validation dashed with markers."""
    return _save(curves_figure(train, validation), out_path)


def _thumbnail(image_bytes: bytes) -> np.ndarray | None:
    """The image as a small RGB array, or None when it does not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image_bytes)) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            return np.asarray(im)
    except Exception:  # noqa: BLE001 - one bad image gets a note, the gallery still draws
        return None


def gallery_figure(items: Sequence[ClassificationGalleryItem], columns: int = 4):
    """The gallery's matplotlib Figure (one titled axes per item; unused grid cells hidden)."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    items = list(items)
    if not items:
        fig = _figure(4, 2)
        ax = fig.subplots()
        ax.axis("off")
        _empty_note(ax, "no images")
        return fig
    cols = min(columns, len(items))
    rows = math.ceil(len(items) / cols)
    fig = _figure(3.2 * cols, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, it in zip(axes, items):
        thumb = _thumbnail(it.image_bytes)
        if thumb is None:
            _empty_note(ax, "cannot decode image")
        else:
            ax.imshow(thumb)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(it.caption, fontsize=7)
        ax.set_title(
            f"true: {it.true_name} / pred: {it.predicted_name} ({it.score:.2f})",
            fontsize=8, color=RIGHT_COLOUR if it.correct else WRONG_COLOUR,
        )
    for ax in axes[len(items):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_classification_gallery(
    items: Sequence[ClassificationGalleryItem], out_path: str | os.PathLike, columns: int = 4
) -> Path:
    """A grid of thumbnails titled ``true: X / pred: Y (score)``: mistakes red, right ones green."""
    return _save(gallery_figure(items, columns), out_path)


def write_classification_plots(
    metrics: Mapping[str, Any],
    out_dir: Path,
    *,
    model_dir: str | None,
    gallery: Sequence[ClassificationGalleryItem],
) -> dict[str, str]:
    """confusion_matrix.png, learning_curves.png, gallery.png; a plot that fails is reported and
    the others still get written. Returns {name: path} of those written."""
    out_dir = Path(out_dir)
    written: dict[str, str] = {}

    def attempt(name: str, fn) -> None:
        try:
            path = fn()
        except Exception as e:  # noqa: BLE001 - one broken plot must not lose the metrics
            warn(f"could not draw {name}: {type(e).__name__}: {e}")
            return
        if path is not None:
            written[name] = str(path)

    attempt(
        "confusion_matrix",
        lambda: plot_confusion_matrix(
            metrics["confusion_matrix"], metrics["confusion_labels"], out_dir / "confusion_matrix.png",
            title="confusion matrix (top-1)",
        ),
    )

    def learning_curves() -> Path | None:
        train = read_scalars(os.path.join(model_dir, "train"))
        validation = read_scalars(os.path.join(model_dir, "validation"))
        if not train and not validation:
            warn(f"no TensorBoard events in {model_dir}/train or {model_dir}/validation: "
                 "learning_curves.png skipped")
            return None
        return plot_classification_curves(train, validation, out_dir / "learning_curves.png")

    if model_dir is None:
        warn("no model dir given: learning_curves.png skipped")
    else:
        attempt("learning_curves", learning_curves)
    attempt("gallery", lambda: plot_classification_gallery(gallery, out_dir / "gallery.png"))
    return written
