"""CPU inference: per-image latency and val AP of the Faster R-CNN CPU template's SavedModel against the edge
template's SavedModel, TFLite float32 and TFLite int8 (not a timed test).

Latency is od's own path (:func:`od.model.inference.load_detector` + ``detect``), batch 1, steady state:
every model first sees ``--warmup`` images, then the models take turns image by image over ``--rounds``
passes of the val images, so a busy machine slows them all alike; the table gives the median ms/image
and each model's ratio to the first. Val AP comes from ``python -m od.evaluate --model EXPORT --runtime R``
on the same records. ``--threads`` adds the SavedModel's latency under TensorFlow thread-pool settings
(TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS), each in its own process.

    python benchmarks/edge_bench.py --records RECORDS \\
        --model frcnn=exported/frcnn:savedmodel --model edge=exported/edge_int8:savedmodel \\
        --model edge-f32=exported/edge_f32:tflite --model edge-int8=exported/edge_int8:tflite [--threads]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))


def val_images(records: str, limit: int | None):
    import numpy as np
    from PIL import Image

    from od.io.example import decode_example
    from od.io.schema import split_files
    from od.io.tfrecord import iter_records

    out = []
    for rec in iter_records(split_files(records, "val")):
        out.append(np.asarray(Image.open(io.BytesIO(decode_example(rec).image_bytes)).convert("RGB")))
        if limit and len(out) >= limit:
            break
    return out


class HostResized:
    """The SavedModel fed an image already shrunk on the host (PIL bilinear) to fit the model's input, keeping
    the aspect ratio: normalised boxes stay valid, the graph's own resize has little left to do."""

    def __init__(self, detector, input_size):
        self.d, self.size = detector, input_size

    def detect(self, image, score_threshold=0.5):
        import numpy as np
        from PIL import Image

        h, w = image.shape[:2]
        s = min(self.size[0] / h, self.size[1] / w)
        small = np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
        return self.d.postprocess(self.d.raw(small), w, h, score_threshold)


class FixedCanvas:
    """The SavedModel fed one fixed shape: the image resized and pasted on the model's padded canvas on the
    host (as the .tflite input is made), boxes mapped back to the original image."""

    def __init__(self, detector, info):
        self.d, self.size = detector, info["input_size"]
        self.canvas = info.get("padded_input_size") or info["input_size"]

    def detect(self, image, score_threshold=0.5):
        from od.model.tflite import canvas_boxes_to_original, tflite_canvas

        h, w = image.shape[:2]
        canvas, scale = tflite_canvas(image, self.size, self.canvas)
        raw = self.d.raw(canvas)
        raw["detection_boxes"] = canvas_boxes_to_original(raw["detection_boxes"], scale, self.canvas, h, w)
        return self.d.postprocess(raw, w, h, score_threshold)


def _load(path: str, rt: str):
    from od.model.inference import load_detector

    if rt in ("savedmodel+hostresize", "savedmodel+canvas"):
        info = json.loads(Path(path, "model.json").read_text())
        sm = load_detector(path, runtime="savedmodel")
        return HostResized(sm, info["input_size"]) if rt == "savedmodel+hostresize" else FixedCanvas(sm, info)
    return load_detector(path, runtime=rt)


def latencies(models: list[tuple[str, str, str]], images, warmup: int, rounds: int) -> dict[str, list[float]]:
    dets = {name: _load(path, rt) for name, path, rt in models}
    for d in dets.values():
        for im in images[:warmup]:
            d.detect(im, score_threshold=0.0)
    times: dict[str, list[float]] = {name: [] for name in dets}
    for _ in range(rounds):
        for im in images:
            for name, d in dets.items():
                t0 = time.perf_counter()
                d.detect(im, score_threshold=0.0)
                times[name].append(time.perf_counter() - t0)
    return times


def evaluate(path: str, runtime: str, records: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "od.evaluate", "--model", path, "--runtime", runtime, "--records", records,
                        "--out", out, "--no-plots", "--quiet"], check=True, env=ENV, capture_output=True)
        m = json.loads(Path(out, "metrics.json").read_text())
    return {k: m.get(k) for k in ("AP", "AP50", "AP75")}


