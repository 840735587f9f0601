"""Classification on the model side, end to end on the synthetic shapes.

od.train writes checkpoints and TensorBoard summaries and od.evaluate its metrics and plots; a
fine-tune to another class count restores the backbone and starts a new head; frozen mode leaves
every backbone variable as the init checkpoint had it; an export predicts what its checkpoint does,
through all three signatures. The fast tests share one tiny 3-class run (32 px, batch 8, 4 steps)
and one frozen 4-class run started from it. The slow test trains the real CPU template and checks
it learns the shapes while the same data with shuffled labels stays near chance.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
TEMPLATE = "classifier_resnet18_cpu"
TINY = [
    "--set", "task.model.input_size=[32,32,3]",
    "--set", "task.train_data.global_batch_size=8",
    "--set", "task.validation_data.global_batch_size=8",
    "--set", "trainer.steps_per_loop=2",
    "--set", "trainer.summary_interval=2",
    "--set", "trainer.checkpoint_interval=2",
    "--set", "trainer.validation_interval=2",
    "--set", "trainer.optimizer_config.warmup.linear.warmup_steps=1",
]
CLASSES3 = ["circle", "square", "triangle"]
CLASSES4 = CLASSES3 + ["star"]


def _cli(step: str, args, timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run([PY, "-m", f"od.{step}", *map(str, args)], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"od.{step} {args} -> {p.returncode}\n{p.stderr[-4000:]}")
    return p


def _records(images: Path, out: Path, val_fraction: float = 0.25) -> Path:
    _cli("records", [images, "--out", out, "--label-map", out / "label_map.pbtxt", "--val-fraction", val_fraction,
                     "--quiet", "--workers", "1"], timeout=120)
    return out


def _backbone_values(ckpt: str) -> dict[str, np.ndarray]:
    """Every backbone variable of a Model Garden classification checkpoint by name (optimizer slots left out)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(ckpt)
    return {k: reader.get_tensor(k) for k, _ in tf.train.list_variables(ckpt)
            if k.startswith("backbone/") and ".OPTIMIZER_SLOT" not in k}


HEAD_KERNEL = "model/layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE"  # the final Dense layer


def _scalars(event_dir: Path) -> dict[str, dict[int, float]]:
    """Scalar summaries by tag and step, read with TensorFlow's own event reader."""
    import tensorflow as tf

    out: dict[str, dict[int, float]] = {}
    for f in sorted(event_dir.glob("events.out.tfevents.*")):
        for ev in tf.compat.v1.train.summary_iterator(str(f)):
            for v in ev.summary.value:
                if v.HasField("tensor") and not v.tensor.tensor_shape.dim:
                    out.setdefault(v.tag, {})[int(ev.step)] = float(tf.make_ndarray(v.tensor))
                elif v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[int(ev.step)] = float(v.simple_value)
    return out


# --------------------------------------------------------------------------- shared tiny runs


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """48 shapes (8 a class); records of 3 of the classes and of 4 of them."""
    from od.data.synthetic_classes import generate

    d = tmp_path_factory.mktemp("cmodel")
    generate(d / "all", 48, seed=0)
    for name, classes in (("d3", CLASSES3), ("d4", CLASSES4)):
        for c in classes:
            shutil.copytree(d / "all" / c, d / name / c)
        _records(d / name, d / f"r{name[1]}")
    return d


@pytest.fixture(scope="module")
def run3(demo) -> Path:
    md = demo / "m3"
    _cli("train", ["--config", TEMPLATE, "--records", demo / "r3", "--model-dir", md, "--steps", "4", "--quiet", *TINY])
    return md


@pytest.fixture(scope="module")
def frozen(demo, run3) -> tuple[Path, str]:
    """4 classes from the 3-class run's latest checkpoint, backbone frozen; (model dir, od.train stderr)."""
    md = demo / "m4-frozen"
    p = _cli("train", ["--config", TEMPLATE, "--records", demo / "r4", "--model-dir", md, "--steps", "4", "--no-eval",
                       "--init-checkpoint", run3, "--set", "task.freeze_backbone=true", "--quiet", *TINY])
    return md, p.stderr


@pytest.fixture(scope="module")
def evaluated(run3) -> Path:
    from od.evaluate import main

    assert main(["--model-dir", str(run3), "--quiet"]) == 0
    return run3 / "eval"


