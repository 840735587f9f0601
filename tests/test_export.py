"""od.export: signatures, OD API outputs relative to the original image, model.json,
overwrite safety, agreement with the checkpoint, and TFLite against the SavedModel.

The model dirs are built here (tiny ResNet-18/0.25 Model Garden models, untrained,
laid out like od.train's) so these tests do not depend on a training run; one slow test
goes through od.train for real.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from od import export as odx
from od.model.errors import ConfigError
from od.model.model_dir import choose_checkpoint
from od.model.serving import OUTPUT_KEYS
from od.model.tflite import PAD_RGB, tflite_canvas

REPO = Path(__file__).resolve().parents[1]
NAMES = ("circle", "square", "star", "triangle")


# --------------------------------------------------------------------------- model dirs


def _params(kind: str, size: int = 256):
    from official.core import exp_factory
    from official.vision import registry_imports  # noqa: F401

    if kind == "frcnn":
        p = exp_factory.get_exp_config("fasterrcnn_resnetfpn_coco")
        m = p.task.model
        m.rpn_head.num_filters = 16
        m.detection_head.num_convs = 0
        m.detection_head.num_fcs = 2
        m.detection_head.fc_dims = 32
        m.roi_generator.test_num_proposals = 100
        m.roi_generator.test_pre_nms_top_k = 500
        m.roi_sampler.num_sampled_rois = 32
    else:
        p = exp_factory.get_exp_config("retinanet_resnetfpn_coco")
        m = p.task.model
        m.head.num_filters = 16
        m.head.num_convs = 1
        m.detection_generator.pre_nms_score_threshold = 0.3
        m.detection_generator.max_num_detections = 20
    m.backbone.resnet.model_id = 18
    m.backbone.resnet.depth_multiplier = 0.25
    m.decoder.fpn.num_filters = 16
    m.num_classes = len(NAMES) + 1
    m.input_size = [size, size, 3]
    m.norm_activation.use_sync_bn = False
    p.task.annotation_file = None
    p.task.init_checkpoint = ""
    p.runtime.mixed_precision_dtype = "float32"
    p.task.train_data.dtype = "float32"
    p.task.validation_data.dtype = "float32"
    return p


def _sharpen_retinanet(model) -> None:
    """Give an untrained RetinaNet confident, distinct detections.

    Freshly initialised, its classifier kernel is ~1e-5 and every score sits at the 0.01
    prior (nothing passes a threshold). A unit-variance kernel spreads the logits so a
    few hundred anchors score above 0.3 with clearly different scores, and TF's and
    TFLite's NMS have real work to agree on.
    """
    clf = model.head._classifier  # noqa: SLF001
    k, b = clf.get_weights()
    rng = np.random.default_rng(0)
    clf.set_weights([rng.normal(0.0, 1.0, k.shape).astype(np.float32), np.full_like(b, -4.0)])


def make_model_dir(root: Path, kind: str = "frcnn", *, best: bool = True, metrics: bool = True) -> Path:
    """A model dir as od.train writes it: pipeline.yaml, od.yaml, label map, ckpt-N, best_ckpt/."""
    import tensorflow as tf
    import tf_keras
    from official.core import task_factory

    from od.io.label_map import LabelMap, write_label_map

    root.mkdir(parents=True, exist_ok=True)
    tf_keras.utils.set_random_seed(1)
    p = _params(kind)
    model = task_factory.get_task(p.task).build_model()
    if kind == "retina":
        _sharpen_retinanet(model)
    step = tf.Variable(40, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=model, global_step=step)
    mgr = tf.train.CheckpointManager(ckpt, str(root), max_to_keep=3)
    if best:
        step.assign(30)
        tf.train.CheckpointManager(ckpt, str(root / "best_ckpt"), max_to_keep=1, checkpoint_name="best_ckpt").save()
        (root / "best_ckpt" / "info.json").write_text(json.dumps({"AP50": 0.5, "best_ckpt_global_step": 30}))
        step.assign(40)
    mgr.save(checkpoint_number=40)
    (root / "pipeline.yaml").write_text(yaml.safe_dump(p.as_dict()))
    base = "fasterrcnn_resnetfpn_coco" if kind == "frcnn" else "retinanet_resnetfpn_coco"
    (root / "od.yaml").write_text(
        yaml.safe_dump(
            {
                "base_experiment": base,
                "template": f"test_{kind}",
                "classes": [{"id": i, "name": n} for i, n in enumerate(NAMES, 1)],
            }
        )
    )
    write_label_map(root / "label_map.pbtxt", LabelMap.from_names(NAMES))
    if metrics:
        (root / "eval").mkdir(exist_ok=True)
        (root / "eval" / "metrics.json").write_text(json.dumps({"version": 1, "AP": 0.25, "AP50": 0.5, "step": 30}))
    return root


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured RGB image (shapes on a gradient), so detections are not all alike."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full_like(xx, 90)], -1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
        hh, ww = rng.integers(h // 8, h // 3), rng.integers(w // 8, w // 3)
        img[y0 : y0 + hh, x0 : x0 + ww] = rng.integers(0, 255, 3)
    return img.astype(np.uint8)


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def _run(sig, value) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: v.numpy() for k, v in sig(input_tensor=tf.constant(value)).items()}


@pytest.fixture(scope="module")
def frcnn_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("runs") / "frcnn_tiny")


@pytest.fixture(scope="module")
def frcnn_export(frcnn_dir, tmp_path_factory) -> Path:
    """One export shared by the fast tests; it replaces an old export dir (``force``)."""
    out = tmp_path_factory.mktemp("exported") / "frcnn_tiny"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    info = odx.export_model(frcnn_dir, out, force=True)
    assert info["export_dir"] == str(out)
    return out


@pytest.fixture(scope="module")
def frcnn_saved(frcnn_export):
    import tensorflow as tf

    return tf.saved_model.load(str(frcnn_export / "saved_model"))


# --------------------------------------------------------------------------- CLI errors (no TF)


def test_missing_model_dir_clear_message(tmp_path, capsys):
    rc = odx.main(["--model-dir", str(tmp_path / "runs" / "nope"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "nope" in err and "does not exist" in err
    assert not (tmp_path / "e").exists()


def test_model_dir_without_pipeline_lists_model_dirs(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "good").mkdir(parents=True)
    (runs / "good" / "pipeline.yaml").write_text("task: {}\n")
    (runs / "empty").mkdir()
    rc = odx.main(["--model-dir", str(runs / "empty"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no pipeline.yaml" in err and "good" in err


def test_refuses_to_overwrite_without_force(frcnn_dir, tmp_path, capsys):
    out = tmp_path / "exported" / "x"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    rc = odx.main(["--model-dir", str(frcnn_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "already exists" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["x"]  # no temp dirs left behind


def test_bad_checkpoint_argument(frcnn_dir, tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint"):
        choose_checkpoint(frcnn_dir, str(frcnn_dir / "ckpt-999"))


def test_best_falls_back_to_latest_with_note(tmp_path, frcnn_dir, capsys):
    import shutil

    d = tmp_path / "nobest"
    shutil.copytree(frcnn_dir, d, ignore=shutil.ignore_patterns("best_ckpt"))
    c = choose_checkpoint(d, "best")
    assert c.kind == "latest" and c.step == 40 and c.path.endswith("ckpt-40")
    assert "no best checkpoint" in capsys.readouterr().err
    best = choose_checkpoint(frcnn_dir, "best")
    assert best.kind == "best" and best.step == 30


def test_tflite_for_faster_rcnn_says_which_templates_can(frcnn_dir, tmp_path):
    out = tmp_path / "e"
    with pytest.raises(odx.ExportError) as e:
        odx.export_model(frcnn_dir, out, tflite="float32")
    msg = str(e.value)
    assert "Faster R-CNN" in msg and "retinanet_resnet50_fpn" in msg
    assert not out.exists()


# --------------------------------------------------------------------------- the export


def test_export_layout_and_force_replaced_old(frcnn_export, frcnn_dir):
    names = sorted(p.name for p in frcnn_export.iterdir())
    assert names == ["label_map.pbtxt", "model.json", "pipeline.yaml", "saved_model"]
    assert (frcnn_export / "label_map.pbtxt").read_bytes() == (frcnn_dir / "label_map.pbtxt").read_bytes()
    assert (frcnn_export / "pipeline.yaml").read_bytes() == (frcnn_dir / "pipeline.yaml").read_bytes()
    assert not [p for p in frcnn_export.parent.iterdir() if p.name.startswith(".")]


def test_model_json(frcnn_export, frcnn_dir):
    import tensorflow as tf

    info = json.loads((frcnn_export / "model.json").read_text())
    assert info["classes"] == [{"id": i, "name": n} for i, n in enumerate(NAMES, 1)]
    assert info["num_classes"] == 4
    assert info["input_size"] == [256, 256]
    assert info["architecture"] == "faster_rcnn"
    assert info["checkpoint"]["kind"] == "best" and info["checkpoint"]["step"] == 30
    assert Path(info["checkpoint"]["path"]).parent == (frcnn_dir / "best_ckpt").resolve()
    assert info["val_metrics"] == {"AP": 0.25, "AP50": 0.5, "step": 30}
    assert info["best_checkpoint_eval"]["best_ckpt_global_step"] == 30
    assert info["versions"]["tensorflow"] == tf.__version__ and info["versions"]["od"]
    assert set(info["signatures"]) == {"serving_default", "image_bytes", "tf_example"}
    assert {s["input"] for s in info["signatures"].values()} == {"input_tensor"}
    assert info["signatures"]["serving_default"]["dtype"] == "uint8"
    assert info["tflite"] is None


def test_signatures_inputs_outputs(frcnn_saved, frcnn_export):
    import tensorflow as tf

    info = json.loads((frcnn_export / "model.json").read_text())
    sigs = frcnn_saved.signatures
    assert set(sigs) == {"serving_default", "image_bytes", "tf_example"}
    for name, sig in sigs.items():
        _, kwargs = sig.structured_input_signature
        assert list(kwargs) == [info["signatures"][name]["input"]]
        spec = kwargs["input_tensor"]
        if name == "serving_default":
            assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
        else:
            assert spec.dtype == tf.string and spec.shape.as_list() == [None]
        outs = sig.structured_outputs
        assert set(outs) == set(OUTPUT_KEYS)
        assert all(v.dtype == tf.float32 for v in outs.values())

    img = _image(120, 200)
    batch = np.stack([img, _image(120, 200, seed=1)])
    out = _run(sigs["serving_default"], batch)
    n = info["max_detections"]
    assert out["detection_boxes"].shape == (2, n, 4)
    assert out["detection_scores"].shape == (2, n)
    assert out["detection_classes"].shape == (2, n)
    assert out["num_detections"].shape == (2,)
    k = int(out["num_detections"][0])
    assert k > 0
    assert np.all(out["detection_boxes"] >= 0) and np.all(out["detection_boxes"] <= 1)
    assert set(out["detection_classes"][0, :k].astype(int)) <= {1, 2, 3, 4}
    assert np.all(np.diff(out["detection_scores"][0, :k]) <= 1e-6)  # sorted high to low

    # The same pixels through the other two signatures give the same detections (PNG is lossless).
    from od.io.example import encode_example

    png = _encode(img, "PNG")
    by_bytes = _run(sigs["image_bytes"], [png])
    ex = encode_example(
        image_bytes=png, image_format="png", width=200, height=120, filename="a.png", source_id=1, boxes=[], class_ids=[]
    )
    by_example = _run(sigs["tf_example"], [ex])
    for other in (by_bytes, by_example):
        assert other["num_detections"][0] == out["num_detections"][0]
        np.testing.assert_allclose(other["detection_boxes"][0], out["detection_boxes"][0], atol=1e-5)
        np.testing.assert_array_equal(other["detection_classes"][0], out["detection_classes"][0])
    jpg = _run(sigs["image_bytes"], [_encode(img, "JPEG")])
    assert jpg["detection_boxes"].shape == (1, n, 4)


@functools.lru_cache(maxsize=2)
def _restored_model(model_dir: str, ckpt_path: str):
    """(params, Keras model) as od.train builds it, weights read from the checkpoint."""
    import tensorflow as tf
    from official.core import task_factory

    from od.model.model_dir import load_model_dir

    params, _ = load_model_dir(model_dir)
    model = task_factory.get_task(params.task).build_model()
    tf.train.Checkpoint(model=model).read(ckpt_path).expect_partial()
    return params, model


def _checkpoint_detections(model_dir: Path, ckpt_path: str, image: np.ndarray) -> dict[str, np.ndarray]:
    """The restored Keras model run in-process with Model Garden's eval preprocessing,
    then boxes converted by hand: model-input pixels / scale / original size."""
    import tensorflow as tf
    from official.vision.ops import anchor, preprocess_ops

    params, model = _restored_model(str(model_dir), ckpt_path)
    m = params.task.model
    x = preprocess_ops.normalize_image(
        tf.cast(image, tf.float32), offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB
    )
    size = list(m.input_size[:2])
    padded = preprocess_ops.compute_padded_size(size, 2**m.max_level)
    x, info = preprocess_ops.resize_and_crop_image(
        x, size, padded_size=padded, aug_scale_min=1.0, aug_scale_max=1.0, keep_aspect_ratio=True
    )
    anchors = anchor.build_anchor_generator(
        min_level=m.min_level,
        max_level=m.max_level,
        num_scales=m.anchor.num_scales,
        aspect_ratios=m.anchor.aspect_ratios,
        anchor_size=m.anchor.anchor_size,
    )(image_size=padded)
    out = model(
        images=x[None],
        image_shape=info[None, 1, :],
        anchor_boxes={k: v[None] for k, v in anchors.items()},
        training=False,
    )
    info = info.numpy()
    h, w = image.shape[:2]
    sy, sx = info[2]
    boxes = out["detection_boxes"].numpy()[0] / np.array([sy, sx, sy, sx]) / np.array([h, w, h, w])
    return {
        "detection_boxes": np.clip(boxes, 0, 1),
        "detection_scores": out["detection_scores"].numpy()[0],
        "detection_classes": out["detection_classes"].numpy()[0],
        "num_detections": int(out["num_detections"].numpy()[0]),
    }


@pytest.mark.parametrize("hw", [(256, 256), (150, 400), (300, 120)])
def test_export_agrees_with_checkpoint_on_original_image_frame(frcnn_saved, frcnn_export, frcnn_dir, hw):
    """Boxes normalised to the ORIGINAL (non-square) image, equal to the checkpoint's within 1e-3."""
    info = json.loads((frcnn_export / "model.json").read_text())
    img = _image(*hw, seed=hw[0])
    got = _run(frcnn_saved.signatures["serving_default"], img[None])
    want = _checkpoint_detections(frcnn_dir, info["checkpoint"]["path"], img)
    k = int(got["num_detections"][0])
    assert k == want["num_detections"] and k > 0
    top = min(k, 20)
    np.testing.assert_allclose(got["detection_boxes"][0, :top], want["detection_boxes"][:top], atol=1e-3)
    np.testing.assert_array_equal(got["detection_classes"][0, :top], want["detection_classes"][:top])
    np.testing.assert_allclose(got["detection_scores"][0, :top], want["detection_scores"][:top], atol=1e-4)