def threads_child(path: str, records: str, warmup: int, rounds: int, limit: int) -> None:
    images = val_images(records, limit)
    t = latencies([("m", path, "savedmodel")], images, warmup, rounds)["m"]
    print(json.dumps({"ms": 1000 * statistics.median(t)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", required=True, help="records folder; its val split is used")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=EXPORT:RUNTIME",
                    help="a model to compare (runtime savedmodel, tflite, savedmodel+hostresize: the image shrunk "
                    "to the model's input on the host first, or savedmodel+canvas: one fixed input shape, the "
                    "padded canvas made on the host); the first is the reference")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="at most N val images")
    ap.add_argument("--threads", action="store_true", help="also the first model under TF thread-pool settings")
    ap.add_argument("--thread-rounds", type=int, default=3, help="passes over the thread settings (median kept)")
    ap.add_argument("--no-ap", action="store_true", help="latency only")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--threads-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads_child:
        threads_child(args.threads_child, args.records, args.warmup, args.rounds, args.limit or 20)
        return 0
    models = []
    for spec in args.model:
        name, rest = spec.split("=", 1)
        path, rt = rest.rsplit(":", 1)
        models.append((name, path, rt))
    images = val_images(args.records, args.limit)
    times = latencies(models, images, args.warmup, args.rounds)
    ref = statistics.median(times[models[0][0]])
    rows = []
    for name, path, rt in models:
        ms = 1000 * statistics.median(times[name])
        row = {"model": name, "export": path, "runtime": rt, "ms_per_image": round(ms, 2),
               "speedup_vs_first": round(1000 * ref / ms, 2), "images": len(images), "rounds": args.rounds}
        if not args.no_ap and rt in ("savedmodel", "tflite"):
            row.update(evaluate(path, rt, args.records))
        rows.append(row)
    print(f"{len(images)} val images x {args.rounds} rounds, batch 1, {os.cpu_count()} cores, models taking turns")
    print("| model | runtime | ms / image | speed-up vs first | val AP | AP50 | AP75 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        aps = " | ".join(f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in ("AP", "AP50", "AP75"))
        print(f"| {r['model']} | {r['runtime']} | {r['ms_per_image']:.1f} | {r['speedup_vs_first']:.2f}x | {aps} |")
    result = {"rows": rows}
    if args.threads:
        # each setting in its own process (TF reads the variables once, at start); the settings take turns
        # over --thread-rounds passes so a busy machine slows them alike; the median of the passes is kept
        settings = (("", ""), ("2", "1"), ("1", "1"), ("2", "2"), ("1", "2"))
        seen: dict[tuple[str, str], list[float]] = {s: [] for s in settings}
        for _ in range(args.thread_rounds):
            for intra, inter in settings:
                env = dict(ENV, TF_NUM_INTRAOP_THREADS=intra, TF_NUM_INTEROP_THREADS=inter)
                env = {k: v for k, v in env.items() if v != ""}
                p = subprocess.run([sys.executable, __file__, "--records", args.records, "--model", args.model[0],
                                    "--threads-child", models[0][1], "--warmup", str(args.warmup), "--rounds",
                                    str(args.rounds), "--limit", str(args.limit or 20)],
                                   env=env, capture_output=True, text=True, check=True)
                seen[(intra, inter)].append(json.loads(p.stdout.strip().splitlines()[-1])["ms"])
        trow = [{"intra": i or "default", "inter": j or "default", "ms_per_image": round(statistics.median(v), 2),
                 "passes": [round(x, 2) for x in v]} for (i, j), v in seen.items()]
        print(f"\n{models[0][0]} SavedModel under TF thread pools (one process each, taking turns, median of {args.thread_rounds}):")
        print("| intra-op | inter-op | ms / image |\n|---|---|---:|")
        for t in trow:
            print(f"| {t['intra']} | {t['inter']} | {t['ms_per_image']:.1f} |")
        result["threads"] = trow
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