@pytest.fixture(scope="module")
def exported(demo, run3) -> Path:
    from od.export import main

    out = demo / "export3"
    assert main(["--model-dir", str(run3), "--out", str(out), "--quiet"]) == 0
    return out


# --------------------------------------------------------------------------- training outputs


def test_short_run_writes_checkpoints_summaries_and_configs(run3):
    import yaml

    assert (run3 / "ckpt-2.index").is_file() and (run3 / "ckpt-4.index").is_file()
    assert list((run3 / "best_ckpt").glob("best_ckpt-*.index")), "no best checkpoint"
    pipe = yaml.safe_load((run3 / "pipeline.yaml").read_text())
    assert pipe["task"]["model"]["num_classes"] == 3 and pipe["trainer"]["train_steps"] == 4
    assert pipe["task"]["model"]["input_size"] == [32, 32, 3]
    assert [line.strip() for line in (run3 / "label_map.pbtxt").read_text().splitlines()
            if line.strip().startswith("name")] == [f'name: "{c}"' for c in CLASSES3]

    train = _scalars(run3 / "train")
    val = _scalars(run3 / "validation")
    assert sorted(train["learning_rate"]) == [2, 4], train.keys()
    assert sorted(train["training_loss"]) == [2, 4] and all(np.isfinite(v) and v > 0
                                                          for v in train["training_loss"].values())
    assert sorted(val["accuracy"]) == [2, 4] and sorted(val["validation_loss"]) == [2, 4], val.keys()
    assert all(0.0 <= v <= 1.0 for v in val["accuracy"].values())
    assert set(val["top_3_accuracy"].values()) == {1.0}  # 3 classes: the true one is always among the top 3


def test_evaluate_writes_metrics_and_plots(run3, evaluated, demo):
    from od.io.schema import read_metrics
    from od.io.tfrecord import count_records

    m = read_metrics(evaluated / "metrics.json")
    n = count_records([str(p) for p in (demo / "r3").glob("val-*.tfrecord")])
    val_acc = _scalars(run3 / "validation")["accuracy"]
    # The default checkpoint is Model Garden's best by validation accuracy (step 2 or 4 here).
    assert m["task"] == "classification" and m["checkpoint_choice"] == "best" and m["step"] in (2, 4)
    assert val_acc[m["step"]] == max(val_acc.values())
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == n == m["num_images"]
    assert m["top1"] == pytest.approx(np.trace(cm) / n)
    assert m["top5"] is None  # 3 classes: top-5 says nothing
    per_class = {c["name"]: c for c in m["per_class"]}
    assert list(per_class) == CLASSES3
    assert [per_class[c]["support"] for c in CLASSES3] == cm.sum(axis=1).tolist()
    # The checkpoint through od's serving graph scores what Model Garden's own validation scored at
    # that step: the same centre crop, resize and normalisation.
    assert m["top1"] == pytest.approx(val_acc[m["step"]], abs=1e-6)
    for name in ("confusion_matrix.png", "learning_curves.png", "gallery.png"):
        with Image.open(evaluated / name) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 100, name
            assert np.asarray(im.convert("L")).std() > 5, f"{name} is blank"
    assert set(m["plots"]) >= {"confusion_matrix", "learning_curves", "gallery"}


# --------------------------------------------------------------------------- fine-tune and frozen


def test_finetune_other_class_count_restores_backbone_and_starts_a_new_head(run3, demo, tmp_path):
    import tensorflow as tf
    from official.core import task_factory

    from od.model.finetune import restore_for_finetune
    from od.model.render import render

    ckpt = tf.train.latest_checkpoint(str(run3))
    sets = [TINY[i + 1] for i in range(0, len(TINY), 2)]
    new = render(TEMPLATE, str(demo / "r4"), str(demo / "r4" / "label_map.pbtxt"), sets).params
    assert new.task.model.num_classes == 4
    model = task_factory.get_task(new.task).build_model()
    head = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    assert len(head) == 1
    head_before = head[0].kernel.numpy().copy()
    backbone_before = [v.numpy().copy() for v in model.backbone.variables]

    report = restore_for_finetune(model, ckpt, ["backbone"], log=lambda m: None)

    assert report.restored and report.restored[0].startswith("backbone")
    # Written under the name Model Garden's trainer gives it, the restored backbone reads back as the
    # 3-class run's, variable by variable (BN statistics included).
    after = tf.train.Checkpoint(backbone=model.backbone).write(str(tmp_path / "after"))
    want, got = _backbone_values(ckpt), _backbone_values(after)
    assert len(want) > 100 and got.keys() == want.keys()
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    # ... and the restore did something: a fresh init is not the trained backbone.
    assert any(not np.array_equal(v, a.numpy()) for v, a in zip(backbone_before, model.backbone.variables))
    # The head: 4 columns, untouched by the restore (the checkpoint's has 3).
    assert head[0].kernel.shape == (256, 4) and tuple(tf.train.load_checkpoint(ckpt).get_tensor(HEAD_KERNEL).shape) \
        == (256, 3)
    np.testing.assert_array_equal(head[0].kernel.numpy(), head_before)


