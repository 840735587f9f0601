"""Does od.train add overhead, and can the input pipeline keep up? (not a timed test)

In one run:
1. the same experiment (the CPU template on the demo records) trained N steps by ``python -m od.train``
   and by Model Garden's ``train_lib.run_experiment`` called directly; steps/s of both are read from
   the ``steps_per_second`` Orbit writes to each run's TensorBoard summaries (the same source for
   both), the first loop (graph tracing) left out. Target: ratio >= 0.97.
2. the input pipeline alone (Model Garden's decoder + parser + batching, no model) in images/s,
   against the model's images/s (steps/s x batch). Target: >= 3x.

    python benchmarks/train_bench.py [--records DIR] [--steps 60] [--config faster_rcnn_resnet18_fpn_cpu]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def _steps_per_second(model_dir: str) -> tuple[float, int]:
    """Median steps/s over the loops in <model_dir>/train summaries (first loop = tracing, skipped)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    values: dict[int, float] = {}
    for f in sorted(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))):
        for rec in tf.data.TFRecordDataset(f):
            e = event_pb2.Event.FromString(rec.numpy())
            for v in e.summary.value:
                if v.tag == "steps_per_second":
                    values[e.step] = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
    loops = [values[s] for s in sorted(values)][1:]
    if not loops:
        raise SystemExit(f"no steps_per_second summaries in {model_dir}/train")
    return statistics.median(loops), len(loops)


def _direct(model_dir: str, out: str) -> None:
    """Model Garden alone: the pipeline.yaml od wrote, run by train_lib with nothing of od's around it."""
    import yaml
    from official.common import distribute_utils
    from official.core import exp_factory, task_factory, train_lib

    import official.vision  # noqa: F401

    header = yaml.safe_load(Path(model_dir, "od.yaml").read_text())
    params = exp_factory.get_exp_config(header["base_experiment"])
    params.override(yaml.safe_load(Path(model_dir, "pipeline.yaml").read_text()), is_strict=True)
    params.override({"trainer": {"best_checkpoint_export_subdir": ""}}, is_strict=True)
    params.validate()
    params.lock()
    strategy = distribute_utils.get_distribution_strategy("one_device", num_gpus=0)
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=out)
    train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train", params=params, model_dir=out)


def _input_rate(model_dir: str, batches: int) -> float:
    """images/s of the training input pipeline alone (decode + augment + anchor labelling + batch)."""
    from od.model.model_dir import load_model_dir

    import tensorflow as tf
    from official.core import task_factory

    params, _ = load_model_dir(model_dir)
    task = task_factory.get_task(params.task)
    ds = task.build_inputs(params.task.train_data)
    it = iter(ds)
    next(it)  # build + first batch
    bs = params.task.train_data.global_batch_size
    t0 = time.perf_counter()
    for _ in range(batches):
        images, _labels = next(it)
        tf.debugging.assert_all_finite(images[:1, :1, :1, :1], "")
    return batches * bs / (time.perf_counter() - t0)


def train_od(config: str, records: str, model_dir: str, steps: int, *extra: str) -> str:
    """``python -m od.train`` (no eval, steps_per_loop 10) into ``model_dir``; returns it."""
    sets = ["--set", "trainer.steps_per_loop=10", "--set", "trainer.summary_interval=10"]
    subprocess.run([sys.executable, "-m", "od.train", "--config", config, "--records", records,
                    "--model-dir", model_dir, "--steps", str(steps), "--no-eval", "--quiet", *sets, *extra],
                   cwd=REPO, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return model_dir


def compare_with_train_lib(config: str, records: str, steps: int, repeats: int, work: str) -> tuple[list, list]:
    """steps/s of od.train and of train_lib on od.train's own pipeline.yaml, ``repeats`` rounds each;
    the first od run is ``<work>/od0``."""

    def run_mg(i: int) -> str:
        out = f"{work}/direct{i}"
        subprocess.run([sys.executable, __file__, "--direct", f"{work}/od0", "--direct-out", out], cwd=REPO,
                       env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return out

    def run_od(i: int) -> float:
        return _steps_per_second(train_od(config, records, f"{work}/od{i}", steps))[0]

    # Round 1 od first, round 2 train_lib first, ... so a drifting background load hits both sides.
    od_runs, mg_runs = [], []
    for i in range(repeats):
        if i % 2 == 0:
            od_runs.append(run_od(i))
            mg_runs.append(_steps_per_second(run_mg(i))[0])
        else:
            mg_runs.append(_steps_per_second(run_mg(i))[0])
            od_runs.append(run_od(i))
        print(f"round {i + 1}: od.train {od_runs[-1]:.3f} steps/s, train_lib {mg_runs[-1]:.3f} steps/s", flush=True)
    return od_runs, mg_runs


def _records(args) -> str:
    if args.records:
        return args.records
    d = tempfile.mkdtemp(prefix="od_bench_")
    subprocess.run([sys.executable, "-m", "od.demo", "--out", f"{d}/voc"], cwd=REPO, env=ENV, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "od.records", f"{d}/voc", "--out", f"{d}/records", "--label-map",
                    f"{d}/label_map.pbtxt", "--quiet"], cwd=REPO, env=ENV, check=True, capture_output=True)
    return f"{d}/records"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", default=None, help="records folder (default: generate the demo in a temp dir)")
    ap.add_argument("--config", default="faster_rcnn_resnet18_fpn_cpu")
    ap.add_argument("--steps", type=int, default=60, help="train steps per run (steps_per_loop 10)")
    ap.add_argument("--input-batches", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2, help="rounds (od, train_lib), alternating order")
    ap.add_argument("--direct", help=argparse.SUPPRESS)
    ap.add_argument("--direct-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.direct:
        _direct(args.direct, args.direct_out)
        return 0

    records = _records(args)
    work = tempfile.mkdtemp(prefix="od_train_bench_")
    od_runs, mg_runs = compare_with_train_lib(args.config, records, args.steps, args.repeats, work)
    od_dir = f"{work}/od0"
    od_sps, mg_sps = statistics.median(od_runs), statistics.median(mg_runs)
    n1, n2 = len(od_runs), len(mg_runs)

    from od.model.model_dir import load_model_dir

    params, _ = load_model_dir(od_dir)
    bs = params.task.train_data.global_batch_size
    in_rate = _input_rate(od_dir, args.input_batches)
    model_rate = od_sps * bs

    print()
    print(f"experiment: {args.config}, batch {bs}, input {params.task.model.input_size[:2]}, {args.steps} steps, "
          f"{os.cpu_count()} CPUs")
    print(f"od.train                 {od_sps:7.3f} steps/s  (median over {n1} runs of each run's median loop)")
    print(f"Model Garden train_lib   {mg_sps:7.3f} steps/s  (median over {n2} runs)")
    ratios = sorted(o / m for o, m in zip(od_runs, mg_runs))
    print(f"ratio od / train_lib     {statistics.median(ratios):7.3f}   (median of per-round ratios "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; target >= 0.97)")
    print(f"input pipeline alone     {in_rate:7.1f} images/s")
    print(f"model (training)         {model_rate:7.1f} images/s")
    print(f"ratio input / model      {in_rate / model_rate:7.2f}   (target >= 3)")
    print("note: on a shared machine, run it when nothing else is busy; both runs see the same load only "
          "if it is steady.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
