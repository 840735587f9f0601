"""Train a detector or a classifier from a template and records: Model Garden's train_lib with od's care around it.

What od adds: the strategy chosen from the hardware (and ``runtime.num_gpus`` set so ``mirrored``
really uses the GPUs), checks before any step runs, resume / extend from the model dir, a progress
bar fed by the loop's own outputs (no extra device work), NaN/inf stop naming the step, the best
checkpoint by AP50, and a summary. The run itself is ``official.core.train_lib.run_experiment``.

    python -m od.train --config faster_rcnn_resnet18_fpn_cpu --records data/records
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.model import paths
from od.options import (add_common, duration, format_duration, non_negative_int, positive_int, quiet_tensorflow,
                        third_party_quiet)


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf; carries the step so the message can name it."""

    def __init__(self, step: int, first_step: int, losses: dict[str, float]):
        self.step, self.first_step, self.losses = step, first_step, losses
        bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not math.isfinite(v))
        super().__init__(f"loss is not finite at step {step} (in steps {first_step + 1}..{step}): {bad}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m od.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="template name in pipeline_configs/ or a YAML path")
    ap.add_argument("--records", default="data/records", help="folder (or gs:// prefix) with the shards + report.json")
    ap.add_argument("--label-map", default=None, help="label_map.pbtxt (default: the one report.json names)")
    ap.add_argument("--model-dir", default=None, help="default runs/<config-name>; may be gs://")
    ap.add_argument("--steps", type=positive_int, default=None, help="total train steps (larger than a finished run extends it)")
    ap.add_argument("--time", default=None, metavar="DURATION",
                    help="time budget (90s, 15m, 1h30m): measure the first steps, then train as many as end "
                         "within it, the learning-rate schedule completing (instead of --steps)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted Model Garden config key, YAML value (repeatable)")
    ap.add_argument("--auto-size", action="store_true",
                    help="choose the input size (and anchor levels) from the records' box sizes, within the "
                         "template's compute budget; an explicit --set task.model.input_size wins")
    ap.add_argument("--tpu", default=None, help="TPU name/address (Colab: 'local' or leave the grpc address)")
    ap.add_argument("--mixed-precision", action="store_true", help="bfloat16 on TPU, float16 on GPU")
    ap.add_argument("--init-checkpoint", default=None,
                    help="registry name (python -m od.checkpoints list) or checkpoint path; overrides the template")
    ap.add_argument("--no-eval", action="store_true", help="train only (no in-process validation)")
    ap.add_argument("--seed", type=non_negative_int, default=None,
                    help="seed initial weights, data order and augmentation so a run repeats on a CPU (recorded in "
                         "MODEL_DIR/od.yaml); costs ~20%% steps/s on a CPU, so off by default")
    add_common(ap)
    return ap



def _scalars(output) -> dict[str, float]:
    """The scalar entries of a loop's output dict (tensors or numbers) as floats; others skipped."""
    vals: dict[str, float] = {}
    for k, v in (output or {}).items():
        try:
            vals[k] = float(v.numpy() if hasattr(v, "numpy") else v)
        except (TypeError, ValueError):
            continue
    return vals

# --------------------------------------------------------------------------- hardware / strategy

def pick_strategy(params, tpu: str | None, mixed_precision: bool):
    """Fill params.runtime from the hardware and return the tf.distribute strategy."""
    import tensorflow as tf
    from official.common import distribute_utils

    rt: dict[str, Any] = {}
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = tf_config.get("cluster", {}).get("worker", [])
    gpus = tf.config.list_physical_devices("GPU")
    if tpu:
        rt.update(distribution_strategy="tpu", tpu=tpu, num_gpus=0)
        kind = f"TPU {tpu}"
    elif len(workers) > 1:
        rt.update(distribution_strategy="multi_worker_mirrored", num_gpus=len(gpus))
        kind = f"{len(workers)} workers (TF_CONFIG) x {len(gpus)} GPU"
    elif len(gpus) > 1:
        rt.update(distribution_strategy="mirrored", num_gpus=len(gpus))
        kind = f"{len(gpus)} GPUs (MirroredStrategy)"
    elif len(gpus) == 1:
        rt.update(distribution_strategy="one_device", num_gpus=1)
        kind = "1 GPU"
    else:
        rt.update(distribution_strategy="one_device", num_gpus=0)
        kind = f"CPU ({os.cpu_count()} cores)"
    if mixed_precision:
        if tpu:
            rt["mixed_precision_dtype"] = "bfloat16"
        elif gpus:
            rt.update(mixed_precision_dtype="float16", loss_scale="dynamic")
        else:
            warn("--mixed-precision ignored on a CPU (float32 is faster there)")
    dtype = rt.get("mixed_precision_dtype") or params.runtime.mixed_precision_dtype or "float32"
    if not tpu and not gpus and dtype != "float32":
        warn(f"runtime.mixed_precision_dtype={dtype} on a CPU is slow; using float32")
        dtype = "float32"
        rt["mixed_precision_dtype"] = "float32"
    over: dict[str, Any] = {"runtime": rt}
    # The input pipeline produces what the model computes in (bfloat16 only makes sense on TPU).
    data_dtype = dtype if dtype in ("float16", "bfloat16") else "float32"
    over["task"] = {"train_data": {"dtype": data_dtype}, "validation_data": {"dtype": data_dtype}}
    params.override(over, is_strict=True)
    if params.runtime.worker_hosts or workers:
        distribute_utils.configure_cluster(params.runtime.worker_hosts, params.runtime.task_index)
    strategy = distribute_utils.get_distribution_strategy(
        distribution_strategy=params.runtime.distribution_strategy,
        all_reduce_alg=params.runtime.all_reduce_alg,
        num_gpus=params.runtime.num_gpus,
        tpu_address=params.runtime.tpu,
    )
    return strategy, kind


# --------------------------------------------------------------------------- model dir

def check_model_dir(model_dir: str, params, header: dict) -> dict | None:
    """The previous run's (params, header) when resuming; error when the dir holds another config."""
    import tensorflow as tf
    import yaml

    from od.model.errors import ConfigError
    from od.model.model_dir import HEADER_FILE, load_model_dir

    hpath = paths.join(model_dir, HEADER_FILE)
    if not tf.io.gfile.exists(hpath):
        if tf.train.latest_checkpoint(model_dir):
            raise ConfigError(
                f"{model_dir} has checkpoints but no {HEADER_FILE}: it was not written by od.train; "
                "use another --model-dir"
            )
        return None
    old_params, old_header = load_model_dir(model_dir)
    new_model, old_model = params.task.model.as_dict(), old_params.task.model.as_dict()
    if new_model != old_model or old_header.get("base_experiment") != header.get("base_experiment"):
        diffs = [k for k in sorted(set(_flat(new_model)) | set(_flat(old_model)))
                 if _flat(new_model).get(k) != _flat(old_model).get(k)]
        raise ConfigError(
            f"{model_dir} belongs to a different config (template {old_header.get('template')!r}; "
            f"model differs in: {', '.join('task.model.' + d for d in diffs[:6]) or 'base experiment'}). "
            "Use another --model-dir, or the same --config/--set as that run to resume it."
        )
    if old_header.get("classes") and old_header["classes"] != header.get("classes"):
        raise ConfigError(
            f"{model_dir} was trained with classes {old_header['classes']} but the label map now has "
            f"{header.get('classes')}; use another --model-dir (fine-tune from it with --init-checkpoint)"
        )
    return {"params": old_params, "header": old_header, "yaml": yaml}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_record_labels(params, num_classes: int, report: dict | None, task: str = "detection") -> None:
    """Labels >= num_classes crash deep inside the loss (or silently vanish): find them first.

    With od's report.json the label map check in od.model.render already covers it; otherwise one quick
    pass over the label feature only (no image decoding).
    """
    if report and report.get("classes"):
        return
    import tensorflow as tf

    from od.model.errors import ConfigError

    key = "image/class/label" if task == "classification" else "image/object/class/label"
    files = paths.glob(str(params.task.train_data.input_path)) + paths.glob(
        str(params.task.validation_data.input_path))
    ds = tf.data.TFRecordDataset(files).map(
        lambda s: tf.io.parse_single_example(s, {key: tf.io.VarLenFeature(tf.int64)}),
        num_parallel_calls=tf.data.AUTOTUNE)
    top = 0
    for ex in ds.map(lambda e: tf.reduce_max(tf.concat([e[key].values, [0]], 0))):
        top = max(top, int(ex))
    if top > num_classes - 1:
        what = "label" if task == "classification" else "class id"
        raise ConfigError(
            f"the records contain {what} {top} but task.model.num_classes={num_classes} allows up to "
            f"{num_classes - 1}; the label map does not match the records (re-run python -m od.records)"
        )


# --------------------------------------------------------------------------- progress

def _cpu() -> float:
    """CPU seconds used by this process (all threads): on a shared machine, a fairer speed measure."""
    t = os.times()
    return t.user + t.system


class Progress:
    """Orbit train action: a bar from the loop's outputs (already computed; costs nothing extra)."""

    LOSS_KEYS = ("total_loss", "training_loss", "rpn_score_loss", "rpn_box_loss", "frcnn_cls_loss", "frcnn_box_loss",
                 "cls_loss", "box_loss", "model_loss")

    def __init__(self, global_step, total: int, start: int, quiet: bool = False):
        self.global_step = global_step
        self.total, self.start = total, start
        self.last_step = start
        self.t0 = self.t_last = time.monotonic()
        self.history: list[tuple[int, dict]] = []
        self.loops: list[tuple[int, float, float]] = []
        self.quiet = quiet
        self.bar = None
        self.train_seconds = 0.0
        self.c_last = _cpu()
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}")

    def __call__(self, output) -> None:
        step = int(self.global_step.numpy())
        now = time.monotonic()
        dt = now - self.t_last
        self.train_seconds += dt
        c = _cpu()
        dc = c - self.c_last
        vals = _scalars(output)
        losses = {k: v for k, v in vals.items() if "loss" in k}
        if any(not math.isfinite(v) for v in losses.values()):
            raise NonFiniteLoss(step, self.last_step, losses)
        n = step - self.last_step
        sps = n / dt if dt > 0 else 0.0
        self.history.append((step, dict(vals, steps_per_second=sps)))
        # (steps, wall s, cpu s) per loop; the first loop of a process includes graph tracing.
        self.loops.append((n, dt, dc))
        if self.bar is not None:
            post = {k.replace("_loss", ""): f"{losses[k]:.3f}" for k in self.LOSS_KEYS[:5] if k in losses}
            if "learning_rate" in vals:
                post["lr"] = f"{vals['learning_rate']:.2e}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(n)
        self.last_step = step
        self.t_last = time.monotonic()
        self.c_last = _cpu()

    def steady(self) -> tuple[float, float] | None:
        """(steps/s, CPU s/step) without the first loop (tracing), or None when too short."""
        loops = self.loops[1:]
        n = sum(x[0] for x in loops)
        wall = sum(x[1] for x in loops)
        cpu = sum(x[2] for x in loops)
        return (n / wall, cpu / n) if n and wall else None

    def eval_done(self, output) -> dict:
        step = int(self.global_step.numpy())
        metrics = _scalars(output)
        msg = f"val @ step {step}: " + headline(metrics)
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)
        # Evaluation time is not training time: keep steps/s honest.
        self.t_last = time.monotonic()
        self.c_last = _cpu()
        return metrics

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def headline(metrics: dict) -> str:
    """The validation numbers worth a line: accuracy for a classifier, AP for a detector."""
    nan = float("nan")
    if "accuracy" in metrics:
        top = next((k for k in metrics if k.startswith("top_") and k.endswith("_accuracy")), None)
        extra = f" {top.replace('_accuracy', '')}={metrics[top]:.3f}" if top else ""
        return f"accuracy={metrics['accuracy']:.3f}{extra} loss={metrics.get('validation_loss', nan):.3f}"
    return (f"AP50={metrics.get('AP50', nan):.3f} AP={metrics.get('AP', nan):.3f} "
            f"AR@100={metrics.get('ARmax100', nan):.3f}")