def test_frozen_backbone_keeps_every_backbone_variable_and_trains_the_head(run3, frozen):
    import tensorflow as tf

    md, stderr = frozen
    init = str(run3 / "ckpt-4")  # --init-checkpoint MODEL_DIR takes its latest checkpoint
    assert f"fine-tuning from {init}" in stderr and "restored:       backbone" in stderr
    start = _backbone_values(init)
    assert sum("moving_mean" in k for k in start) > 10  # BN statistics are part of the comparison
    for step in (2, 4):
        got = _backbone_values(str(md / f"ckpt-{step}"))
        assert got.keys() == start.keys()
        for k, v in start.items():
            np.testing.assert_array_equal(got[k], v, err_msg=f"ckpt-{step}: {k} moved")
    # No optimizer slots for the frozen part: it never was a trainable variable.
    assert not [k for k, _ in tf.train.list_variables(str(md / "ckpt-4")) if k.startswith("backbone/")
                and ".OPTIMIZER_SLOT" in k]
    h2 = tf.train.load_checkpoint(str(md / "ckpt-2")).get_tensor(HEAD_KERNEL)
    h4 = tf.train.load_checkpoint(str(md / "ckpt-4")).get_tensor(HEAD_KERNEL)
    assert h4.shape == (256, 4) and np.abs(h4 - h2).max() > 1e-6, "the head did not learn"
    # Two steps are enough to move an unfrozen backbone (weights and BN statistics), so the
    # equalities above are not vacuous.
    a, b = _backbone_values(str(run3 / "ckpt-2")), _backbone_values(str(run3 / "ckpt-4"))
    moved = [k for k in a if not np.array_equal(a[k], b[k])]
    assert any("moving_mean" in k for k in moved) and any(k.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE")
                                                           for k in moved)


# --------------------------------------------------------------------------- export parity


def _images(demo: Path) -> list[np.ndarray]:
    """Demo photos (96-192 px, each its own size) and a few odd shapes cut from them."""
    files = sorted((demo / "d3").glob("*/*.jpg"))[::5]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    big = arrays[0]
    arrays += [big[:40, :], big[:, :33], np.ascontiguousarray(big[::2, ::3]), np.full((17, 300, 3), 200, np.uint8)]
    assert len({a.shape for a in arrays}) >= 6
    return arrays


