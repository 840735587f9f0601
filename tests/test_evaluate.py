"""od.metrics (the metric core) against hand-computed values, and the od.evaluate CLI end to end.

The core tests need no TensorFlow. The CLI tests build their own records, and either a tiny
SavedModel that follows the OD API output contract (fast), or a real trained model dir
(slow: ``python -m od.train`` for a few steps, then ``od.export``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from od.metrics.boxes import ImageGroundTruth, ImagePredictions, iou_matrix
from od.metrics.confusion import confusion_matrix
from od.metrics.detection import compute_metrics, public_metrics
from od.metrics.voc import voc_ap
from od.io.schema import write_model_json

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------
# Metric core (pure numpy / pycocotools)
# --------------------------------------------------------------------------------------


def gt(image_id, boxes, classes, difficult=None, w=200, h=200):
    return ImageGroundTruth(image_id, np.array(boxes, float).reshape(-1, 4), classes, difficult, w, h)


def pred(image_id, boxes, scores, classes):
    return ImagePredictions(image_id, np.array(boxes, float).reshape(-1, 4), scores, classes)


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0, 0.0]])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 4)


def test_voc_ap_all_point_interpolation():
    # Precision envelope: 1.0 up to recall 0.5, then 2/3 up to recall 1.0.
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(np.array([]), np.array([])) == 0.0


def test_perfect_predictions_give_ap_one():
    gts = [
        gt("a", [[10, 10, 60, 60], [100, 100, 180, 150]], [1, 2]),
        gt("b", [[0, 0, 40, 90], [50, 50, 190, 199], [5, 120, 30, 160]], [2, 2, 3], [False, False, True]),
        gt("c", [], []),  # a negative image
    ]
    preds = [pred(g.image_id, g.boxes, np.linspace(0.99, 0.9, len(g.boxes)), g.class_ids) for g in gts]
    m = compute_metrics(gts, preds, {1: "cat", 2: "dog", 3: "emu"})
    for key in ("AP", "AP50", "AP75", "AR100", "voc_mAP50"):
        assert m[key] == pytest.approx(1.0), key
    for c in m["per_class"]:
        assert c["AP"] == pytest.approx(1.0) and c["AP50"] == pytest.approx(1.0)
    # "emu" has only a difficult box: COCO counts it, VOC has nothing to recall.
    assert m["voc"]["per_class"] == {"cat": 1.0, "dog": 1.0, "emu": None}
    assert m["num_images"] == 3 and m["num_gt_boxes"] == 5 and m["num_difficult"] == 1
    json.dumps(public_metrics(m), allow_nan=False)  # JSON-ready


def test_voc_ap_hand_computed_tp_fp_tp():
    # 2 GT; ranked detections: TP (0.9), FP (0.8, no overlap), TP (0.7).
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1  ->  AP = 0.5*1 + 0.5*(2/3) = 0.8333...
    gts = [gt("a", [[10, 10, 50, 50], [60, 60, 100, 100]], [1, 1])]
    preds = [pred("a", [[10, 10, 50, 50], [0, 150, 20, 170], [62, 60, 100, 100]], [0.9, 0.8, 0.7], [1, 1, 1])]
    m = compute_metrics(gts, preds, ["thing"])
    assert m["voc"]["per_class"]["thing"] == pytest.approx(5 / 6)
    assert m["voc_mAP50"] == pytest.approx(5 / 6)
    pr = m["_pr_curves"][1]
    np.testing.assert_allclose(pr.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(pr.precision, [1.0, 0.5, 2 / 3])
    assert (pr.tp, pr.fp) == (2, 1)


def test_voc_ap_hand_computed_fp_first():
    # FP first: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> envelope 2/3 everywhere -> AP 2/3.
    gts = [gt("a", [[10, 10, 50, 50]], [1]), gt("b", [[60, 60, 100, 100]], [1])]
    preds = [
        pred("a", [[10, 10, 50, 50], [120, 120, 150, 150]], [0.5, 0.95], [1, 1]),
        pred("b", [[60, 60, 100, 100]], [0.4], [1]),
    ]
    m = compute_metrics(gts, preds, ["thing"])
    assert m["voc"]["per_class"]["thing"] == pytest.approx(2 / 3)


def test_voc_duplicates_and_difficult():
    # One normal and one difficult GT. Detections: on the normal box (TP), a duplicate of it
    # (FP), and one on the difficult box (ignored: neither TP nor FP).
    # Ranked: TP(0.9) FP(0.8) [ignored 0.85] -> precision 1, 1/2 at recall 1, 1 -> AP 1.0.
    gts = [gt("a", [[10, 10, 50, 50], [100, 100, 150, 150]], [1, 1], [False, True])]
    preds = [pred("a", [[10, 10, 50, 50], [101, 100, 150, 150], [11, 10, 50, 50]], [0.9, 0.85, 0.8], [1, 1, 1])]
    m = compute_metrics(gts, preds, ["thing"])
    pr = m["_pr_curves"][1]
    assert (pr.tp, pr.fp, pr.num_gt) == (1, 1, 1)
    assert m["voc"]["per_class"]["thing"] == pytest.approx(1.0)
    # Missing the only normal box: AP 0 even though the difficult one was found.
    m = compute_metrics(gts, [pred("a", [[100, 100, 150, 150]], [0.9], [1])], ["thing"])
    assert m["voc"]["per_class"]["thing"] == 0.0


def test_voc_iou_threshold_is_inclusive():
    # IoU exactly 0.5: [0,0,10,10] vs [0,0,10,20] -> 100 / 200.
    gts = [gt("a", [[0, 0, 10, 20]], [1])]
    m = compute_metrics(gts, [pred("a", [[0, 0, 10, 10]], [0.9], [1])], ["x"])
    assert m["voc"]["per_class"]["x"] == pytest.approx(1.0)


def _random_case(seed=0, n_images=25, n_classes=4):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for i in range(n_images):
        n = rng.integers(0, 5)
        xy = rng.uniform(0, 300, size=(n, 2))
        wh = rng.uniform(10, 120, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        cls = rng.integers(1, n_classes + 1, size=n)
        gts.append(gt(f"img{i}", boxes, cls, rng.random(n) < 0.1, 420, 420))
        # Jittered copies (some with the wrong class), plus random false positives.
        jit = boxes + rng.normal(0, 6, size=boxes.shape)
        pcls = np.where(rng.random(n) < 0.15, rng.integers(1, n_classes + 1, size=n), cls)
        fp_xy = rng.uniform(0, 300, size=(3, 2))
        fps = np.concatenate([fp_xy, fp_xy + rng.uniform(10, 80, size=(3, 2))], axis=1)
        preds.append(
            pred(f"img{i}", np.concatenate([jit, fps]), rng.random(n + 3),
                 np.concatenate([pcls, rng.integers(1, n_classes + 1, size=3)]))
        )
    return gts, preds


def test_per_class_ap_mean_equals_overall_ap():
    gts, preds = _random_case()
    m = compute_metrics(gts, preds, ["a", "b", "c", "d"])
    aps = [c["AP"] for c in m["per_class"]]
    assert all(a is not None for a in aps)
    assert 0.05 < m["AP"] < 0.95  # a non-trivial case
    assert abs(float(np.mean(aps)) - m["AP"]) < 1e-6
    assert m["per_class_check"]["ok"] is True
    assert abs(float(np.mean([c["AP50"] for c in m["per_class"]])) - m["AP50"]) < 1e-6
    assert abs(float(np.mean([c["AP75"] for c in m["per_class"]])) - m["AP75"]) < 1e-6
    voc = [c["voc_AP50"] for c in m["per_class"]]
    assert m["voc_mAP50"] == pytest.approx(float(np.mean(voc)))


def test_voc_ap_close_to_pycocotools_ap50_without_difficult_boxes():
    # Independent cross-check: same matching at IoU 0.5, only the interpolation differs
    # (all-point vs COCO's 101 recall points), so the two must agree closely.
    gts, preds = _random_case(seed=2, n_images=60)
    gts = [ImageGroundTruth(g.image_id, g.boxes, g.class_ids, None, g.width, g.height) for g in gts]
    m = compute_metrics(gts, preds, ["a", "b", "c", "d"])
    for c in m["per_class"]:
        assert c["voc_AP50"] == pytest.approx(c["AP50"], abs=0.02), c


def test_class_without_ground_truth_is_left_out_of_the_means():
    gts, preds = _random_case(seed=1, n_classes=2)
    m2 = compute_metrics(gts, preds, {1: "a", 2: "b"})
    m3 = compute_metrics(gts, preds, {1: "a", 2: "b", 7: "never"})
    never = m3["per_class"][-1]
    assert never["name"] == "never" and never["AP"] is None and never["voc_AP50"] is None
    assert m3["AP"] == pytest.approx(m2["AP"]) and m3["voc_mAP50"] == pytest.approx(m2["voc_mAP50"])


def test_no_predictions_at_all():
    gts = [gt("a", [[10, 10, 50, 50]], [1])]
    m = compute_metrics(gts, [], ["x"])
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["voc_mAP50"] == 0.0
    assert m["confusion_matrix"]["matrix"] == [[0, 1], [0, 0]]


def test_bad_inputs_are_named():
    gts = [gt("a", [[10, 10, 50, 50]], [1])]
    with pytest.raises(ValueError, match="ground-truth class ids \\[5\\]"):
        compute_metrics([gt("a", [[1, 1, 5, 5]], [5])], [], ["x"])
    with pytest.raises(ValueError, match="predicted class ids \\[2\\]"):
        compute_metrics(gts, [pred("a", [[1, 1, 5, 5]], [0.5], [2])], ["x"])
    with pytest.raises(ValueError, match="not in the ground truth"):
        compute_metrics(gts, [pred("zz", [[1, 1, 5, 5]], [0.5], [1])], ["x"])
    with pytest.raises(ValueError, match="duplicate image ids"):
        compute_metrics(gts + gts, [], ["x"])
    with pytest.raises(ValueError, match="3 boxes, 2 class ids"):
        ImageGroundTruth("a", np.zeros((3, 4)), [1, 1])


def test_confusion_matrix_toy_case():
    # Classes 1=cat 2=dog; index 2 = background.
    gts = [
        gt("a", [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 2]),
        gt("b", [[0, 0, 10, 10], [60, 60, 80, 80]], [2, 1], [False, True]),
    ]
    preds = [
        pred(
            "a",
            [[0, 0, 10, 10],      # cat -> cat
             [21, 20, 30, 30],    # cat predicted as dog
             [1, 0, 10, 10],      # duplicate of the first: an unmatched prediction -> background row
             [100, 100, 120, 120],  # FP dog
             [40, 40, 50, 50]],   # dog, but below the score threshold -> dog missed
            [0.9, 0.8, 0.7, 0.6, 0.3],
            [1, 2, 1, 2, 2],
        ),
        pred("b", [[0, 0, 10, 10], [60, 60, 80, 80]], [0.9, 0.9], [2, 1]),  # dog ok; the difficult cat matched: not counted
    ]
    cm = confusion_matrix(gts, {p.image_id: p for p in preds}, [1, 2], 0.5, 0.5)
    expected = np.array(
        [
            # pred: cat dog bg
            [1, 1, 0],  # gt cat
            [0, 1, 1],  # gt dog
            [1, 1, 0],  # background
        ]
    )
    np.testing.assert_array_equal(cm, expected)
    m = compute_metrics(gts, preds, ["cat", "dog"], score_threshold=0.5)
    assert m["confusion_matrix"]["matrix"] == expected.tolist()
    assert m["confusion_matrix"]["labels"] == ["cat", "dog", "background"]


def test_confusion_matrix_matches_highest_iou_first():
    # Two predictions overlap one GT; the better overlap wins regardless of order.
    gts = [gt("a", [[0, 0, 10, 10]], [1])]
    p = pred("a", [[0, 0, 10, 16], [0, 0, 10, 11]], [0.9, 0.6], [2, 1])
    cm = confusion_matrix(gts, {"a": p}, [1, 2], 0.5, 0.5)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


# --------------------------------------------------------------------------------------
# CLI with records and a SavedModel made here (fast: no training)
# --------------------------------------------------------------------------------------

CLASSES = {1: "circle", 2: "square"}


def _jpeg(w, h, seed):
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def _write_records(records_dir: Path, split="val", sizes=((160, 120), (90, 200), (128, 128)), corrupt_at=None):
    """Each image has a circle box at the central half and a square in the top-left corner;
    ``corrupt_at`` inserts a record whose JPEG bytes are garbage."""
    from od.io.example import encode_example
    from od.io.tfrecord import write_records
    from od.core import Box

    serialized = []
    for i, (w, h) in enumerate(sizes):
        boxes = [
            Box(w * 0.25, h * 0.25, w * 0.75, h * 0.75, name="circle"),
            Box(0, 0, w * 0.2, h * 0.2, name="square", difficult=(i == 2)),
        ]
        serialized.append(
            encode_example(
                image_bytes=_jpeg(w, h, i), image_format="jpeg", width=w, height=h, filename=f"img{i}.jpg",
                source_id=1000 + i, boxes=boxes, class_ids=[1, 2],
            )
        )
        if corrupt_at == i:
            serialized.append(
                encode_example(
                    image_bytes=b"\xff\xd8 not really a jpeg", image_format="jpeg", width=w, height=h,
                    filename="broken.jpg", source_id=999, boxes=boxes, class_ids=[1, 2],
                )
            )
    records_dir.mkdir(parents=True, exist_ok=True)
    write_records(records_dir / f"{split}-00000-of-00001.tfrecord", serialized)
    (records_dir / "label_map.pbtxt").write_text(
        "".join(f"item {{\n  id: {i}\n  name: '{n}'\n}}\n" for i, n in CLASSES.items())
    )


def _fake_export(export_dir: Path):
    """An OD-API-style SavedModel: finds the circle exactly, the square shifted, one FP."""
    import tensorflow as tf

    class Fake(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve(self, images):
            b = tf.shape(images)[0]
            boxes = tf.constant(
                [[0.25, 0.25, 0.75, 0.75], [0.0, 0.1, 0.2, 0.3], [0.8, 0.8, 0.95, 0.95], [0, 0, 0, 0]], tf.float32
            )
            return {
                "detection_boxes": tf.tile(boxes[None], [b, 1, 1]),
                "detection_scores": tf.tile(tf.constant([[0.95, 0.8, 0.6, 0.0]]), [b, 1]),
                "detection_classes": tf.tile(tf.constant([[1.0, 2.0, 2.0, 0.0]]), [b, 1]),
                "num_detections": tf.fill([b], 3.0),
            }

    m = Fake()
    tf.saved_model.save(m, str(export_dir / "saved_model"), signatures={"serving_default": m.serve})
    (export_dir / "label_map.pbtxt").write_text(
        "".join(f"item {{\n  id: {i}\n  name: '{n}'\n}}\n" for i, n in CLASSES.items())
    )
    write_model_json(export_dir / "model.json", {
        "classes": [{"id": i, "name": n} for i, n in CLASSES.items()],
        "checkpoint": {"path": "x/ckpt-7", "kind": "path", "step": 7},
    })


@pytest.fixture(scope="module")
def fake_export(tmp_path_factory):
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("fake")
    _write_records(root / "records")
    _fake_export(root / "exported" / "fake")
    return root


EXPECTED_KEYS = {
    "version", "created", "model_dir", "exported", "checkpoint", "step", "split", "records", "label_map",
    "classes", "num_images", "num_gt_boxes", "num_difficult", "num_predictions", "AP", "AP50", "AP75",
    "AR100", "voc_mAP50", "coco", "per_class", "per_class_check", "voc", "confusion_matrix", "notes", "seconds",
    "images_per_second", "plots",
}


def test_cli_exported_model_writes_metrics_and_plots(fake_export, capsys):
    from od.evaluate import main

    out = fake_export / "out"
    rc = main(["--model", str(fake_export / "exported" / "fake"), "--records", str(fake_export / "records"),
               "--out", str(out), "--quiet", "--save-predictions"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert EXPECTED_KEYS <= set(m)
    assert m["step"] == 7 and m["num_images"] == 3 and m["num_gt_boxes"] == 6
    per = {c["name"]: c for c in m["per_class"]}
    # Circles found exactly in every image (normalised boxes mapped to each image's own size).
    assert per["circle"]["AP"] == pytest.approx(1.0) and per["circle"]["voc_AP50"] == pytest.approx(1.0)
    # Squares: predicted at x 0.1..0.3 vs GT 0..0.2 -> IoU 1/3: never a match; plus a FP square.
    assert per["square"]["AP50"] == pytest.approx(0.0) and per["square"]["voc_AP50"] == 0.0
    assert m["AP50"] == pytest.approx(0.5)
    # Confusion: 3 circles right; 2 non-difficult squares missed; 3 shifted squares + 3 FPs.
    assert m["confusion_matrix"]["matrix"] == [[3, 0, 0], [0, 0, 2], [0, 6, 0]]
    assert {"pr_curves", "confusion_matrix", "gallery"} <= set(m["plots"])
    for name in ("pr_curves.png", "confusion_matrix.png", "gallery.png"):
        assert (out / name).stat().st_size > 5000
    preds = json.loads((out / "predictions.json").read_text())
    first = preds["images"][0]
    assert first["width"] == 160 and first["detections"][0]["box"] == [40.0, 30.0, 120.0, 90.0]
    table = capsys.readouterr().out
    assert "circle" in table and "VOC AP50" in table


def test_cli_undecodable_image_is_skipped_and_reported(fake_export, tmp_path, capsys):
    from od.evaluate import main

    _write_records(tmp_path / "records", corrupt_at=0)
    rc = main(["--model", str(fake_export / "exported" / "fake"), "--records", str(tmp_path / "records"),
               "--out", str(tmp_path / "out"), "--quiet", "--no-plots"])
    assert rc == 1
    assert "1 of 4 records: image could not be decoded" in capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["num_images"] == 3 and m["AP50"] == pytest.approx(0.5) and len(m["skipped"]) == 1


def test_cli_bad_input_is_a_usage_error(fake_export, tmp_path, capsys):
    from od.evaluate import main

    assert main([]) == 2
    rc = main(["--model", str(fake_export / "exported" / "missing"), "--records", str(fake_export / "records")])
    assert rc == 2 and "missing not found" in capsys.readouterr().err
    rc = main(["--model", str(fake_export / "exported" / "fake"), "--records", str(fake_export / "records"),
               "--split", "test", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no test records" in err and "val-00000-of-00001.tfrecord" in err
    rc = main(["--model-dir", str(tmp_path / "nothing")])
    assert rc == 2 and "pipeline.yaml" in capsys.readouterr().err


def test_help_is_fast_and_does_not_import_tensorflow():
    code = "import sys; from od import evaluate; from od.viz import plots; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    r = subprocess.run([sys.executable, "-m", "od.evaluate", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "--model" in r.stdout


# --------------------------------------------------------------------------------------
# End to end on a real (tiny) trained model dir: od.train -> od.evaluate -> od.export ->
# od.evaluate --model (slow: trains)
# --------------------------------------------------------------------------------------


def _run_cli(args, cwd, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("official.vision")
    root = tmp_path_factory.mktemp("e2e")
    _run_cli(["od.demo", "--out", str(root / "demo"), "--num-images", "24", "--seed", "3"], root)
    _run_cli(["od.records", str(root / "demo"), "--out", str(root / "records"), "--label-map",
              str(root / "records" / "label_map.pbtxt"), "--val-fraction", "0.25", "--workers", "1", "--quiet"], root)
    # Ten steps cannot learn the shapes; a zero score threshold still gives every image a full
    # set of (low-scoring) detections, so the checkpoint/export comparison below compares boxes.
    _run_cli(["od.train", "--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(root / "records"),
              "--model-dir", str(root / "runs" / "tiny"), "--steps", "10", "--quiet",
              "--set", "trainer.validation_interval=10", "--set", "trainer.checkpoint_interval=10",
              "--set", "task.model.detection_generator.pre_nms_score_threshold=0.0"], root)
    return root


def _match_detections(a: list[dict], b: list[dict], wh: tuple[int, int], tol: float = 1e-3) -> None:
    """Same detections up to order among equal scores: class equal, boxes within ``tol`` of the
    image size, scores within 1e-4."""
    assert len(a) == len(b)
    w, h = wh
    scale = np.array([w, h, w, h], float)
    unused = list(range(len(b)))
    for d in a:
        for j in unused:
            e = b[j]
            if (e["class_id"] == d["class_id"] and abs(e["score"] - d["score"]) < 1e-4
                    and np.all(np.abs(np.array(e["box"]) - np.array(d["box"])) / scale < tol)):
                unused.remove(j)
                break
        else:
            raise AssertionError(f"no counterpart for {d}")


@pytest.mark.slow
def test_end_to_end_checkpoint_and_export_agree(trained, capsys):
    from od.evaluate import main

    root = trained
    model_dir = root / "runs" / "tiny"
    assert main(["--model-dir", str(model_dir), "--save-predictions", "--quiet"]) == 0
    out = model_dir / "eval"
    m = json.loads((out / "metrics.json").read_text())
    assert EXPECTED_KEYS <= set(m)
    assert m["step"] == 10 and m["checkpoint_choice"] == "best"
    report = json.loads((root / "records" / "report.json").read_text())
    assert m["num_images"] == report["splits"]["val"]["num_images"] >= 2
    assert m["num_gt_boxes"] == report["splits"]["val"]["num_boxes"]
    assert m["num_predictions"] > 0
    # Same numbers as Model Garden's own COCO evaluator gave this checkpoint during training.
    mg = json.loads((model_dir / "best_ckpt" / "info.json").read_text())
    for ours, theirs in (("AP", "AP"), ("AP50", "AP50"), ("AR100", "ARmax100")):
        assert m[ours] == pytest.approx(mg[theirs], abs=1e-5), ours
    assert m["per_class_check"]["ok"]
    assert [c["name"] for c in m["per_class"]] == ["circle", "square", "triangle"]
    assert set(m["plots"]) == {"learning_curves", "pr_curves", "confusion_matrix", "gallery"}
    for name in m["plots"].values():
        assert Path(name).stat().st_size > 5000
    table = capsys.readouterr().out
    assert "VOC AP50" in table and "triangle" in table

    # --checkpoint latest / a bad path / a label map that does not fit the model.
    assert main(["--model-dir", str(model_dir), "--checkpoint", "latest", "--out", str(root / "latest"),
                 "--no-plots", "--quiet"]) == 0
    assert json.loads((root / "latest" / "metrics.json").read_text())["checkpoint_choice"] == "latest"
    assert main(["--model-dir", str(model_dir), "--checkpoint", str(model_dir / "ckpt-999")]) == 2
    assert "ckpt-10" in capsys.readouterr().err
    two = root / "two.pbtxt"
    two.write_text("item { id: 1 name: 'a' }\nitem { id: 2 name: 'b' }\n")
    assert main(["--model-dir", str(model_dir), "--label-map", str(two)]) == 2
    assert "num_classes=4" in capsys.readouterr().err

    # The export computes the same metrics and the same detections.
    _run_cli(["od.export", "--model-dir", str(model_dir), "--out", str(root / "exported" / "tiny")], root)
    exp_out = root / "exp_eval"
    assert main(["--model", str(root / "exported" / "tiny"), "--out", str(exp_out), "--save-predictions",
                 "--quiet"]) == 0
    e = json.loads((exp_out / "metrics.json").read_text())
    assert e["exported"] and e["step"] == 10 and e["records"] == m["records"]
    for key in ("AP", "AP50", "AP75", "AR100", "voc_mAP50", "num_predictions"):
        assert e[key] == pytest.approx(m[key], abs=1e-6), key
    assert e["confusion_matrix"]["matrix"] == m["confusion_matrix"]["matrix"]
    ck = json.loads((out / "predictions.json").read_text())["images"]
    ex = json.loads((exp_out / "predictions.json").read_text())["images"]
    assert [i["image_id"] for i in ck] == [i["image_id"] for i in ex]
    for a, b in zip(ck, ex):
        _match_detections(a["detections"], b["detections"], (a["width"], a["height"]))
