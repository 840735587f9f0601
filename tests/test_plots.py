"""od.plots: every figure is a real, non-empty PNG; TensorBoard scalars read back exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from od.viz import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_w=200, min_h=150):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(data))
    assert img.width >= min_w and img.height >= min_h
    # Not a blank canvas: a figure has lines/text, so many distinct colours.
    arr = np.asarray(img.convert("L"))
    assert arr.std() > 5
    return img


def test_learning_curves_png(tmp_path):
    train = {
        "total_loss": [(s, 3.0 / (1 + s / 10)) for s in range(0, 101, 10)],
        "frcnn_cls_loss": [(s, 1.0 / (1 + s / 10)) for s in range(0, 101, 10)],
        "learning_rate": [(s, 0.01) for s in range(0, 101, 10)],
    }
    val = {"AP50": [(50, 0.4), (100, 0.8)], "AP": [(50, 0.2), (100, 0.5)], "validation_loss": [(50, 1.2), (100, 0.9)]}
    out = plots.plot_learning_curves(train, val, tmp_path / "lc.png")
    _assert_png(out)


def test_learning_curves_without_summaries_still_draws(tmp_path):
    out = plots.plot_learning_curves({}, {}, tmp_path / "lc.png")
    _assert_png(out)


def test_pr_curves_png(tmp_path):
    curves = [
        ("circle", np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), 5 / 6),
        ("square", np.array([]), np.array([]), 0.0),
        ("triangle", np.array([]), np.array([]), None),
    ]
    _assert_png(plots.plot_pr_curves(curves, tmp_path / "pr.png"))


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[5, 1, 0], [0, 3, 2], [1, 0, 0]])
    _assert_png(plots.plot_confusion_matrix(cm, ["a", "b", "background"], tmp_path / "cm.png"))
    with pytest.raises(ValueError):
        plots.plot_confusion_matrix(cm, ["a", "background"], tmp_path / "bad.png")


def test_gallery_png(tmp_path):
    a = Image.new("RGB", (120, 80), (200, 30, 30))
    b = Image.new("RGB", (120, 80), (30, 30, 200))
    out = plots.plot_gallery([("one", a, b), ("two", b, a)], tmp_path / "g.png")
    two = _assert_png(out)
    one = _assert_png(plots.plot_gallery([("one", a, b)], tmp_path / "g1.png"), min_h=100)
    assert two.height > 1.6 * one.height  # one row per image


def test_read_scalars_from_tf_summary_events(tmp_path):
    tf = pytest.importorskip("tensorflow")
    train_dir = tmp_path / "train"
    w = tf.summary.create_file_writer(str(train_dir))
    with w.as_default():
        for step in (1, 2, 3):
            tf.summary.scalar("total_loss", 1.0 / step, step=step)
            tf.summary.scalar("learning_rate", tf.constant(0.5, tf.float64), step=step)
    w.flush()
    w.close()
    # A second file (a resumed run) overrides step 3 and adds step 4.
    w = tf.summary.create_file_writer(str(train_dir), filename_suffix=".resumed")
    with w.as_default():
        tf.summary.scalar("total_loss", 0.25, step=3)
        tf.summary.scalar("total_loss", 0.2, step=4)
    w.flush()
    w.close()
    s = plots.read_scalars(train_dir)
    assert [st for st, _ in s["total_loss"]] == [1, 2, 3, 4]
    assert s["total_loss"][0][1] == pytest.approx(1.0)
    assert s["total_loss"][2][1] == pytest.approx(0.25)
    assert s["learning_rate"] == [(1, 0.5), (2, 0.5), (3, 0.5)]
    assert plots.read_scalars(tmp_path / "nope") == {}


def test_read_scalars_tolerates_truncated_file(tmp_path):
    tf = pytest.importorskip("tensorflow")
    d = tmp_path / "validation"
    w = tf.summary.create_file_writer(str(d))
    with w.as_default():
        tf.summary.scalar("AP50", 0.5, step=10)
        tf.summary.scalar("AP50", 0.7, step=20)
    w.close()
    f = next(d.glob("events.out.tfevents.*"))
    data = f.read_bytes()
    f.write_bytes(data[:-7])  # cut inside the last record
    s = plots.read_scalars(d)
    assert s["AP50"][0] == (10, pytest.approx(0.5))
