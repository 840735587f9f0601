"""od.train end to end on a tiny demo: outputs, resume after SIGKILL, extend, fine-tune with other classes.

All slow (each run builds a Faster R-CNN graph); sized tiny (128 px, batch 2, tens of steps).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = [
    "--set", "task.model.input_size=[128,128,3]",
    "--set", "task.train_data.global_batch_size=2",
    "--set", "task.validation_data.global_batch_size=4",
    "--set", "trainer.steps_per_loop=5",
    "--set", "trainer.summary_interval=5",
    "--set", "trainer.checkpoint_interval=5",
    "--set", "trainer.validation_interval=20",
    "--set", "trainer.optimizer_config.warmup.linear.warmup_steps=5",
]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def _run(args, timeout=300, check=True):
    p = subprocess.run([PY, "-m", "od.train", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"od.train {args} -> {p.returncode}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    subprocess.run([PY, "-m", "od.demo", "--out", str(d / "voc"), "--num-images", "30"], cwd=REPO, env=ENV,
                   check=True, capture_output=True, timeout=120)
    subprocess.run([PY, "-m", "od.records", str(d / "voc"), "--out", str(d / "records"), "--label-map",
                    str(d / "label_map.pbtxt"), "--quiet", "--workers", "1"], cwd=REPO, env=ENV, check=True,
                   capture_output=True, timeout=120)
    return d


@pytest.fixture(scope="module")
def trained(demo_records):
    md = demo_records / "run"
    p = _run(["--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(demo_records / "records"),
              "--model-dir", str(md), "--steps", "20", *TINY])
    return md, p


@pytest.mark.slow
def test_short_run_writes_checkpoints_summaries_and_configs(trained):
    md, p = trained
    assert (md / "ckpt-20.index").is_file()
    assert list((md / "train").glob("events.out.tfevents.*")), "no TensorBoard train summaries"
    assert list((md / "validation").glob("events.out.tfevents.*")), "no validation summaries"
    assert (md / "best_ckpt").is_dir() and list((md / "best_ckpt").glob("*.index")), "no best checkpoint"
    import yaml

    from od.model.model_dir import load_model_dir

    pipe = yaml.safe_load((md / "pipeline.yaml").read_text())
    assert pipe["task"]["model"]["num_classes"] == 4 and pipe["trainer"]["train_steps"] == 20
    head = yaml.safe_load((md / "od.yaml").read_text())
    assert head["template"] == "faster_rcnn_resnet18_fpn_cpu" and [c["name"] for c in head["classes"]] == [
        "circle", "square", "triangle"]
    assert "circle" in (md / "label_map.pbtxt").read_text()
    params, _ = load_model_dir(md)
    assert params.task.model.input_size == [128, 128, 3]
    assert "val AP50" in p.stderr and "steps/s" in p.stderr  # validation ran in process + summary table
    # Re-running a finished run is a no-op that says how to extend it.
    again = _run(["--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(md.parent / "records"),
                  "--model-dir", str(md), *TINY])
    assert "already trained to step 20" in again.stderr


@pytest.mark.slow
def test_model_dir_of_another_config_is_refused(trained, demo_records):
    md, _ = trained
    p = _run(["--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(demo_records / "records"),
              "--model-dir", str(md), "--steps", "30", *TINY, "--set", "task.model.detection_head.fc_dims=256"],
             check=False, timeout=120)
    assert p.returncode == 2 and "belongs to a different config" in p.stderr and "fc_dims" in p.stderr


@pytest.mark.slow
def test_sigkill_mid_training_resumes_from_last_checkpoint_and_extends(demo_records, tmp_path):
    md = tmp_path / "killed"
    args = ["--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(demo_records / "records"),
            "--model-dir", str(md), "--no-eval", *TINY]
    proc = subprocess.Popen([PY, "-m", "od.train", *args, "--steps", "30"], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(md.glob("ckpt-1[05].index")):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.5)
        assert list(md.glob("ckpt-1[05].index")), "no checkpoint within the time limit"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    import tensorflow as tf

    killed_at = int(tf.train.latest_checkpoint(str(md)).rsplit("-", 1)[1])
    assert 0 < killed_at < 30
    p = _run([*args, "--steps", "30"])
    assert f"steps {killed_at}->30" in p.stderr and "(resuming)" in p.stderr
    assert (md / "ckpt-30.index").is_file()
    # Without --steps the run keeps its length; a larger --steps extends it.
    assert "already trained to step 30" in _run(args).stderr
    p = _run([*args, "--steps", "35"])
    assert "steps 30->35" in p.stderr and (md / "ckpt-35.index").is_file()


@pytest.mark.slow
def test_finetune_with_other_class_count_restores_backbone(trained, demo_records, tmp_path):
    import numpy as np
    import tensorflow as tf
    from official.core import task_factory

    from od.model.finetune import restore_for_finetune
    from od.model.model_dir import load_model_dir
    from od.model.render import render

    md, _ = trained
    ckpt = tf.train.latest_checkpoint(str(md))
    # Same images, a label map with one more class -> num_classes 5 instead of 4.
    lm = tmp_path / "lm5.pbtxt"
    lm.write_text("".join(f"item {{ id: {i} name: '{n}' }}\n" for i, n in
                          enumerate(["circle", "square", "triangle", "star"], 1)))
    rec = tmp_path / "records5"
    subprocess.run([PY, "-m", "od.records", str(demo_records / "voc"), "--out", str(rec), "--label-map", str(lm),
                    "--quiet", "--workers", "1"], cwd=REPO, env=ENV, check=True, capture_output=True, timeout=120)
    tiny_sets = [TINY[i + 1] for i in range(0, len(TINY), 2)]

    new = render("faster_rcnn_resnet18_fpn_cpu", str(rec), str(lm), tiny_sets).params
    assert new.task.model.num_classes == 5
    model = task_factory.get_task(new.task).build_model()
    report = restore_for_finetune(model, ckpt, "all", log=lambda m: None)

    old_params, _ = load_model_dir(md)
    reference = task_factory.get_task(old_params.task).build_model()
    tf.train.Checkpoint(model=reference).read(ckpt).expect_partial()
    assert len(model.backbone.variables) == len(reference.backbone.variables) > 0
    for a, b in zip(model.backbone.variables, reference.backbone.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.decoder.variables, reference.decoder.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert model.detection_head[0]._classifier.kernel.shape[-1] == 5
    assert "detection_head.classifier" in report.reinitialised
    assert any(r.startswith("backbone") for r in report.restored)

    # And od.train fine-tunes from it.
    p = _run(["--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(rec), "--label-map", str(lm),
              "--model-dir", str(tmp_path / "ft"), "--steps", "5", "--no-eval", "--init-checkpoint", str(md), *TINY])
    assert "restored:       backbone" in p.stderr and "re-initialised" in p.stderr
    assert (tmp_path / "ft" / "ckpt-5.index").is_file()
    # A checkpoint path that does not exist is a usage error before any graph is built.
    bad = _run(["--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(rec), "--label-map", str(lm),
                "--model-dir", str(tmp_path / "ft2"), "--steps", "5", "--init-checkpoint", str(tmp_path / "nope"),
                *TINY], check=False, timeout=120)
    assert bad.returncode == 2 and "neither a registry name nor an existing checkpoint" in bad.stderr


# --------------------------------------------------------------------------- fast


def test_cli_modules_do_not_import_tensorflow_for_help():
    code = ("import sys, od.train, od.configs, od.checkpoints, od.model.render, od.model.finetune; "
            "od.train._parser().format_help(); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([PY, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_non_finite_loss_stops_and_names_the_step():
    import math

    from od import train

    class Step:
        value = 30

        def numpy(self):
            return self.value

    step = Step()
    prog = train.Progress(step, total=100, start=20, quiet=True)
    prog({"total_loss": 1.0, "rpn_score_loss": 0.5, "learning_rate": 0.01})  # fine
    step.value = 40
    with pytest.raises(train.NonFiniteLoss) as e:
        prog({"total_loss": math.nan, "rpn_box_loss": math.inf, "learning_rate": 0.01})
    assert e.value.step == 40 and "step 40" in str(e.value) and "31..40" in str(e.value)
    assert "rpn_box_loss=inf" in str(e.value)


def test_strategy_on_this_cpu_is_one_device_without_gpus():
    from od import train
    from od.model.render import render

    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for f in ("train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"):
            (d / f).write_bytes(b"x")
        (d / "lm.pbtxt").write_text("item { id: 1 name: 'a' }\n")
        (d / "report.json").write_text(json.dumps({"label_map": str(d / "lm.pbtxt"), "classes": [
            {"id": 1, "name": "a"}], "splits": {"train": {"num_images": 4}, "val": {"num_images": 2}}}))
        params = render("faster_rcnn_resnet18_fpn_cpu", str(d)).params
        params.override({"runtime": {"mixed_precision_dtype": "bfloat16"}})
        strategy, kind = train.pick_strategy(params, tpu=None, mixed_precision=True)
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this test describes a CPU-only machine")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy) and kind.startswith("CPU")
    assert params.runtime.distribution_strategy == "one_device" and params.runtime.num_gpus == 0
    assert params.runtime.mixed_precision_dtype == "float32"  # bf16 on a CPU is slow: refused
    assert params.task.train_data.dtype == "float32"


@pytest.mark.slow
def test_same_seed_repeats_weights_and_another_seed_does_not(demo_records, tmp_path):
    """--seed: bit-identical step-2 weights (op determinism on a CPU); another seed, other initial weights."""
    import numpy as np
    import tensorflow as tf
    import yaml

    def train(name: str, seed: int):
        md = tmp_path / name
        p = _run(["--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(demo_records / "records"),
                  "--model-dir", str(md), "--steps", "2", "--no-eval", "--seed", str(seed), *TINY])
        assert f"seed {seed}," in p.stderr and yaml.safe_load((md / "od.yaml").read_text())["seed"] == seed
        r = tf.train.load_checkpoint(str(md / "ckpt-2"))
        return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()}

    a, b, c = train("a", 7), train("b", 7), train("c", 8)
    assert a.keys() == b.keys() and len(a) > 100
    same = [k for k in a if np.array_equal(a[k], b[k])]
    assert len(same) == len(a), f"{len(a) - len(same)} of {len(a)} variables differ with the same seed"
    kernels = [k for k in a if k.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE")]
    assert kernels and not [k for k in kernels if np.array_equal(a[k], c[k])], "another seed, same kernels"
