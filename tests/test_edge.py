"""The edge template (RetinaNet MobileNetV2) trains, exports to every TFLite variant, and od.detect runs the
.tflite file with the same outputs as the SavedModel.

Tolerances (measured on this fixture's 6 generated images, the top 10 boxes of each): float32 matches the
SavedModel to 1e-3 in score and < 0.5 px in box corners; float16 to 0.01 and 1 px; int8, calibrated on
the records, keeps the same boxes at IoU >= 0.7 with scores within 0.15 (see INT8_* below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
EDGE = "retinanet_mobilenetv2_fpn_cpu"
# float32 / float16 / int8 against the SavedModel: (score tolerance, box tolerance in px, minimum IoU)
TOLERANCE = {"float32": (1e-3, 0.5, 0.99), "float16": (0.01, 1.0, 0.97), "int8": (0.15, 12.0, 0.7)}


def _od(step: str, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([PY, "-m", f"od.{step}", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, f"od.{step} {args} -> {p.returncode}\n{p.stderr[-4000:]}"
    return p


# --------------------------------------------------------------------------- choosing the runtime (fast)


def _fake_export(d: Path, tflite: bool) -> Path:
    (d / "saved_model").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"")
    (d / "model.json").write_text(json.dumps({"format": "od-export", "format_version": 1, "input_size": [256, 256]}))
    if tflite:
        (d / "model.tflite").write_bytes(b"TFL3")
    return d


def test_auto_runs_the_tflite_file_when_the_export_has_one(tmp_path):
    from od.model.source import resolve_model

    with_t = resolve_model(str(_fake_export(tmp_path / "a", tflite=True)))
    without = resolve_model(str(_fake_export(tmp_path / "b", tflite=False)))
    assert with_t.runtime("auto") == "tflite" and with_t.runtime("savedmodel") == "savedmodel"
    assert without.runtime("auto") == "savedmodel"
    direct = resolve_model(str(tmp_path / "a" / "model.tflite"))
    assert direct.runtime("auto") == "tflite" and direct.export_dir == tmp_path / "a"


def test_runtime_tflite_without_a_tflite_file_is_a_usage_error(tmp_path):
    exp = _fake_export(tmp_path / "exp", tflite=False)
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(img)
    p = _od("detect", str(img), "--model", str(exp), "--runtime", "tflite", "--out", str(tmp_path / "o"), check=False)
    assert p.returncode == 2, p.stderr
    assert "od: error:" in p.stderr and "model.tflite" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_a_tflite_file_without_its_model_json_is_named(tmp_path):
    f = tmp_path / "loose.tflite"
    f.write_bytes(b"TFL3")
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(img)
    p = _od("detect", str(img), "--model", str(f), "--out", str(tmp_path / "o"), check=False)
    assert p.returncode == 2 and "model.json" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- train, export, detect (slow)


def _sharpen(model_dir: Path) -> None:
    """Save a checkpoint whose classifier gives confident, distinct scores (ten steps from scratch sit at the
    0.01 prior, below every threshold), so the runtimes have real boxes to agree on."""
    import tensorflow as tf
    from official.core import task_factory

    from od.model.model_dir import load_model_dir

    params, _ = load_model_dir(model_dir)
    model = task_factory.get_task(params.task).build_model()
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=model, global_step=step)
    ckpt.read(tf.train.latest_checkpoint(str(model_dir))).expect_partial()
    clf = model.head._classifier  # noqa: SLF001
    rng = np.random.default_rng(0)
    ws = clf.get_weights()
    clf.set_weights([rng.normal(0.0, 1.0, w.shape).astype(np.float32) for w in ws[:-1]] + [np.full_like(ws[-1], -4.0)])
    step.assign(step + 1)
    tf.train.CheckpointManager(ckpt, str(model_dir), max_to_keep=3).save(checkpoint_number=int(step.numpy()))


@pytest.fixture(scope="module")
def edge_exports(tmp_path_factory) -> dict:
    from od import export as odx

    tmp = tmp_path_factory.mktemp("edge")
    _od("demo", "--out", str(tmp / "voc"), "--num-images", "24", "--seed", "0")
    _od("records", str(tmp / "voc"), "--out", str(tmp / "records"), "--label-map", str(tmp / "lm.pbtxt"), "--quiet")
    md = tmp / "run"
    _od("train", "--config", EDGE, "--records", str(tmp / "records"), "--model-dir", str(md), "--steps", "10",
        "--no-eval", "--quiet", "--set", "trainer.steps_per_loop=5", "--set", "trainer.checkpoint_interval=10")
    _sharpen(md)
    exports = {}
    for mode in ("float32", "float16", "int8"):
        info = odx.export_model(md, tmp / f"exp_{mode}", checkpoint="latest", tflite=mode,
                                calibration_records=str(tmp / "records"), calibration_images=16)
        exports[mode] = info
    return {"tmp": tmp, "exports": exports, "images": sorted((tmp / "voc").rglob("*.jpg"))[:6]}


@pytest.mark.slow
def test_edge_template_trains_and_exports_every_tflite_variant(edge_exports):
    sizes = {}
    for mode, info in edge_exports["exports"].items():
        d = Path(info["export_dir"])
        assert info["architecture"] == "retinanet" and info["template"] == EDGE
        assert info["tflite"]["mode"] == mode and (d / "saved_model" / "saved_model.pb").is_file()
        sizes[mode] = (d / "model.tflite").stat().st_size
        assert json.loads((d / "model.json").read_text())["tflite"]["mode"] == mode
    assert edge_exports["exports"]["int8"]["tflite"]["calibration_images"] == 16
    # float16 weights are half of float32's; int8 smaller still
    assert sizes["int8"] < sizes["float16"] < sizes["float32"], sizes


def _detect(images, export: Path, runtime: str, out: Path) -> dict[str, list[dict]]:
    _od("detect", *map(str, images), "--model", str(export), "--runtime", runtime, "--out", str(out), "--save-json",
        "--score-threshold", "0.3", "--max-detections", "10", "--quiet")
    data = json.loads((out / "detections.json").read_text())
    return {Path(i["image"]).name: i["detections"] for i in data["images"]}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _xyxy(d: dict) -> list[float]:
    b = d["box_px"]
    return [b["xmin"], b["ymin"], b["xmax"], b["ymax"]]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float32", "float16", "int8"])
def test_detect_on_tflite_draws_the_boxes_of_the_saved_model(edge_exports, mode):
    tmp, images = edge_exports["tmp"], edge_exports["images"]
    export = Path(edge_exports["exports"][mode]["export_dir"])
    sm = _detect(images, export, "savedmodel", tmp / f"det_sm_{mode}")
    tl = _detect(images, export, "tflite", tmp / f"det_tl_{mode}")
    score_tol, px_tol, min_iou = TOLERANCE[mode]
    assert sum(map(len, sm.values())) >= 6, "the sharpened model should detect something"
    matched = total = 0
    worst_px = worst_score = 0.0
    for name, dets in sm.items():
        for d in dets:
            total += 1
            cands = [t for t in tl[name] if t["class_id"] == d["class_id"]]
            best = max(cands, key=lambda t: _iou(_xyxy(t), _xyxy(d)), default=None)
            if best is None or _iou(_xyxy(best), _xyxy(d)) < min_iou or abs(best["score"] - d["score"]) > score_tol:
                continue
            matched += 1
            worst_px = max(worst_px, max(abs(p - q) for p, q in zip(_xyxy(best), _xyxy(d))))
            worst_score = max(worst_score, abs(best["score"] - d["score"]))
    print(f"{mode}: {matched}/{total} matched, worst corner {worst_px:.2f} px, worst score {worst_score:.4f}")
    # boxes near the 0.3 threshold or the top-10 cut may differ; the rest must match
    assert matched >= 0.8 * total, (matched, total)
    assert worst_px <= px_tol
    # the drawn images are written for both runtimes, at the original size
    for name in sm:
        a, b = Image.open(tmp / f"det_sm_{mode}" / name), Image.open(tmp / f"det_tl_{mode}" / name)
        assert a.size == b.size


@pytest.mark.slow
def test_evaluate_measures_the_tflite_file_like_the_saved_model(edge_exports):
    """od.evaluate --model on each runtime of one float32 export: the same AP (parity), each in its own folder."""
    tmp = edge_exports["tmp"]
    export = Path(edge_exports["exports"]["float32"]["export_dir"])
    got = {}
    for rt in ("savedmodel", "tflite"):
        _od("evaluate", "--model", str(export), "--runtime", rt, "--records", str(tmp / "records"), "--no-plots",
            "--quiet")
        got[rt] = json.loads((export / ("eval-tflite" if rt == "tflite" else "eval") / "metrics.json").read_text())
        assert got[rt]["runtime"] == rt
    for k in ("AP", "AP50", "AP75"):
        assert abs(got["tflite"][k] - got["savedmodel"][k]) <= 0.01, (k, got["tflite"][k], got["savedmodel"][k])