def test_checkpoint_and_export_detect_the_same_through_od_model_inference(frcnn_export, frcnn_dir):
    """evaluate's checkpoint path and detect's export path are one code path: same detections."""
    from od.model.inference import Detector, load_detector
    from od.model.model_dir import load_model_dir

    info = json.loads((frcnn_export / "model.json").read_text())
    params, _ = load_model_dir(frcnn_dir)
    names = dict(enumerate(NAMES, 1))
    from_ckpt = Detector.from_checkpoint(params, info["checkpoint"]["path"], names)
    from_export = load_detector(str(frcnn_export))
    for hw in [(256, 256), (150, 400)]:
        img = _image(*hw, seed=7)
        a, b = from_ckpt.raw(img), from_export.raw(img)
        k = int(np.asarray(a["num_detections"]).reshape(-1)[0])
        assert k == int(np.asarray(b["num_detections"]).reshape(-1)[0]) and k > 0
        np.testing.assert_allclose(a["detection_boxes"][:k], b["detection_boxes"][:k], atol=1e-5)
        np.testing.assert_array_equal(a["detection_classes"][:k], b["detection_classes"][:k])
        np.testing.assert_allclose(a["detection_scores"][:k], b["detection_scores"][:k], atol=1e-5)
        dets = from_ckpt.postprocess(a, hw[1], hw[0], score_threshold=0.0)
        assert len(dets) == k and all(0 <= d.box.xmax <= hw[1] and 0 <= d.box.ymax <= hw[0] for d in dets)