class EvalHook:
    """Orbit eval action: record metrics and print them as they arrive."""

    def __init__(self, progress: Progress, global_step):
        self.progress, self.global_step = progress, global_step
        self.results: list[tuple[int, dict]] = []

    def __call__(self, output) -> None:
        self.results.append((int(self.global_step.numpy()), self.progress.eval_done(output)))


# --------------------------------------------------------------------------- main

def _quiet_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    import orbit.controller

    # Orbit prints every loop's full output dict to stdout; the progress bar shows it instead.
    orbit.controller._log = absl_logging.info


def run(args) -> int:
    global _budgeted  # see exit_after_budget
    t_start = time.monotonic()  # --time counts od.train's whole wall time, TensorFlow's import included
    _quiet_logs()
    from od.model.errors import ConfigError
    from od.model.model_dir import HEADER_FILE, LABEL_MAP_FILE, PIPELINE_FILE, config_yaml, header_yaml, latest_step
    from od.model.render import render

    name = Path(args.config).stem
    model_dir = args.model_dir or str(Path("runs") / name)
    if not args.model_dir:
        note_default("model dir", model_dir)
    # The data seed goes first so an explicit --set task.train_data.seed=... still wins.
    seeded = [] if args.seed is None else [f"task.train_data.seed={args.seed}", f"task.validation_data.seed={args.seed}"]
    sets = [*seeded, *args.sets]
    if args.steps is not None:
        if args.steps <= 0:
            error("--steps must be > 0")
            return EXIT_USAGE
        sets.append(f"trainer.train_steps={args.steps}")
    if args.init_checkpoint:
        sets.append(f"od.pretrained_checkpoint={args.init_checkpoint}")
    try:
        r = render(args.config, args.records, args.label_map, sets, auto_size=args.auto_size)
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    for line in r.size_lines:  # what --auto-size chose; boxes too small for the anchors
        print(line, file=sys.stderr)

    import tensorflow as tf

    params, header = r.params, dict(r.header, seed=args.seed)
    try:
        prev = check_model_dir(model_dir, params, header)
        steps_set = args.steps is not None or any(s.startswith("trainer.train_steps=") for s in args.sets)
        if prev is not None and not steps_set:
            # Resuming without --steps keeps the run's own length (it may have been extended before).
            old_steps = prev["params"].trainer.train_steps
            if old_steps != params.trainer.train_steps:
                r = render(args.config, args.records, args.label_map, sets + [f"trainer.train_steps={old_steps}"],
                           auto_size=args.auto_size)
                params, header = r.params, dict(r.header, seed=args.seed)
        from od.model.budget import resume_budget

        budget_s = resume_budget(args.time, prev, params, header, model_dir, steps_set,
                                 {x.partition("=")[0].strip() for x in args.sets})
        check_record_labels(params, params.task.model.num_classes, r.report, header.get("task", "detection"))
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE

    strategy, hw = pick_strategy(params, args.tpu, args.mixed_precision)
    if args.no_eval:
        params.override({"trainer": {"best_checkpoint_export_subdir": ""}}, is_strict=True)

    start = latest_step(model_dir)
    # Pretrained weights: resolved (downloaded/verified) now, restored only on a fresh model dir.
    init_path = None
    ckpt_name = header.get("pretrained_checkpoint")
    if ckpt_name and start > 0:
        print(f"od: resuming {model_dir} from step {start}; pretrained checkpoint {ckpt_name} not needed",
              file=sys.stderr)
        if prev is not None and prev["params"].task.init_checkpoint:
            params.override({"task": {"init_checkpoint": prev["params"].task.init_checkpoint}}, is_strict=True)
    elif ckpt_name:
        from od.model.checkpoints import CheckpointError, resolve

        try:
            init_path = resolve(ckpt_name)
        except CheckpointError as e:
            error(str(e))
            return EXIT_USAGE
        params.override({"task": {"init_checkpoint": init_path}}, is_strict=True)
    params.validate()
    params.lock()

    total = params.trainer.train_steps
    if start >= total and budget_s is None:
        print(f"od: {model_dir} already trained to step {start} (train_steps={total}); "
              f"pass a larger --steps to extend it.", file=sys.stderr)
        return EXIT_OK

    tf.io.gfile.makedirs(model_dir)
    paths.write_text(paths.join(model_dir, PIPELINE_FILE), config_yaml(params))
    paths.write_text(paths.join(model_dir, HEADER_FILE), header_yaml(header))
    from od.io.label_map import format_label_map

    paths.write_text(paths.join(model_dir, LABEL_MAP_FILE), format_label_map(r.label_map))

    from official.core import task_factory, train_lib
    from official.modeling import performance

    if params.runtime.mixed_precision_dtype:
        performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)

    length = total if budget_s is None else f"? (--time {format_duration(budget_s)})"
    print(f"od: training {header['template']} on {hw}: {len(r.label_map)} classes, "
          f"steps {start}->{length}, batch {params.task.train_data.global_batch_size}, "
          f"input {params.task.model.input_size[0]}x{params.task.model.input_size[1]}, "
          f"seed {'none' if args.seed is None else args.seed}, model dir {model_dir}" + (" (resuming)" if start else ""), file=sys.stderr)

    if args.seed is not None:
        # Same seed, same initial weights and augmentation (Python, NumPy and TensorFlow generators).
        # Measured on the demo (2 cores, 80 steps): 1.78 steps/s unseeded, 1.47 seeded (the data seed).
        tf.keras.utils.set_random_seed(args.seed)
        if not args.tpu and not tf.config.list_physical_devices("GPU"):
            from od.model.serving import is_retinanet

            if is_retinanet(params):
                # TF's deterministic rewrite of the RetinaNet parser's tf.data graph fails
                # (MultiDeviceIteratorInit: "'^args_3' is not found"), so it is left off there.
                print("od: note: --seed with a RetinaNet template: the same initial weights and data order, but "
                      "augmentation randoms are drawn in thread order, so runs may differ from step 2 on",
                      file=sys.stderr)
            else:
                # Without it the parallel input map draws augmentation randoms in thread order, so runs
                # differ from step 2 on.
                tf.config.experimental.enable_op_determinism()
    mode = "train" if args.no_eval else "train_and_eval"
    global_step_holder: dict = {}

    class _Step:
        def numpy(self):
            return global_step_holder["v"].numpy()

    progress = Progress(_Step(), total, start, quiet=args.quiet)
    evals = EvalHook(progress, _Step())
    # The runner builds the trainer; grab its global step for the hooks.
    runner_cls = train_lib.OrbitExperimentRunner

    def fit(p, clock=None):
        """Build the task and runner for config ``p`` (restoring the model dir's checkpoint) and train.
        Called twice with --time: the probe (reporting to ``clock``), then the run proper."""
        nonlocal start
        if clock is not None:
            clock.building()
        with strategy.scope():
            task = task_factory.get_task(p.task, logging_dir=model_dir)
        if init_path:
            from od.model.finetune import restore_for_finetune

            modules = header.get("init_checkpoint_modules") or ["backbone", "decoder"]
            if header.get("task") == "classification":
                modules = ["backbone"]  # the head is the user's classes: always new

            def _initialize(model, _path=init_path, _modules=modules):
                restore_for_finetune(model, _path, modules=_modules)

            task.initialize = _initialize
        progress.total = p.trainer.train_steps
        progress.loops.clear()  # a new runner: its first loop traces again
        with strategy.scope():
            runner = runner_cls(
                distribution_strategy=strategy, task=task, mode=mode, params=p, model_dir=model_dir,
                train_actions=[progress] + ([clock.on_train] if clock else []),
                eval_actions=[] if args.no_eval else [evals] + ([clock.on_eval] if clock else []),
            )
            global_step_holder["v"] = runner.trainer.global_step
            progress.last_step = int(runner.trainer.global_step.numpy())
            restored_from = progress.last_step
            if restored_from != start and not progress.history:
                start = restored_from
            if progress.bar is not None:
                progress.bar.total = progress.total
                progress.bar.n = progress.last_step
                progress.bar.last_print_n = progress.last_step
            progress.t_last = time.monotonic()
            progress.c_last = _cpu()
            if clock is not None:
                clock.ready(lambda: runner.trainer.global_step.numpy(), runner.checkpoint_manager)
        runner.run()
        if clock is not None:
            clock.finished()
        return runner

    def save_config(p, rec: dict) -> None:
        header["time_budget"] = rec
        paths.write_text(paths.join(model_dir, PIPELINE_FILE), config_yaml(p))
        paths.write_text(paths.join(model_dir, HEADER_FILE), header_yaml(header))

    def rerender(steps: int):
        # the label map as the first render found it: --label-map, or else report.json's classes (a file it
        # names outside --records is never opened, and may not exist from here)
        return render(args.config, args.records, args.label_map, sets + [f"trainer.train_steps={steps}"],
                      check_records=False).params

    t0 = time.monotonic()
    status = EXIT_OK
    chosen = probe_runner = None
    try:
        if budget_s is None:
            fit(params)
        else:
            from od.model.budget import train_within_budget

            params, chosen, _, probe_runner = train_within_budget(
                budget_s, t_start, start, params, fit, rerender, save_config, evaluate=not args.no_eval)
            total = params.trainer.train_steps
            _budgeted = True
    except NonFiniteLoss as e:
        progress.close()
        error(f"{e}. Training stopped; the last good checkpoint is kept in {model_dir}. Check the data "
              f"report ({paths.join(args.records, 'report.json')}, `python -m od.inspect`) for bad boxes, "
              "then lower the learning rate (--set trainer.optimizer_config.learning_rate...) and re-run.")
        return EXIT_FAILURES
    except KeyboardInterrupt:
        progress.close()
        print(f"\nod: interrupted; re-run the same command to resume from the last checkpoint in {model_dir}",
              file=sys.stderr)
        return 130
    finally:
        progress.close()
    wall = time.monotonic() - t0
    ran = format_duration(time.monotonic() - t_start)
    budget_rows = [] if chosen is None else [
        ["time budget", f"{format_duration(budget_s)}: {chosen.train_steps} steps, od.train ran {ran}"]]
    summarize(model_dir, progress, evals, start, total, wall, params.trainer.best_checkpoint_eval_metric or "AP50",
              budget_rows)
    del probe_runner  # held to here, out of the budget's time (see train_within_budget)
    return status


