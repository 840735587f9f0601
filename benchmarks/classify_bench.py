"""Classification speed targets, measured side by side in one run (not a timed test).

1. od.train against Model Garden's ``train_lib`` on the same classification experiment (the CPU
   template on generated folder-per-class records), steps/s from each run's TensorBoard summaries
   (``train_bench.compare_with_train_lib``). Target: ratio >= 0.97.
2. frozen backbone (``--set task.freeze_backbone=true``, retrain.py's way: only the head learns)
   against full fine-tuning, both started from the same self-made checkpoint (``--init-checkpoint``),
   alternating rounds. Frozen must be much faster per step; the ratio is printed.
3. od.classify's per-image path (``Classifier.probabilities`` + ``top_k`` from a PIL image) against
   calling the exported ``serving_default`` signature directly, interleaved, plus od's own work with
   the model call stubbed out. Target: overhead <= 10%.

    python benchmarks/classify_bench.py [--config classifier_resnet18_cpu] [--steps 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import ENV, REPO, _steps_per_second, compare_with_train_lib, train_od  # noqa: E402

sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _sh(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, check=True, capture_output=True)


def make_records(work: str, images: int) -> str:
    _sh("-m", "od.demo", "--task", "classify", "--out", f"{work}/data", "--num-images", str(images))
    _sh("-m", "od.records", f"{work}/data", "--out", f"{work}/records", "--label-map",
        f"{work}/records/label_map.pbtxt", "--quiet")
    return f"{work}/records"


def frozen_vs_full(config: str, records: str, init: str, steps: int, repeats: int, work: str) -> tuple[list, list]:
    """steps/s of fine-tuning from ``init`` with the backbone frozen and with everything training."""
    frozen, full = [], []
    for i in range(repeats):
        runs = [("frozen", frozen), ("full", full)][:: 1 if i % 2 == 0 else -1]
        for name, acc in runs:
            d = train_od(config, records, f"{work}/{name}{i}", steps, "--init-checkpoint", init,
                         "--set", f"task.freeze_backbone={'true' if name == 'frozen' else 'false'}")
            acc.append(_steps_per_second(d)[0])
        print(f"round {i + 1}: frozen {frozen[-1]:.3f} steps/s, full fine-tuning {full[-1]:.3f} steps/s", flush=True)
    return frozen, full


def classify_overhead(model_dir: str, work: str, runs: int) -> dict:
    """od.classify's inference path against the bare signature on one demo image."""
    import numpy as np
    import tensorflow as tf

    from od.data.images import open_image_rgb
    from od.model.classifier import Classifier
    from od.model.source import resolve_labels, resolve_model

    export = f"{work}/exported"
    _sh("-m", "od.export", "--model-dir", model_dir, "--out", export, "--force", "--quiet")
    source = resolve_model(export)
    id_to_name, _ = resolve_labels(source, None)
    clf = Classifier.load(source, id_to_name)
    fn = tf.saved_model.load(source.saved_model).signatures["serving_default"]
    (key,) = fn.structured_input_signature[1].keys()
    image = next(Path(work, "data").rglob("*.jpg"))
    pil = open_image_rgb(image)
    arr = np.asarray(pil)

    def direct():
        return fn(**{key: tf.constant(arr[None])})

    def od_path():
        return clf.top_k(clf.probabilities(pil), 5)

    for _ in range(3):
        direct(), od_path()
    t_direct, t_od = [], []
    for i in range(runs):
        for f, acc in ((direct, t_direct), (od_path, t_od))[:: 1 if i % 2 == 0 else -1]:
            t = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t)
    cached = direct()
    real = clf._fn
    clf._fn = lambda **kw: cached
    own = []
    try:
        for _ in range(200):
            t = time.perf_counter()
            od_path()
            own.append(time.perf_counter() - t)
    finally:
        clf._fn = real
    md, mo, me = statistics.median(t_direct), statistics.median(t_od), statistics.median(own)
    return {"image": f"{arr.shape[1]}x{arr.shape[0]}", "direct": md, "od": mo, "own": me, "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="classifier_resnet18_cpu", help="classification template")
    ap.add_argument("--records", help="classification records (default: generate the demo in a temp dir)")
    ap.add_argument("--images", type=int, default=480, help="demo images when generating (default 480)")
    ap.add_argument("--steps", type=int, default=60, help="train steps per run (steps_per_loop 10)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds per comparison, alternating order")
    ap.add_argument("--runs", type=int, default=50, help="timed calls per path for the od.classify latency")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="od_classify_bench_")
    records = args.records or make_records(work, args.images)

    od_runs, mg_runs = compare_with_train_lib(args.config, records, args.steps, args.repeats, work)
    # The first od run is a checkpoint of this very template: fine-tuning starts from it.
    frozen, full = frozen_vs_full(args.config, records, f"{work}/od0", args.steps, args.repeats, work)
    lat = classify_overhead(f"{work}/od0", work, args.runs)

    from od.model.model_dir import load_model_dir

    params, _ = load_model_dir(f"{work}/od0")
    print()
    print(f"experiment: {args.config}, batch {params.task.train_data.global_batch_size}, input "
          f"{list(params.task.model.input_size[:2])}, {args.steps} steps a run, {args.repeats} rounds")
    r_mg = statistics.median(o / m for o, m in zip(od_runs, mg_runs))
    r_fz = statistics.median(f / g for f, g in zip(frozen, full))
    print(f"od.train / train_lib        {r_mg:6.3f}  (od {statistics.median(od_runs):.3f}, train_lib "
          f"{statistics.median(mg_runs):.3f} steps/s; target >= 0.97)")
    print(f"frozen / full fine-tuning   {r_fz:6.3f}  (frozen {statistics.median(frozen):.3f}, full "
          f"{statistics.median(full):.3f} steps/s)")
    print(f"od.classify / signature     {lat['od'] / lat['direct']:6.3f}  ({lat['od'] * 1000:.2f} vs "
          f"{lat['direct'] * 1000:.2f} ms on {lat['image']}, medians of {lat['runs']} interleaved; target <= 1.10)")
    print(f"od's own work per image     {lat['own'] * 1000:6.3f} ms = {lat['own'] / lat['direct'] * 100:.2f}% of a "
          "model call (model call stubbed, median of 200)")
    print("note: on a shared machine, run it when nothing else is busy.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