def test_tflite_canvas_letterbox():
    img = np.full((100, 200, 3), 7, np.uint8)
    canvas, scale = tflite_canvas(img, (256, 256), (256, 256))
    assert canvas.shape == (256, 256, 3) and canvas.dtype == np.uint8
    assert scale == pytest.approx(1.28)
    assert np.all(canvas[:128, :256] == 7)
    assert np.all(canvas[128:, :] == PAD_RGB)


# --------------------------------------------------------------------------- TFLite (slow)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # older environments
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    return it.get_signature_runner("serving_default")


@pytest.fixture(scope="module")
def retina_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("runs") / "retina_tiny", "retina")


@pytest.mark.slow
def test_tflite_float32_matches_saved_model(retina_dir, tmp_path):
    import tensorflow as tf

    out = tmp_path / "retina"
    info = odx.export_model(retina_dir, out, tflite="float32")
    assert info["tflite"]["file"] == "model.tflite" and (out / "model.tflite").stat().st_size > 0
    saved = tf.saved_model.load(str(out / "saved_model"))
    run = _interpreter(out / "model.tflite")
    hc, wc = info["padded_input_size"]
    checked = 0
    for seed in range(3):
        img = _image(hc, wc, seed=seed)  # already canvas-sized: no resize on either side
        sm = _run(saved.signatures["serving_default"], img[None])
        tl = run(input_tensor=img[None])
        k = int(sm["num_detections"][0])
        assert k > 0, "the sharpened test model should detect something"
        # The top detections agree exactly; deep in the list the two NMS implementations
        # may keep a different low-scoring box (Model Garden clips boxes before NMS).
        top = min(k, 10)
        np.testing.assert_allclose(tl["detection_scores"][0, :top], sm["detection_scores"][0, :top], atol=1e-3)
        np.testing.assert_array_equal(tl["detection_classes"][0, :top], sm["detection_classes"][0, :top])
        np.testing.assert_allclose(tl["detection_boxes"][0, :top], sm["detection_boxes"][0, :top], atol=1e-3)
        kt = int(tl["num_detections"][0])
        matched = sum(
            any(
                tl["detection_classes"][0, j] == sm["detection_classes"][0, i]
                and _iou(tl["detection_boxes"][0, j], sm["detection_boxes"][0, i]) > 0.95
                for j in range(kt)
            )
            for i in range(k)
        )
        assert matched >= 0.8 * k
        checked += top
    assert checked >= 3


