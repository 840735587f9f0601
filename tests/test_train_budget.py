"""od.train --time: duration parsing, the step choice, the schedule tied to the chosen total, resume.

Fast: the duration type; ``counts`` against a real orbit.Controller and tf.train.CheckpointManager (so
the plan counts the validations and saves Orbit really does); ``plan`` (the largest total that ends in
the budget, whole loops, validations widened only when they would eat the budget); the probe clock on
scripted timestamps; the learning-rate fields moved with the total, from real renders of the shipped
templates; usage errors; a model dir's recorded budget on resume. Slow: a 3-minute budget on the CPU
classifier template, whose od.train process must end within 10% of it, at the chosen step, with the
cosine at its end value there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from od.model import budget
from od.model.budget import Measurement, ProbeClock, counts, plan, tied_to_total
from od.options import duration, format_duration

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


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2m30s", 150), ("1.5h", 5400), ("600", 600),
    ("45.5", 45.5), (" 1H ", 3600), ("1h0m5s", 3605),
])
def test_durations_parse_to_seconds(text, seconds):
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15x", "m", "h1", "1m1h", "1h-3m", "0", "-5", "0s", "inf", "nan", "1 h", "fast"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_durations_print_short():
    assert [format_duration(s) for s in (90, 900, 3600, 5400, 880, 45, 0)] == [
        "1m30s", "15m", "1h", "1h30m", "14m40s", "45s", "0s"]


# --------------------------------------------------------------------------- usage errors (no TensorFlow)


@pytest.mark.parametrize("argv,words", [
    (["--time", "15x"], ["argument --time", "'15x' is not a duration"]),
    (["--time", "0"], ["argument --time", "longer than 0"]),
    (["--time", "15m", "--steps", "100"], ["--time", "--steps", "not both"]),
    (["--time", "15m", "--set", "trainer.train_steps=100"], ["--time", "not both"]),
])
def test_time_usage_errors_are_one_od_error_line(argv, words):
    code = ("import sys, od.train; rc = od.train.main(sys.argv[1:]); "
            "print('tensorflow' in sys.modules, rc)")
    p = subprocess.run([PY, "-c", code, "--config", TEMPLATE, "--model-dir", "never-made", *argv], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert p.stdout.split() == ["False", "2"], p.stderr  # refused before TensorFlow is even imported
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("od: error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), p.stderr
    assert "usage:" in p.stderr and "Traceback" not in p.stderr
    assert not (REPO / "never-made").exists()


def test_help_names_time_and_imports_no_tensorflow():
    code = "import sys, od.train; h = od.train._parser().format_help(); print('--time' in h, 'tensorflow' in sys.modules)"
    p = subprocess.run([PY, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert p.stdout.split() == ["True", "False"], p.stderr


# --------------------------------------------------------------------------- counting what Orbit does


def _orbit_counts(tmp_path: Path, start: int, total: int, spl: int, vi: int | None, ci: int) -> tuple[int, int]:
    """Validations and checkpoint writes of a real orbit.Controller + tf.train.CheckpointManager."""
    import orbit
    import tensorflow as tf

    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(step=step)
    d = tmp_path / f"c{start}-{total}-{spl}-{vi}-{ci}"
    if start:
        step.assign(start)
        tf.train.CheckpointManager(ckpt, str(d), max_to_keep=None).save(checkpoint_number=start)
        step.assign(0)

    class Trainer(orbit.AbstractTrainer):
        def train(self, num_steps):
            step.assign_add(int(num_steps))
            return {}

    class Evaluator(orbit.AbstractEvaluator):
        n = 0

        def evaluate(self, num_steps):
            Evaluator.n += 1
            return {}

    manager = tf.train.CheckpointManager(ckpt, str(d), max_to_keep=None, step_counter=step,
                                         checkpoint_interval=ci)
    written = []
    save = manager.save

    def counting_save(*a, **k):
        path = save(*a, **k)
        if path is not None:
            written.append(path)
        return path

    manager.save = counting_save
    c = orbit.Controller(trainer=Trainer(), evaluator=Evaluator(), global_step=step, steps_per_loop=spl,
                         checkpoint_manager=manager)
    assert int(step.numpy()) == start  # restored
    if vi:
        c.train_and_evaluate(train_steps=total, eval_steps=1, eval_interval=vi)
    else:
        c.train(steps=total)
    return Evaluator.n, len(written)


@pytest.mark.parametrize("start,total,spl,vi,ci", [
    (0, 100, 10, 40, 30), (0, 100, 10, None, 30), (20, 100, 10, 40, 30), (20, 95, 10, 40, 25),
    (0, 80, 20, 200, 100), (80, 760, 20, 200, 100), (0, 20, 5, 10, 20), (12, 60, 5, 7, 3),
])
def test_counts_mirror_orbit(tmp_path, start, total, spl, vi, ci):
    want = _orbit_counts(tmp_path, start, total, spl, vi, ci)
    assert counts(start, total, spl, vi, ci, start or None) == want


# --------------------------------------------------------------------------- the step choice


M = Measurement(elapsed_s=60.0, start_step=0, probe_steps=80, steps_per_s=4.0, build_s=4.0, trace_s=8.0,
                validation_s=3.0, validation_trace_s=2.0, checkpoint_s=0.5, tail_s=1.0)


def _end(m: Measurement, total: int, spl: int, vi: int | None, ci: int) -> float:
    """The plan's time model written out: od.train's end (from its start) for a total."""
    ev, sv = counts(m.probe_steps, total, spl, vi, ci, m.probe_steps)
    warm = budget.RESTART_FACTOR * (m.build_s + m.trace_s + (m.validation_trace_s if ev else 0))
    return (m.elapsed_s + warm + m.tail_s + (total - m.probe_steps) / m.steps_per_s + ev * m.validation_s
            + sv * m.checkpoint_s + budget.EXIT_S)


def test_plan_takes_the_largest_total_of_whole_loops_that_ends_in_the_budget():
    p = plan(900, M, steps_per_loop=20, validation_interval=200, checkpoint_interval=100)
    limit = 900 * (1 - budget.SAFETY)
    assert p.fits and not p.widened and (p.train_steps - M.probe_steps) % 20 == 0
    assert _end(M, p.train_steps, 20, 200, 100) <= limit < _end(M, p.train_steps + 20, 20, 200, 100)
    assert p.estimated_end_s == pytest.approx(_end(M, p.train_steps, 20, 200, 100))
    # ~ (900 * 0.97 - 60 - 1 - 0.5 - overheads) * 4 steps/s: about 3100 steps, 16 validations.
    assert 3000 < p.train_steps < 3300 and p.validations == counts(80, p.train_steps, 20, 200, 100, 80)[0]
    assert p.validation_interval == 200


def test_a_longer_budget_or_a_faster_machine_trains_more():
    base = plan(900, M, 20, 200, 100).train_steps
    assert plan(1800, M, 20, 200, 100).train_steps > 1.9 * base
    fast = Measurement(**{**M.__dict__, "steps_per_s": 8.0})
    assert plan(900, fast, 20, 200, 100).train_steps > 1.7 * base  # twice the validations and saves too


def test_no_eval_plans_no_validation():
    p = plan(900, M, 20, None, 100)
    assert p.validations == 0 and p.train_steps > plan(900, M, 20, 200, 100).train_steps


def test_validations_that_would_eat_the_budget_are_spread_out():
    slow_val = Measurement(**{**M.__dict__, "validation_s": 30.0})
    p = plan(900, slow_val, 20, 100, 100)
    left = 900 * (1 - budget.SAFETY) - slow_val.elapsed_s
    assert p.widened and p.validation_interval > 100 and p.validation_interval % 20 == 0
    assert p.validations * 30.0 <= budget.VALIDATION_SHARE * left + 30.0  # at most one over (the final one)
    kept = plan(900, slow_val, 20, 100, 100)
    assert kept == p  # pure


def test_a_budget_the_probe_already_spent_keeps_the_probe_steps():
    p = plan(60, M, 20, 200, 100)
    assert not p.fits and p.train_steps == M.probe_steps and p.validations == 0
    assert "no time for more" in budget.describe(60, M, p)


def test_describe_says_speed_validation_cost_steps_and_end():
    p = plan(900, M, 20, 200, 100)
    line = budget.describe(900, M, p)
    assert re.fullmatch(r"time budget 15m: measured 4 steps/s \(\+ 3\.0 s per validation\); training \d+ steps, "
                        r"\d+ validations \(ends ~14m\d+s\)", line), line


# --------------------------------------------------------------------------- the probe clock


def test_probe_clock_separates_tracing_validations_and_saves():
    now = [100.0]
    steps = [0]
    clock = ProbeClock(clock=lambda: now[0])

    class Manager:
        def save(self, checkpoint_number=None, check_interval=True):
            now[0] += 0.5  # a save takes 0.5 s
            return "ckpt"

    mgr = Manager()
    clock.building()
    now[0] += 4.0  # build
    clock.ready(lambda: steps[0], mgr)

    def loop(n, seconds):
        now[0] += seconds
        steps[0] += n
        clock.on_train()

    loop(20, 15.0)  # traces: 10 s more than a steady loop
    mgr.save()  # Orbit saves between loops: not training time
    loop(20, 6.0)  # still warming up: 1 s more
    loop(20, 5.0)
    now[0] += 3.0 + 2.0  # first validation: traces
    clock.on_eval()
    loop(20, 5.0)
    loop(20, 5.0)
    now[0] += 3.0
    clock.on_eval()
    mgr.save()
    now[0] += 1.0
    clock.finished()
    m = clock.measurement(elapsed_s=50.0)
    assert m.steps_per_s == pytest.approx(4.0) and m.trace_s == pytest.approx(11.0)
    assert m.validation_s == pytest.approx(3.0) and m.validation_trace_s == pytest.approx(2.0)
    assert m.checkpoint_s == pytest.approx(0.5) and m.tail_s == pytest.approx(1.0)
    assert m.build_s == pytest.approx(4.0) and m.probe_steps == 100 and m.start_step == 0
    assert clock.step() == 100  # the runner is let go


def test_probe_is_five_loops_with_two_validations():
    assert budget.probe_overrides(0, 20, True) == {"trainer": {"train_steps": 100, "validation_interval": 60}}
    assert budget.probe_overrides(40, 10, False)["trainer"]["train_steps"] == 80
    # Orbit validates after loops 3 and 5 of the probe: its second validation is a steady one.
    assert counts(0, 100, 20, 60, 100, None)[0] == 2


# --------------------------------------------------------------------------- the schedule follows the total


@pytest.fixture(scope="module")
def fake_records(tmp_path_factory) -> Path:
    """Records a render accepts (it only globs them): two one-byte shards and a 3-class report."""
    d = tmp_path_factory.mktemp("rec")
    for f in ("train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"):
        (d / f).write_bytes(b"x")
    (d / "lm.pbtxt").write_text("".join(f"item {{ id: {i} name: '{n}' }}\n" for i, n in
                                        enumerate(["a", "b", "c"], 1)))
    return d


def _report(d: Path, task: str) -> None:
    rep = {"label_map": str(d / "lm.pbtxt"), "classes": [{"id": i, "name": n} for i, n in enumerate("abc", 1)],
           "splits": {"train": {"num_images": 40}, "val": {"num_images": 8}}}
    if task == "classification":
        rep["task"] = "classification"
    (d / "report.json").write_text(json.dumps(rep))


@pytest.mark.parametrize("template,task", [("classifier_resnet18_cpu", "classification"),
                                           ("faster_rcnn_resnet18_fpn_cpu", "detection")])
def test_every_field_tied_to_the_total_moves_with_it(fake_records, template, task):
    from od.model.render import render

    _report(fake_records, task)
    at = {n: render(template, str(fake_records), overrides=[f"trainer.train_steps={n}"]).params for n in (800, 1234)}
    over, notes = tied_to_total(at[800].as_dict(), at[1234].as_dict(), 800, 1234)
    assert over["trainer"]["train_steps"] == 1234
    assert over["trainer"]["optimizer_config"]["learning_rate"]["cosine"]["decay_steps"] == 1234
    assert not notes
    moved = at[800].replace(**over)
    assert moved.as_dict() == at[1234].as_dict()  # exactly what --steps 1234 renders


def _cfg(total: int, decay: int | None, warmup: int = 50, kind: str = "cosine") -> dict:
    return {"trainer": {"train_steps": total, "optimizer_config": {
        "learning_rate": {"type": kind, kind: {"decay_steps": decay, "initial_learning_rate": 0.1}},
        "warmup": {"type": "linear", "linear": {"warmup_steps": warmup}}}}}


def test_a_schedule_length_written_as_the_old_total_follows_and_others_are_named():
    over, notes = tied_to_total(_cfg(800, 800), _cfg(800, 800), 800, 3000)
    assert over["trainer"]["optimizer_config"]["learning_rate"]["cosine"]["decay_steps"] == 3000
    assert notes and "follows the budget" in notes[0]
    over, notes = tied_to_total(_cfg(800, 5000), _cfg(800, 5000), 800, 3000)
    assert "learning_rate" not in over["trainer"].get("optimizer_config", {})
    assert notes and "not tied" in notes[0] and "5000" in notes[0]
    _, notes = tied_to_total(_cfg(800, 800, warmup=200), _cfg(120, 120, warmup=200), 800, 120)
    assert any("warmup_steps=200" in n for n in notes)


# --------------------------------------------------------------------------- resume


class _Params:
    def __init__(self, steps: int):
        self.trainer = SimpleNamespace(train_steps=steps, validation_interval=200)

    def override(self, d, is_strict=True):
        self.trainer.validation_interval = d["trainer"]["validation_interval"]


def test_resume_of_a_budgeted_dir_keeps_its_total_and_interval(tmp_path, capsys):
    rec = budget.record(900, M, plan(900, M, 20, 200, 100))
    rec["validation_interval"] = 400
    prev = {"params": _Params(rec["train_steps"]), "header": {"time_budget": rec}}
    for t in (None, 600.0):
        header: dict = {}
        params = _Params(rec["train_steps"])
        assert budget.resume_budget(t, prev, params, header, str(tmp_path), False, set()) is None  # no measuring
        assert header["time_budget"] == rec and params.trainer.validation_interval == 400
    assert "continuing to step" in capsys.readouterr().err
    params = _Params(rec["train_steps"])
    budget.resume_budget(None, prev, params, {}, str(tmp_path), False, {"trainer.validation_interval"})
    assert params.trainer.validation_interval == 200  # the user's --set wins


def test_resume_of_a_dir_stopped_while_measuring_measures_again(tmp_path):
    prev = {"params": _Params(800), "header": {"time_budget": budget.record(300)}}
    header: dict = {}
    assert budget.resume_budget(None, prev, _Params(800), header, str(tmp_path), False, set()) == 300
    assert header["time_budget"]["train_steps"] is None
    assert budget.resume_budget(120.0, prev, _Params(800), header, str(tmp_path), False, set()) == 120
    header = {}
    assert budget.resume_budget(None, prev, _Params(800), header, str(tmp_path), True, set()) is None  # --steps
    assert "time_budget" not in header


def test_a_new_dir_records_the_budget(tmp_path):
    header: dict = {}
    assert budget.resume_budget(90.0, None, _Params(800), header, str(tmp_path), False, set()) == 90.0
    assert header["time_budget"] == {"budget": "1m30s", "seconds": 90.0, "train_steps": None}


# --------------------------------------------------------------------------- resume, through od.train


def _cli(step: str, args, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([PY, "-m", f"od.{step}", *map(str, args)], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"od.{step} {args} -> {p.returncode}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Classification records of 36 synthetic shapes (6 classes)."""
    from od.data.synthetic_classes import generate

    d = tmp_path_factory.mktemp("budget")
    generate(d / "img", 36, seed=0)
    _cli("records", [d / "img", "--out", d / "rec", "--label-map", d / "rec" / "label_map.pbtxt", "--quiet",
                     "--workers", "1"], timeout=120)
    return d


