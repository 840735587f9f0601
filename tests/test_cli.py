"""Every CLI follows the README's "CLI conventions" table: one flag per concept, the same meaning
(dest, type, range, help) everywhere, --version/--quiet/--verbose on all, range errors are usage
errors (exit 2), TensorFlow's C++ log hidden unless --verbose, and no earlier result replaced
without --force."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# module -> name of its parser builder
BUILDERS = {
    "records": "build_parser", "inspect": "build_parser", "configs": "_parser", "checkpoints": "build_parser",
    "train": "_parser", "evaluate": "_parser", "export": "build_parser", "detect": "build_parser",
    "demo": "build_parser", "crops": "build_parser", "classify": "build_parser",
    "convert": "build_parser",
}
TF_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", re.MULTILINE)


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def commands() -> dict[str, argparse.ArgumentParser]:
    """'records', ..., and 'configs render' / 'configs list' for commands with subcommands."""
    out = {}
    for mod, builder in BUILDERS.items():
        p = getattr(importlib.import_module(f"od.{mod}"), builder)()
        subs = _subparsers(p)
        out.update({f"{mod} {n}": sp for n, sp in subs.items()} if subs else {mod: p})
    return out


def flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings}


# concept flag -> commands that must have it (others may too, with the same meaning)
CONCEPTS = {
    "--model": {"detect", "classify", "evaluate"},
    "--model-dir": {"train", "evaluate", "export"},
    "--config": {"train", "configs render"},
    "--score-threshold": {"detect", "classify", "evaluate", "export"},
    "--max-detections": {"detect", "evaluate", "export"},
    "--gallery": {"inspect", "evaluate"},
    "--format": {"records", "convert"},
    "--out": {"records", "convert", "crops", "inspect", "configs render", "evaluate", "export", "detect", "classify", "demo"},
    "--force": {"records", "convert", "crops", "inspect", "configs render", "evaluate", "export", "detect", "classify", "demo"},
    "--seed": {"train", "demo"},
}
HELP_WORDS = {"--score-threshold": "minimum score", "--max-detections": "at most N boxes", "--force": "replace",
              "--gallery": "number of images", "--quiet": "progress", "--verbose": "TensorFlow"}
RENAMED = ("--threshold", "--max-boxes", "--exported", "--num")


def test_parsers_build_without_importing_tensorflow():
    code = ("import sys; sys.path.insert(0, 'tests'); import test_cli; test_cli.commands(); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_every_command_has_quiet_and_verbose():
    for name, p in commands().items():
        f = flags(p)
        for flag in ("--quiet", "--verbose"):
            assert flag in f, f"{name} has no {flag}"
            a = f[flag]
            assert isinstance(a, argparse._StoreTrueAction) and a.dest == flag[2:], name
            assert HELP_WORDS[flag] in a.help, (name, flag, a.help)
        with pytest.raises(SystemExit) as e:  # one or the other
            p.parse_args(["--quiet", "--verbose"])
        assert e.value.code == 2


@pytest.mark.parametrize("flag", sorted(CONCEPTS))
def test_one_flag_per_concept_with_one_meaning(flag):
    having = {n: flags(p)[flag] for n, p in commands().items() if flag in flags(p)}
    missing = CONCEPTS[flag] - set(having)
    assert not missing, f"{flag} missing from {sorted(missing)}"
    first = next(iter(having.values()))
    for name, a in having.items():
        assert a.dest == first.dest and type(a) is type(first), (flag, name)
        assert a.type is first.type, (flag, name, a.type, first.type)
        if flag in HELP_WORDS:
            assert HELP_WORDS[flag] in a.help, (flag, name, a.help)


def test_renamed_flags_are_gone():
    for name, p in commands().items():
        fl = flags(p)
        old = [f for f in RENAMED if f in fl]
        if name == "classify":  # the classification issue's own spelling: the same action as --score-threshold
            assert fl["--threshold"] is fl["--score-threshold"]
            old.remove("--threshold")
        assert not old, f"{name} still has {old}"
    # `od-configs render NAME` (the issue's own spelling) stays: the same template as --config NAME.
    from od import configs

    a = configs._parser().parse_args(["render", "faster_rcnn_resnet18_fpn_cpu"])
    b = configs._parser().parse_args(["render", "--config", "faster_rcnn_resnet18_fpn_cpu"])
    assert (a.template or a.config) == (b.template or b.config) == "faster_rcnn_resnet18_fpn_cpu"


@pytest.mark.parametrize("step", sorted(BUILDERS))
def test_version(step):
    r = subprocess.run([PY, "-m", f"od.{step}", "--version"], cwd=REPO, capture_output=True, text=True, check=False)
    import od

    expect = getattr(od, "__version__", None) or dist_version("od")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"od {step} {expect}"


BAD_NUMBERS = [
    ("evaluate", ["--model-dir", "r", "--score-threshold", "1.5"]),
    ("evaluate", ["--model-dir", "r", "--iou-threshold", "0"]),
    ("evaluate", ["--model-dir", "r", "--iou-threshold", "1.01"]),
    ("evaluate", ["--model-dir", "r", "--gallery", "-1"]),
    ("evaluate", ["--model-dir", "r", "--max-detections", "0"]),
    ("detect", ["x.jpg", "--score-threshold", "-0.1"]),
    ("classify", ["x.jpg", "--score-threshold", "1.5"]),
    ("classify", ["x.jpg", "--top-k", "0"]),
    ("detect", ["x.jpg", "--max-detections", "0"]),
    ("export", ["--model-dir", "r", "--score-threshold", "2"]),
    ("export", ["--model-dir", "r", "--calibration-images", "0"]),
    ("records", ["d", "--val-fraction", "1"]),
    ("records", ["d", "--workers", "0"]),
    ("inspect", ["r", "--gallery", "-2"]),
    ("inspect", ["r", "--max-problems", "x"]),
    ("train", ["--config", "c", "--steps", "0"]),
    ("demo", ["--num-images", "0"]),
]


@pytest.mark.parametrize("cmd,argv", BAD_NUMBERS)
def test_numbers_out_of_range_are_usage_errors(cmd, argv, capsys):
    main = importlib.import_module(f"od.{cmd}").main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    flag = next(a for a in argv if a.startswith("--") and a not in ("--model-dir", "--config"))
    assert f"argument {flag}" in err and "usage:" in err


def test_quiet_tensorflow_respects_the_user(monkeypatch):
    from od.options import quiet_tensorflow

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    quiet_tensorflow(False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # 2 still shows the cuInit ERROR line
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    quiet_tensorflow(True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    quiet_tensorflow(False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ  # changes numerics: never od's business


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it
    return {**env, "PYTHONPATH": str(REPO)}


def test_tensorflow_log_hidden_unless_verbose(tmp_path):
    """od.checkpoints fetch on an empty folder imports TensorFlow and fails fast."""
    cmd = [PY, "-m", "od.checkpoints", "fetch", str(tmp_path)]
    quiet = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert "folder has no checkpoint" in quiet.stderr
    assert not TF_LOG_LINE.search(quiet.stderr) and "oneDNN" not in quiet.stderr, quiet.stderr
    loud = subprocess.run([*cmd, "--verbose"], cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert TF_LOG_LINE.search(loud.stderr), loud.stderr  # e.g. the oneDNN notice, 'Could not find cuda drivers'


def test_cuinit_error_line_hidden():
    """Device start-up (where the CPU-only 'failed call to cuInit' ERROR is logged) stays quiet."""
    code = "import od.options as o; o.quiet_tensorflow(False); import tensorflow as tf; print(int(tf.constant(1) + 1))"
    r = subprocess.run([PY, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert r.stdout.strip() == "2", r.stderr
    assert "cuInit" not in r.stderr and not TF_LOG_LINE.search(r.stderr), r.stderr


def test_quiet_hides_third_party_stdout(capsys):
    from od.options import third_party_quiet

    with third_party_quiet(True):
        print("Accumulating evaluation results...")
    with third_party_quiet(False):
        print("shown")
    assert capsys.readouterr().out == "shown\n"


# --------------------------------------------------------------------------- no silent overwrite


def _dataset(root: Path, seed: int) -> Path:
    from od.data.synthetic import generate

    generate(root, 6, seed)
    return root


def test_records_say_which_earlier_records_they_replace(tmp_path, capsys):
    from od.records import main

    a, b = _dataset(tmp_path / "a", 1), _dataset(tmp_path / "b", 2)
    out, lm = tmp_path / "records", tmp_path / "lm.pbtxt"
    common = ["--out", str(out), "--label-map", str(lm), "--quiet", "--workers", "1"]
    assert main([str(a), *common]) == 0
    assert "replaces" not in capsys.readouterr().err
    assert main([str(b), *common]) == 0
    err = capsys.readouterr().err
    assert f"{out} holds the records of {a} (2 shards); this run replaces them" in err
    assert json.loads((out / "report.json").read_text())["data_dir"] == str(b)


def test_inspect_gallery_goes_next_to_the_records_and_is_not_replaced(tmp_path, capsys):
    from od.inspect import main
    from od.records import main as records

    out = tmp_path / "records"
    assert records([str(_dataset(tmp_path / "a", 1)), "--out", str(out), "--label-map", str(tmp_path / "lm.pbtxt"),
                    "--quiet", "--workers", "1"]) == 0
    assert main([str(out), "--gallery", "2", "--quiet"]) == 0
    png = out / "gallery.png"
    first = png.read_bytes()
    assert main([str(out), "--gallery", "2", "--seed", "5"]) == 2
    assert "--force" in capsys.readouterr().err and png.read_bytes() == first
    assert main([str(out), "--gallery", "2", "--seed", "5", "--force"]) == 0
    assert main([str(out), "--gallery", "2", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "gallery.png").read_bytes() == first  # same seed, same picture


def test_evaluate_keeps_an_evaluation_of_another_checkpoint(tmp_path):
    from od.evaluate import _check_earlier
    from od.model.errors import ConfigError as EvalError

    info = {"model_dir": "runs/x", "exported": None, "checkpoint": "runs/x/ckpt-5", "split": "val",
            "records": ["r/val-00000-of-00001.tfrecord"]}
    _check_earlier(tmp_path, info, force=False)  # nothing there yet
    (tmp_path / "metrics.json").write_text(json.dumps({"version": 1, **info, "step": 5, "AP50": 0.5}))
    _check_earlier(tmp_path, info, force=False)  # the same evaluation again: refreshed
    later = {**info, "checkpoint": "runs/x/ckpt-9"}
    with pytest.raises(EvalError, match=r"ckpt-5 \(step 5\).*--force"):
        _check_earlier(tmp_path, later, force=False)
    with pytest.raises(EvalError):
        _check_earlier(tmp_path, {**info, "split": "test"}, force=False)
    _check_earlier(tmp_path, later, force=True)
    (tmp_path / "metrics.json").write_text("not od's")  # a file od.evaluate did not write
    with pytest.raises(EvalError, match="not written by od.evaluate"):
        _check_earlier(tmp_path, info, force=False)
    _check_earlier(tmp_path, info, force=True)


@pytest.mark.slow
def test_train_quiet_prints_nothing_of_pycocotools_or_tensorflow(tmp_path):
    """10 steps with a validation at step 10: Model Garden's COCOEvaluator prints pycocotools' table."""
    from od.records import main as records

    rec = tmp_path / "records"
    assert records([str(_dataset(tmp_path / "voc", 3)), "--out", str(rec), "--label-map", str(tmp_path / "lm.pbtxt"),
                    "--quiet", "--workers", "1"]) == 0
    tiny = ["task.model.input_size=[128,128,3]", "task.train_data.global_batch_size=2",
            "task.validation_data.global_batch_size=4", "trainer.steps_per_loop=5", "trainer.checkpoint_interval=5",
            "trainer.validation_interval=10", "trainer.optimizer_config.warmup.linear.warmup_steps=5"]
    r = subprocess.run([PY, "-m", "od.train", "--config", "faster_rcnn_resnet18_fpn_cpu", "--records", str(rec),
                        "--model-dir", str(tmp_path / "run"), "--steps", "10", "--quiet",
                        *[a for s in tiny for a in ("--set", s)]],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val @ step 10" in r.stderr  # od's own line stays
    assert r.stdout == "", r.stdout[:500]  # no 'Average Precision (AP) @[ IoU=...' table
    assert not TF_LOG_LINE.search(r.stderr), r.stderr[:2000]