def summarize(model_dir: str, progress: Progress, evals: EvalHook, start: int, total: int, wall: float,
              best_metric: str = "AP50", extra_rows: Sequence[list] = ()) -> None:
    rows: list[list[object]] = []
    done = (progress.history[-1][0] if progress.history else start) - start
    sps = done / progress.train_seconds if progress.train_seconds else 0.0
    rows.append(["steps", f"{start} -> {start + done}"])
    rows.append(["wall time", f"{wall / 60:.1f} min"])
    rows.append(["train steps/s (incl. tracing)", f"{sps:.2f}"])
    steady = progress.steady()
    if steady:
        rows.append(["train steps/s (steady)", f"{steady[0]:.2f}"])
        rows.append(["CPU s/step (all threads)", f"{steady[1]:.2f}"])
    if progress.history:
        last = progress.history[-1][1]
        for k in ("total_loss", "loss", "learning_rate"):
            if k in last:
                rows.append([f"final {k}", f"{last[k]:.4g}"])
    if evals.results:
        step, m = evals.results[-1]
        keys = ("accuracy",) + tuple(k for k in m if k.startswith("top_") and k.endswith("_accuracy")) \
            if "accuracy" in m else ("AP50", "AP")
        for k in keys:
            rows.append([f"val {k} @ {step}", f"{m.get(k, float('nan')):.3f}"])
        best_step, best = max(evals.results, key=lambda t: t[1].get(best_metric, -1))
        rows.append([f"best val {best_metric}", f"{best.get(best_metric, float('nan')):.3f} @ step {best_step}"])
    rows.extend(extra_rows)
    rows.append(["model dir", model_dir])
    print_table(["od.train", "value"], rows, file=sys.stderr)