@pytest.fixture(scope="module")
def tiny_run(shapes) -> Path:
    md = shapes / "plain"
    _cli("train", ["--config", TEMPLATE, "--records", shapes / "rec", "--model-dir", md, "--steps", "4", "--quiet",
                   *TINY])
    return md


def _train_in_process(capsys, *argv) -> tuple[int, str]:
    from od.train import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_a_budget_with_the_label_map_outside_the_records_is_trained(shapes, tmp_path, capsys):
    """As `make records` writes them: report.json names label_maps/label_map.pbtxt, outside --records and
    relative to where od.records ran. The budget's re-render must use the classes as the first render did
    (it once read the named file from od.train's folder: a traceback when it was not there)."""
    d = tmp_path / "proj"
    (d / "lm").mkdir(parents=True)
    p = subprocess.run([PY, "-m", "od.records", str(shapes / "img"), "--out", "rec", "--label-map",
                        "lm/label_map.pbtxt", "--quiet", "--workers", "1"], cwd=d, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads((d / "rec" / "report.json").read_text())["label_map"] == "lm/label_map.pbtxt"
    md = tmp_path / "run"
    rc, err = _train_in_process(capsys, "--config", TEMPLATE, "--records", d / "rec", "--model-dir", md,
                                "--time", "20s", "--no-eval", "--quiet", *TINY)
    assert rc == 0, err
    assert "od: time budget 20s: measured" in err and "Traceback" not in err
    total = yaml.safe_load((md / "od.yaml").read_text())["time_budget"]["train_steps"]
    assert (md / f"ckpt-{total}.index").is_file()


def test_time_on_a_dir_trained_without_it_is_refused(tiny_run, shapes, capsys):
    before = (tiny_run / "od.yaml").read_text()
    rc, err = _train_in_process(capsys, "--config", TEMPLATE, "--records", shapes / "rec", "--model-dir", tiny_run,
                                "--time", "10m", "--quiet", *TINY)
    errors = [ln for ln in err.splitlines() if ln.startswith("od: error:")]
    assert rc == 2 and len(errors) == 1 and "trained without --time" in errors[0] and str(tiny_run) in errors[0]
    assert (tiny_run / "od.yaml").read_text() == before


def test_resuming_a_budgeted_dir_continues_to_its_total_without_measuring(tiny_run, shapes, tmp_path, capsys):
    import shutil

    md = tmp_path / "budgeted"
    shutil.copytree(tiny_run, md)
    # What a budgeted run that chose 4 steps leaves in od.yaml (its pipeline.yaml has train_steps 4).
    head = yaml.safe_load((md / "od.yaml").read_text())
    rec = budget.record(600, M, plan(600, M, 2, 2, 2))
    rec.update(train_steps=4, validation_interval=2)
    head["time_budget"] = rec
    (md / "od.yaml").write_text(yaml.safe_dump(head, sort_keys=False))
    common = ["--config", TEMPLATE, "--records", shapes / "rec", "--model-dir", md, "--quiet", *TINY]
    for extra in ([], ["--time", "20m"]):
        rc, err = _train_in_process(capsys, *common, *extra)
        assert rc == 0 and "already trained to step 4" in err and "measured" not in err, err
        assert yaml.safe_load((md / "od.yaml").read_text())["time_budget"] == rec
    assert "is a budgeted run (10m: 4 steps)" in err
    # --steps larger than the recorded total still extends it.
    p = _cli("train", [*common, "--steps", "6", "--no-eval"])
    assert "steps 4->6" in p.stderr and (md / "ckpt-6.index").is_file()
    assert yaml.safe_load((md / "pipeline.yaml").read_text())["trainer"]["train_steps"] == 6
    assert yaml.safe_load((md / "od.yaml").read_text())["time_budget"]["train_steps"] == 4  # history kept


# --------------------------------------------------------------------------- slow: a real budget


def _lr_by_step(event_dir: Path) -> dict[int, float]:
    import tensorflow as tf

    out: dict[int, float] = {}
    for f in sorted(event_dir.glob("events.out.tfevents.*")):
        for ev in tf.compat.v1.train.summary_iterator(str(f)):
            for v in ev.summary.value:
                if v.tag == "learning_rate":
                    out[int(ev.step)] = (float(tf.make_ndarray(v.tensor)) if v.HasField("tensor")
                                         else float(v.simple_value))
    return out


@pytest.mark.slow
def test_a_three_minute_budget_is_kept_and_the_schedule_completes(shapes):
    budget_s = 180
    md = shapes / "budget3m"
    t0 = time.monotonic()
    p = _cli("train", ["--config", TEMPLATE, "--records", shapes / "rec", "--model-dir", md, "--time", "3m",
                       "--quiet"], timeout=400)
    wall = time.monotonic() - t0
    m = re.search(r"od: time budget 3m: measured ([\d.]+) steps/s .*; training (\d+) steps", p.stderr)
    assert m, p.stderr
    total = int(m.group(2))
    print(f"\nbudget {budget_s} s: od.train wall {wall:.1f} s ({wall / budget_s - 1:+.1%}); "
          f"{m.group(0)}; od.yaml: {yaml.safe_load((md / 'od.yaml').read_text())['time_budget']}")
    assert abs(wall - budget_s) <= 0.10 * budget_s, f"wall {wall:.1f} s for a {budget_s} s budget\n{p.stderr}"
    pipe = yaml.safe_load((md / "pipeline.yaml").read_text())
    assert pipe["trainer"]["train_steps"] == total
    cos = pipe["trainer"]["optimizer_config"]["learning_rate"]["cosine"]
    assert cos["decay_steps"] == total
    assert (md / f"ckpt-{total}.index").is_file()
    rec = yaml.safe_load((md / "od.yaml").read_text())["time_budget"]
    assert rec["train_steps"] == total and rec["seconds"] == budget_s
    lr = _lr_by_step(md / "train")
    assert max(lr) == total
    assert lr[total] == pytest.approx(cos["initial_learning_rate"] * cos["alpha"], rel=1e-4)
    # Resuming, with or without --time, continues to the same total: here, nothing left to do.
    for extra in ([], ["--time", "3m"]):
        again = _cli("train", ["--config", TEMPLATE, "--records", shapes / "rec", "--model-dir", md, "--quiet",
                               *extra], timeout=120)
        assert f"already trained to step {total}" in again.stderr and "measured" not in again.stderr