def test_export_predicts_what_its_checkpoint_does(exported, run3, demo):
    from od.model.classifier import Classifier
    from od.model.model_dir import load_model_dir
    from od.model.source import resolve_labels, resolve_model

    source = resolve_model(str(exported))
    id_to_name, _ = resolve_labels(source, None)
    assert id_to_name == {1: "circle", 2: "square", 3: "triangle"}
    saved = Classifier.load(source, id_to_name)
    params, _ = load_model_dir(run3)
    ckpt = json.loads((exported / "model.json").read_text())["checkpoint"]["path"]
    live = Classifier.from_checkpoint(params, ckpt, id_to_name)
    assert saved.labels == live.labels == CLASSES3
    assert (exported / "labels.txt").read_text().split() == CLASSES3
    spread = []
    for a in _images(demo):
        p, q = saved.probabilities(a), live.probabilities(a)
        assert p.shape == (3,) and p.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(p, q, atol=1e-5, err_msg=str(a.shape))
        spread.append(p)
    assert np.ptp(np.array(spread), axis=0).max() > 1e-4, "every image gets the same answer: inputs not used"


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _example(encoded: bytes) -> bytes:
    import tensorflow as tf

    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
               "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_three_signatures_agree(exported, demo):
    import tensorflow as tf

    sigs = tf.saved_model.load(str(exported / "saved_model")).signatures
    assert set(sigs) >= {"serving_default", "image_bytes", "tf_example"}
    for a in _images(demo)[:5]:
        png = _png(a)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), a)  # lossless
        outs = {
            "serving_default": sigs["serving_default"](input_tensor=tf.constant(a[None])),
            "image_bytes": sigs["image_bytes"](input_tensor=tf.constant([png])),
            "tf_example": sigs["tf_example"](input_tensor=tf.constant([_example(png)])),
        }
        ref = outs["serving_default"]["probabilities"].numpy()
        for name, out in outs.items():
            probs, classes = out["probabilities"].numpy(), out["classes"].numpy()
            assert probs.shape == (1, 3) and probs.dtype == np.float32, name
            assert probs.sum() == pytest.approx(1.0, abs=1e-5) and (probs >= 0).all(), name
            assert classes.tolist() == probs.argmax(axis=1).tolist(), name
            # The same pixels through one crop-and-resize: the same numbers.
            np.testing.assert_allclose(probs, ref, atol=1e-6, err_msg=f"{name} vs serving_default, {a.shape}")


# --------------------------------------------------------------------------- learning (slow)


def _train_and_evaluate(images: Path, work: Path) -> dict:
    """The CPU template as shipped, only --steps and --seed set; the last checkpoint scored (not
    the best of the validations, which would flatter the shuffled run)."""
    from od.io.schema import read_metrics

    rec = _records(images, work / "records", val_fraction=0.2)
    md = work / "run"
    _cli("train", ["--config", TEMPLATE, "--records", rec, "--model-dir", md, "--steps", LEARN_STEPS, "--seed", "0",
                   "--quiet"], timeout=900)
    _cli("evaluate", ["--model-dir", md, "--checkpoint", "latest", "--no-plots", "--quiet"], timeout=300)
    return read_metrics(md / "eval" / "metrics.json")


# Measured with the shipped template (Adam, cosine over --steps), --seed 0, 480 shapes, 300 steps
# (2 shared cores, TF 2.20; 3.7 min for the whole test): val top-1 0.745 real, 0.149 shuffled, on 94
# val images each. Chance is 1/6 = 0.167 (binomial sd ~0.04 at n=94), so the ceiling 0.3 is ~3.5 sd
# above chance and the floor 0.5 ~5 sd below the real run. (The demo's 800 steps reach 0.98-1.0.)
LEARN_IMAGES = 480
LEARN_STEPS = 300
TOP1_FLOOR = 0.5
SHUFFLED_CEILING = 0.3


@pytest.mark.slow
def test_cpu_template_learns_shapes_and_shuffled_labels_do_not(tmp_path):
    """300 steps of the CPU template on 480 shapes: val top-1 clears a floor that the same images with
    their class folders shuffled do not reach, so the floor measures learning, not the pipeline."""
    from od.data.synthetic_classes import generate

    generate(tmp_path / "shapes", LEARN_IMAGES, seed=1)
    real = _train_and_evaluate(tmp_path / "shapes", tmp_path / "real")

    files = sorted((tmp_path / "shapes").glob("*/*.jpg"))
    folders = [f.parent.name for f in files]
    random.Random(0).shuffle(folders)
    for i, (f, c) in enumerate(zip(files, folders)):
        (tmp_path / "shuffled" / c).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tmp_path / "shuffled" / c / f"img_{i:05d}.jpg")
    same = sum(f.parent.name == c for f, c in zip(files, folders))
    assert same < len(files) / 3  # most images now sit under another class
    shuffled = _train_and_evaluate(tmp_path / "shuffled", tmp_path / "shuffled-run")

    print(f"top-1 real {real['top1']:.3f}, shuffled {shuffled['top1']:.3f} "
          f"({real['num_images']} / {shuffled['num_images']} val images)")
    assert real["num_images"] >= 70 and shuffled["num_images"] >= 70
    assert real["top1"] >= TOP1_FLOOR, real["top1"]
    assert shuffled["top1"] <= SHUFFLED_CEILING, shuffled["top1"]
