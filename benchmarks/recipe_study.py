"""Recipe study for a detection template: which settings give the best val AP within one fixed training budget?

Every setting is one ``python -m od.train --time BUDGET --set ...`` run from scratch on the same records,
then ``python -m od.evaluate --checkpoint latest`` on their val split. A run is pinned to one core with one
TensorFlow thread (``taskset -c CORE``, TF_NUM_INTRAOP/INTEROP_THREADS=1), so ``--time 10m`` is exactly 10
CPU-minutes and other work on the machine's other cores does not change how many steps a setting gets.
Results go to OUT/results.jsonl (one line per setting, appended as each finishes, so a study can be resumed
and extended) and OUT/recipe.md (the table the README quotes). Not a timed test.

    python benchmarks/recipe_study.py --records RECORDS --out OUT [--time 10m] [--only base,in320,...]
    python benchmarks/recipe_study.py --out OUT --table      # rewrite recipe.md from results.jsonl

One run per setting: from-scratch training is noisy (the spread is stated in the README next to the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> (what it changes, --set overrides). "base" is the template as shipped when the study was made.
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "base": ("template before the study (256 px, P3-P6, lr 0.04, warm-up 100)", []),
    "base2": ("the same as base, a second run: the run-to-run spread of training from scratch", []),
    "lr02": ("lr 0.02 (half)", ["trainer.optimizer_config.learning_rate.cosine.initial_learning_rate=0.02"]),
    "in320": ("input 320 px", ["task.model.input_size=[320,320,3]"]),
    "in384": ("input 384 px", ["task.model.input_size=[384,384,3]"]),
    "levels37": ("FPN P3-P7, anchor size 3 (24-384 px anchors, for large objects)",
                 ["task.model.max_level=7", "task.model.anchor.anchor_size=3.0"]),
    "lr08": ("lr 0.08, warm-up 50 steps", [
        "trainer.optimizer_config.learning_rate.cosine.initial_learning_rate=0.08",
        "trainer.optimizer_config.warmup.linear.warmup_steps=50"]),
    "boxreg": ("class-agnostic box head, box loss weight 2, RoI sampler fg IoU 0.6", [
        "task.model.detection_head.class_agnostic_bbox_pred=true",
        "task.losses.frcnn_box_weight=2.0",
        "task.model.roi_sampler.foreground_iou_threshold=0.6",
        "task.model.roi_sampler.background_iou_high_threshold=0.6"]),
    "cascade": ("Cascade R-CNN: second box stage at IoU 0.7", [
        "task.model.detection_head.class_agnostic_bbox_pred=true",
        "task.model.roi_sampler.cascade_iou_thresholds=[0.7]"]),
    "huber01": ("box loss closer to L1: Huber delta 0.1 in the second stage (was 1.0)", [
        "task.losses.frcnn_huber_loss_delta=0.1"]),
    "scale52": ("scale jitter 0.5-2.0 (was 0.8-1.25)", [
        "task.train_data.parser.aug_scale_min=0.5", "task.train_data.parser.aug_scale_max=2.0"]),
    "randaug": ("RandAugment (2 ops, magnitude 5) on top of flip + scale jitter", [
        "task.train_data.parser.aug_type={type: randaug, randaug: {num_layers: 2, magnitude: 5}}"]),
    "ema": ("EMA of the weights (decay 0.99, dynamic)", [
        "trainer.optimizer_config.ema={average_decay: 0.99, dynamic_decay: true}"]),
}
# Reruns of a setting (the run-to-run spread): the same overrides under another name.
for _rerun, _of, _what in (("cascade2", "cascade", "the same as cascade, a second run"),
                           ("base4", "base", "the same as base, a fourth run (beside huber01b)"),
                           ("huber01b", "huber01", "the same as huber01, a second run (beside base4)")):
    SETTINGS[_rerun] = (_what, SETTINGS[_of][1])


def run_one(name: str, overrides: list[str], args) -> dict:
    model_dir = Path(args.out) / "runs" / name
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(REPO))
    pin = ["taskset", "-c", str(args.core)] if args.core is not None else []
    cmd = [*pin, sys.executable, "-m", "od.train", "--config", args.config, "--records", args.records,
           "--model-dir", str(model_dir), "--time", args.time, "--no-eval", "--quiet"]
    for o in [*args.set, *overrides]:
        cmd += ["--set", o]
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    train_s = time.time() - t0
    eval_dir = model_dir / "eval"
    subprocess.run([*pin, sys.executable, "-m", "od.evaluate", "--model-dir", str(model_dir), "--checkpoint", "latest",
                    "--out", str(eval_dir), "--no-plots", "--quiet", "--force"], check=True, env=env)
    import yaml

    metrics = json.loads((eval_dir / "metrics.json").read_text())
    od_yaml = yaml.safe_load((model_dir / "od.yaml").read_text())
    tb = od_yaml.get("time_budget") or {}
    coco = metrics.get("coco", metrics)
    return {
        "name": name, "what": SETTINGS.get(name, (name, []))[0], "overrides": overrides, "budget": args.time,
        "steps": tb.get("train_steps"), "steps_per_s": (tb.get("run") or {}).get("steps_per_s") or tb.get("steps_per_s"),
        "train_wall_s": round(train_s, 1), "AP": coco.get("AP"), "AP50": coco.get("AP50"), "AP75": coco.get("AP75"),
        "APs": coco.get("APs"), "APm": coco.get("APm"), "APl": coco.get("APl"), "records": args.records,
        "config": args.config, "core": args.core,
    }


def load(out: Path) -> list[dict]:
    f = out / "results.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["name"] == "base"), None)
    lines = ["| setting | what changes | steps in budget | steps/s | val AP | AP50 | AP75 | AP75 / base |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rel = f"{r['AP75'] / base['AP75']:.2f}x" if base and base.get("AP75") else "-"
        sps = f"{r['steps_per_s']:.2f}" if r.get("steps_per_s") else "-"
        lines.append(f"| `{r['name']}` | {r['what']} | {r['steps']} | {sps} | {r['AP']:.3f} | {r['AP50']:.3f} "
                     f"| {r['AP75']:.3f} | {rel} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", help="records folder (od.records output)")
    ap.add_argument("--out", required=True, help="study folder: runs/, results.jsonl, recipe.md")
    ap.add_argument("--config", default="faster_rcnn_resnet18_fpn_cpu")
    ap.add_argument("--time", default="10m", help="training budget per setting (default 10m on one core)")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin each run to (-1: no pinning)")
    ap.add_argument("--only", default=None, help="comma-separated setting names (default: all)")
    ap.add_argument("--combine", default=None, help="NAME=a+b+c: one more setting, the overrides of a, b, c together")
    ap.add_argument("--set", action="append", default=[], help="extra --set for every run")
    ap.add_argument("--table", action="store_true", help="only rewrite recipe.md from results.jsonl")
    args = ap.parse_args()
    args.core = None if args.core is not None and args.core < 0 else args.core
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        cname, parts = args.combine.split("=", 1)
        names = parts.split("+")
        SETTINGS[cname] = (" + ".join(names), [o for n in names for o in SETTINGS[n][1]])
    if not args.table:
        if not args.records:
            ap.error("--records is required to run settings")
        todo = args.only.split(",") if args.only else list(SETTINGS)
        done = {r["name"] for r in load(out)}
        for name in todo:
            if name in done:
                print(f"{name}: already in results.jsonl, skipped")
                continue
            row = run_one(name, SETTINGS[name][1], args)
            print(json.dumps(row), flush=True)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    rows = load(out)
    (out / "recipe.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