# float16 and int8 (calibrated on records) are tested on the edge template's trained run: tests/test_edge.py


@pytest.mark.slow
def test_int8_without_records_is_a_clear_error(retina_dir, tmp_path):
    with pytest.raises(odx.ExportError, match="calibration-records"):
        odx.export_model(retina_dir, tmp_path / "e", tflite="int8")
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- end to end (slow)


TINY_TRAIN = [
    "--set", "task.model.input_size=[128,128,3]",
    "--set", "task.train_data.global_batch_size=2",
    "--set", "task.validation_data.global_batch_size=4",
    "--set", "trainer.steps_per_loop=5",
    "--set", "trainer.summary_interval=5",
    "--set", "trainer.checkpoint_interval=5",
    "--set", "trainer.validation_interval=10",
    "--set", "trainer.optimizer_config.warmup.linear.warmup_steps=5",
]  # fmt: skip


@pytest.mark.slow
def test_cli_on_a_few_step_od_train_run(tmp_path):
    """od.demo -> od.records -> od.train (10 steps) -> od.export CLI; the export agrees with
    the best checkpoint on val images and refuses a second export without --force."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    r = run("od.demo", "--out", "voc", "--num-images", "24")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("od.records", "voc", "--out", "records", "--label-map", "label_map.pbtxt", "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(
        "od.train", "--config", str(REPO / "pipeline_configs" / "faster_rcnn_resnet18_fpn_cpu.yaml"),
        "--records", "records", "--model-dir", "runs/tiny", "--steps", "10", "--quiet", *TINY_TRAIN,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("od.export", "--model-dir", "runs/tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported/tiny" in r.stdout
    out = tmp_path / "exported" / "tiny"
    info = json.loads((out / "model.json").read_text())
    assert info["checkpoint"]["kind"] == "best" and info["checkpoint"]["step"] == 10
    assert [c["name"] for c in info["classes"]] and info["input_size"] == [128, 128]

    import tensorflow as tf

    from od.io.example import decode_example
    from od.io.tfrecord import iter_records

    saved = tf.saved_model.load(str(out / "saved_model"))
    vals = sorted((tmp_path / "records").glob("val-*.tfrecord"))
    for i, rec in enumerate(iter_records(vals)):
        if i == 3:
            break
        ex = decode_example(rec)
        # TF's JPEG decoder, as the tf_example signature and Model Garden's input pipeline use
        # (PIL's decoder differs by a few levels per pixel).
        img = tf.io.decode_image(ex.image_bytes, channels=3).numpy()
        got = _run(saved.signatures["serving_default"], img[None])
        by_example = _run(saved.signatures["tf_example"], [rec])
        np.testing.assert_allclose(by_example["detection_scores"], got["detection_scores"], atol=1e-5)
        want = _checkpoint_detections(tmp_path / "runs" / "tiny", info["checkpoint"]["path"], img)
        k = int(got["num_detections"][0])
        assert k == want["num_detections"]
        np.testing.assert_allclose(got["detection_boxes"][0, :k], want["detection_boxes"][:k], atol=1e-3)
        np.testing.assert_array_equal(got["detection_classes"][0, :k], want["detection_classes"][:k])

    r = run("od.export", "--model-dir", "runs/tiny")
    assert r.returncode == 2 and "already exists" in r.stderr
