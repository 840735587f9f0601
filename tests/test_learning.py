"""Training learns: the CPU template, from scratch on a small seeded demo set, reaches a val AP50 floor.

The other slow tests train a few steps and check files; this one guards what the README promises, so an
off-by-one in the labels or a broken learning-rate schedule fails CI. Measured (120 images, 256 px, 250
steps, seed 0; bit-identical on rerun): val AP50 0.486 and 39/48 matched boxes of the right class;
train labels shifted by one class 0.223 and 5/49; learning rate 0: 0.001. About 400 CPU s (2-core box
shared with other jobs: 4.5-8 min wall). The broken variants, by hand:

    PYTHONPATH=$PWD python tests/test_learning.py healthy|shifted|lr0
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
IMAGES, STEPS = 120, 250
FLOOR = 0.35  # val AP50: healthy 0.486, labels shifted 0.223, lr 0 0.001 (module docstring)
RIGHT_CLASS = 0.5  # share of matched val boxes given their own class: healthy 0.81, labels shifted 0.10
TRAIN = [
    "--set", "trainer.steps_per_loop=10",
    "--set", f"trainer.checkpoint_interval={STEPS}",
    "--set", "trainer.optimizer_config.warmup.linear.warmup_steps=25",
]
LR0 = ["--set", "trainer.optimizer_config.learning_rate.cosine.initial_learning_rate=0.0",
       "--set", "trainer.optimizer_config.warmup.linear.warmup_learning_rate=0.0"]


EDGE, EDGE_STEPS = "retinanet_mobilenetv2_fpn_cpu", 300


def _od(step: str, *args: str, timeout: int = 600) -> str:
    p = subprocess.run([PY, "-m", f"od.{step}", *args], check=False, cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"od.{step} {args} -> {p.returncode}\n{p.stderr[-4000:]}"
    return p.stderr


def _records(voc: Path, out: Path, label_map: Path) -> Path:
    _od("records", str(voc), "--out", str(out), "--label-map", str(label_map), "--quiet", "--workers", "1")
    return out


def make_records(tmp: Path, shifted: bool = False) -> Path:
    """Demo images -> records; ``shifted``: the train split's boxes carry the next class's id (val stays right)."""
    _od("demo", "--out", str(tmp / "voc"), "--num-images", str(IMAGES), "--seed", "0")
    good = _records(tmp / "voc", tmp / "records", tmp / "label_map.pbtxt")
    if not shifted:
        return good
    ids = {"circle": 2, "square": 3, "triangle": 1}
    wrong = tmp / "shifted.pbtxt"
    wrong.write_text("".join(f"item {{ id: {i} name: '{n}' }}\n" for n, i in ids.items()))
    bad = _records(tmp / "voc", tmp / "records_shifted", wrong)
    for f in bad.glob("train-*.tfrecord"):
        shutil.copyfile(f, good / f.name)  # same split (same seed), so report.json still describes them
    return good


def train_and_evaluate(tmp: Path, records: Path, sets: list[str] = (), config: str = "faster_rcnn_resnet18_fpn_cpu",
                       steps: int = STEPS) -> dict:
    md = tmp / "run"
    # --seed makes the FRCNN run repeat bit for bit; for RetinaNet od cannot turn on TF's op determinism
    # (its tf.data rewrite fails on that parser), so the edge run is unseeded and its floor has margin.
    seed = ["--seed", "0"] if config == "faster_rcnn_resnet18_fpn_cpu" else []
    _od("train", "--config", config, "--records", str(records), "--model-dir", str(md),
        "--steps", str(steps), *seed, "--no-eval", "--quiet", *TRAIN, *sets)
    _od("evaluate", "--model-dir", str(md), "--records", str(records), "--no-plots", "--quiet")
    return json.loads((md / "eval" / "metrics.json").read_text())


@pytest.mark.slow
def test_cpu_template_from_scratch_reaches_the_val_ap50_floor(tmp_path):
    metrics = train_and_evaluate(tmp_path, make_records(tmp_path))
    assert metrics["AP50"] >= FLOOR, {k: metrics[k] for k in ("AP50", "AP", "per_class")}
    # Rows ground truth, columns prediction (score >= 0.5, IoU >= 0.5); the last row/column is background.
    matched = [row[:-1] for row in metrics["confusion_matrix"]["matrix"][:-1]]
    right, total = sum(matched[i][i] for i in range(len(matched))), sum(map(sum, matched))
    assert total and right / total >= RIGHT_CLASS, matched


# The edge template's learning test lives in test_edge.py: its trained run is also what the TFLite tests export.


if __name__ == "__main__":
    import tempfile
    import time

    variant = sys.argv[1] if len(sys.argv) > 1 else "healthy"
    edge = len(sys.argv) > 2 and sys.argv[2] == "edge"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        rec = make_records(Path(d), shifted=variant == "shifted")
        m = train_and_evaluate(Path(d), rec, LR0 if variant == "lr0" else [],
                               *((EDGE, EDGE_STEPS) if edge else ()))
    print(f"{variant}: val AP50 {m['AP50']:.3f} (AP {m['AP']:.3f}) in {time.monotonic() - t0:.0f} s; per class",
          {c["name"]: round(c["AP50"], 3) for c in m["per_class"]}, "confusion", m["confusion_matrix"]["matrix"])