def _check_time(ap: argparse.ArgumentParser, args) -> bool:
    """--time parsed here, not by argparse, so a bad value is od's one error line (after the usage)."""
    if args.time is None:
        return True
    problem = None
    try:
        args.time = duration(args.time)
    except argparse.ArgumentTypeError as e:
        problem = f"argument --time: {e}"
    if args.steps is not None or any(x.partition("=")[0].strip() == "trainer.train_steps" for x in args.sets):
        problem = ("--time chooses the number of steps itself: give --time or --steps "
                   "(--set trainer.train_steps), not both")
    if problem:
        ap.print_usage(sys.stderr)
        error(problem)
    return problem is None


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if not _check_time(ap, args):
        return EXIT_USAGE
    quiet_tensorflow(args.verbose)
    # --quiet: od's lines go to stderr; stdout is only third-party printing (pycocotools' table at
    # every validation, from Model Garden's COCOEvaluator).
    with third_party_quiet(args.quiet):
        return run(args)


def exit_after_budget(rc: int) -> None:
    """After a --time run, leave without Python's teardown of the runners' TensorFlow objects: on a
    busy 2-core CPU it took 10-50 s (longer the longer the run), time the budget cannot measure.
    Checkpoints, summaries (flushed by Orbit at every write), od.yaml and the streams are all written
    by then. Only from the command line: a caller of main() keeps its interpreter."""
    if _budgeted:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


_budgeted = False  # set by run() once a --time run has trained

if __name__ == "__main__":
    rc = main()
    exit_after_budget(rc)
    sys.exit(rc)
