"""od.metrics.classification and od.viz.classification: hand-computed numbers, real PNGs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from od.metrics.classification import (
    compute_classification_metrics,
    mistakes_first,
    per_class_rows,
)
from od.viz import classification as cviz
from od.viz.classification import ClassificationGalleryItem

NAMES = ["cat", "dog", "bird"]
# Six images: 0,1 right (cat), 2 cat taken for a dog (0.7), 3 right (dog),
# 4 dog taken for a cat (0.5), 5 right (bird, 0.4).
LABELS = np.array([0, 0, 0, 1, 1, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.5, 0.4, 0.1],
        [0.3, 0.3, 0.4],
    ]
)


def test_three_class_example_by_hand():
    m = compute_classification_metrics(LABELS, PROBS, NAMES)
    assert m["task"] == "classification"
    assert m["num_images"] == 6 and m["num_classes"] == 3
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] is None
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["confusion_labels"] == NAMES
    cat, dog, bird = m["per_class"]
    assert (cat["id"], cat["name"], cat["support"], cat["predicted"]) == (1, "cat", 3, 3)
    assert cat["precision"] == pytest.approx(2 / 3) and cat["recall"] == pytest.approx(2 / 3)
    assert cat["f1"] == pytest.approx(2 / 3)
    assert (dog["id"], dog["support"], dog["predicted"]) == (2, 2, 2)
    assert dog["precision"] == dog["recall"] == dog["f1"] == pytest.approx(0.5)
    assert (bird["id"], bird["precision"], bird["recall"], bird["f1"]) == (3, 1.0, 1.0, 1.0)
    for key in ("macro_precision", "macro_recall", "macro_f1"):
        assert m[key] == pytest.approx(13 / 18)
    assert {"top1", "top5", "precision", "recall", "f1", "macro", "confusion_matrix"} <= set(m["notes"])
    json.dumps(m)  # JSON-ready: plain Python numbers and lists only


def test_precision_zero_when_never_predicted_and_unused_classes_left_out_of_macro():
    names = ["a", "b", "c", "d"]
    labels = np.array([0, 1, 2])
    probs = np.array([[0.9, 0.1, 0, 0], [0.1, 0.9, 0, 0], [0.2, 0.6, 0.2, 0]])  # c taken for b
    m = compute_classification_metrics(labels, probs, names)
    a, b, c, d = m["per_class"]
    assert (a["precision"], a["recall"], a["f1"]) == (1.0, 1.0, 1.0)
    assert (c["predicted"], c["precision"], c["recall"], c["f1"]) == (0, 0.0, 0.0, 0.0)
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(0.5), 1.0, pytest.approx(2 / 3))
    assert (d["support"], d["predicted"]) == (0, 0)
    # d has neither images nor predictions: the means are over a, b, c only.
    assert m["macro_precision"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(5 / 9)


def test_class_predicted_without_support_counts_in_macro():
    m = compute_classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
    a, b = m["per_class"]
    assert (a["support"], a["predicted"], a["precision"], a["recall"]) == (2, 1, 1.0, 0.5)
    assert (b["support"], b["predicted"], b["precision"], b["recall"]) == (0, 1, 0.0, 0.0)
    assert m["macro_precision"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["macro_recall"] == pytest.approx(0.25)  # (0.5 + 0) / 2


def test_argmax_ties_go_to_the_lowest_index():
    m = compute_classification_metrics(np.array([1]), np.array([[0.5, 0.5, 0.0]]), NAMES)
    assert m["top1"] == 0.0
    assert m["confusion_matrix"][1] == [1, 0, 0]


def test_top5_with_seven_classes():
    names = [f"c{i}" for i in range(7)]
    ranked = np.array([7, 6, 5, 4, 3, 2, 1], dtype=float) / 28  # class 4 is 5th, class 5 is 6th
    uniform = np.full(7, 1 / 7)  # stable order: 0..4 are the "top 5"
    probs = np.stack([ranked, ranked, uniform, uniform, ranked])
    labels = np.array([4, 5, 4, 5, 0])
    m = compute_classification_metrics(labels, probs, names)
    assert m["top5"] == pytest.approx(3 / 5)
    assert m["top1"] == pytest.approx(1 / 5)
    assert compute_classification_metrics(np.array([0]), np.full((1, 5), 0.2), list("abcde"))["top5"] is None


@pytest.mark.parametrize(
    "labels, probs, names, message",
    [
        (np.array([[0], [1]]), np.ones((2, 3)), NAMES, "shape \\(N,\\)"),
        (np.array([0, 1]), np.ones(3), NAMES, "shape \\(N, num_classes\\)"),
        (np.array([0, 1, 2]), np.ones((2, 3)), NAMES, "3 labels but 2"),
        (np.array([0, 1]), np.ones((2, 4)), NAMES, "4 columns but there are 3 class names"),
        (np.array([0, 3]), np.ones((2, 3)), NAMES, "labels \\[3\\] are outside 0..2"),
        (np.array([-1, 0]), np.ones((2, 3)), NAMES, "labels \\[-1\\] are outside"),
        (np.array([0.5, 1.0]), np.ones((2, 3)), NAMES, "integer class indices"),
        (np.array([0, 1]), np.array([[0.5, np.nan, 0], [1, 0, 0]]), NAMES, "NaN"),
        (np.zeros(0, dtype=int), np.zeros((0, 3)), NAMES, "no images"),
        (np.array([0]), np.ones((1, 0)), [], "no classes"),
    ],
)
def test_bad_inputs_raise_clear_errors(labels, probs, names, message):
    with pytest.raises(ValueError, match=message):
        compute_classification_metrics(labels, probs, names)


def test_integer_valued_float_labels_are_accepted():
    m = compute_classification_metrics(LABELS.astype(float), PROBS, NAMES)
    assert m["top1"] == pytest.approx(4 / 6)


def test_per_class_rows():
    headers, rows = per_class_rows(compute_classification_metrics(LABELS, PROBS, NAMES))
    assert headers == ("class", "support", "precision", "recall", "f1", "top-1")
    assert rows[0] == ["cat", 3, "0.667", "0.667", "0.667", "-"]
    assert rows[-1] == ["all", 6, "0.722", "0.722", "0.722", "0.667"]
    assert len(rows) == 4
    names = [f"c{i}" for i in range(7)]
    headers7, rows7 = per_class_rows(compute_classification_metrics(np.array([6]), np.eye(7)[[0]], names))
    assert headers7[-1] == "top-5" and rows7[-1][-2:] == ["0.000", "0.000"]


def test_mistakes_first_order():
    # wrong: 2 (0.7) then 4 (0.5); right, least confident first: 5 (0.4), 1 (0.6), 0 (0.7), 3 (0.8)
    assert mistakes_first(LABELS, PROBS) == [2, 4, 5, 1, 0, 3]
    assert mistakes_first(np.zeros(0, dtype=int), np.zeros((0, 3))) == []
    with pytest.raises(ValueError):
        mistakes_first(LABELS[:3], PROBS)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def _png(path, min_w=200, min_h=150) -> Image.Image:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert img.width >= min_w and img.height >= min_h
    assert np.asarray(img.convert("L")).std() > 5  # not a blank canvas
    return img


def _jpeg(colour=(128, 128, 128), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _count(img: Image.Image, want: str) -> int:
    a = np.asarray(img).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    if want == "red":
        return int(((r > 150) & (g < 90) & (b < 90)).sum())
    return int(((g > 90) & (r < 80) & (b < 80)).sum())


def _item(true, pred, score=0.9, colour=(128, 128, 128)):
    return ClassificationGalleryItem(f"{true}.jpg", _jpeg(colour), true, pred, score)


def test_gallery_titles_red_for_mistakes_green_for_right(tmp_path):
    wrong = _png(cviz.plot_classification_gallery([_item("cat", "dog")], tmp_path / "w.png"), 150, 150)
    right = _png(cviz.plot_classification_gallery([_item("cat", "cat")], tmp_path / "r.png"), 150, 150)
    # Grey thumbnails: the only coloured pixels are the titles.
    assert _count(wrong, "red") > 20 and _count(wrong, "green") == 0
    assert _count(right, "green") > 20 and _count(right, "red") == 0


def test_gallery_grid_and_titles():
    items = [_item("cat", "cat", 0.93), _item("cat", "dog", 0.61)] + [_item("bird", "bird")] * 3
    fig = cviz.gallery_figure(items, columns=4)
    axes = fig.get_axes()
    assert len(axes) == 8  # 2 rows of 4
    shown = [ax for ax in axes if ax.axison]
    assert len(shown) == 5
    assert shown[0].get_title() == "true: cat / pred: cat (0.93)"
    assert shown[1].get_title() == "true: cat / pred: dog (0.61)"
    assert shown[0].title.get_color() == cviz.RIGHT_COLOUR
    assert shown[1].title.get_color() == cviz.WRONG_COLOUR
    assert shown[0].images[0].get_array().shape[:2] == (48, 64)


def test_gallery_empty_and_undecodable(tmp_path):
    fig = cviz.gallery_figure([])
    assert [t.get_text() for t in fig.get_axes()[0].texts] == ["no images"]
    _png(cviz.plot_classification_gallery([], tmp_path / "e.png"), 100, 50)
    bad = ClassificationGalleryItem("broken.jpg", b"not an image", "cat", "cat", 0.5)
    fig = cviz.gallery_figure([bad, _item("cat", "cat")])
    assert [t.get_text() for t in fig.get_axes()[0].texts] == ["cannot decode image"]
    assert len(fig.get_axes()[1].images) == 1


def test_curves_figure_plots_model_garden_tags():
    train = {
        "training_loss": [(s, 2.0 / (1 + s)) for s in range(0, 100, 10)],
        "accuracy": [(s, s / 100) for s in range(0, 100, 10)],
        "top_5_accuracy": [(s, min(1.0, s / 50)) for s in range(0, 100, 10)],
        "learning_rate": [(s, 0.1) for s in range(0, 100, 10)],
    }
    val = {"validation_loss": [(50, 1.0), (90, 0.8)], "accuracy": [(50, 0.4), (90, 0.6)],
           "top_5_accuracy": [(50, 0.9), (90, 1.0)]}
    ax_loss, ax_acc = cviz.curves_figure(train, val).get_axes()
    assert [ln.get_label() for ln in ax_loss.get_lines()] == ["training_loss", "val validation_loss"]
    assert [ln.get_label() for ln in ax_acc.get_lines()] == [
        "train top-1", "val top-1", "train top-5", "val top-5"]
    val_top1 = ax_acc.get_lines()[1]
    assert list(val_top1.get_xdata()) == [50, 90] and list(val_top1.get_ydata()) == [0.4, 0.6]
    assert val_top1.get_linestyle() == "--" and ax_acc.get_lines()[0].get_linestyle() == "-"
    empty = cviz.curves_figure({}, {}).get_axes()
    assert [t.get_text() for t in empty[1].texts] == ["no accuracy summaries found"]


def _write_events(model_dir):
    import tensorflow as tf
    for sub, scalars in (
        ("train", {"training_loss": [2.0, 1.5, 1.0], "accuracy": [0.3, 0.5, 0.7], "top_5_accuracy": [0.8, 0.9, 1.0]}),
        ("validation", {"validation_loss": [1.8, 1.2, 1.1], "accuracy": [0.3, 0.4, 0.6]}),
    ):
        w = tf.summary.create_file_writer(str(model_dir / sub))
        with w.as_default():
            for tag, values in scalars.items():
                for step, v in zip((10, 20, 30), values):
                    tf.summary.scalar(tag, v, step=step)
        w.close()


def test_write_classification_plots_from_event_files(tmp_path):
    model_dir = tmp_path / "run"
    _write_events(model_dir)
    m = compute_classification_metrics(LABELS, PROBS, NAMES)
    items = [_item(NAMES[t], NAMES[int(np.argmax(PROBS[i]))], float(PROBS[i].max())) for i, t in enumerate(LABELS)]
    out = tmp_path / "eval"
    written = cviz.write_classification_plots(m, out, model_dir=str(model_dir), gallery=items)
    assert set(written) == {"confusion_matrix", "learning_curves", "gallery"}
    for name in written:
        assert written[name] == str(out / f"{name}.png")
        _png(out / f"{name}.png")
    train = cviz.read_scalars(model_dir / "train")
    assert [v for _, v in train["accuracy"]] == pytest.approx([0.3, 0.5, 0.7])


def test_write_classification_plots_one_failure_keeps_the_others(tmp_path, capsys):
    m = compute_classification_metrics(LABELS, PROBS, NAMES)
    m["confusion_labels"] = ["cat", "dog"]  # does not match the 3x3 matrix: that plot fails
    out = tmp_path / "eval"
    written = cviz.write_classification_plots(m, out, model_dir=None, gallery=[_item("cat", "dog")])
    assert set(written) == {"gallery"}
    assert (out / "gallery.png").is_file() and not (out / "confusion_matrix.png").exists()
    err = capsys.readouterr().err
    assert "could not draw confusion_matrix" in err
    assert "learning_curves.png skipped" in err


def test_write_classification_plots_model_dir_without_events(tmp_path, capsys):
    m = compute_classification_metrics(LABELS, PROBS, NAMES)
    (tmp_path / "run" / "train").mkdir(parents=True)
    written = cviz.write_classification_plots(m, tmp_path / "eval", model_dir=str(tmp_path / "run"), gallery=[])
    assert set(written) == {"confusion_matrix", "gallery"}
    assert "no TensorBoard events" in capsys.readouterr().err
