"""``python -m od.detect``: run an exported detector on photos and draw what it finds.

Reads what ``od.export`` wrote (``exported/<name>/{saved_model,label_map.pbtxt,model.json}``)
or any OD-API-style detection SavedModel / TF Hub handle. Writes one annotated image per
input under ``--out`` (default ``detections/``), plus optional JSON, Pascal VOC pre-labels
(the active-learning loop: correct them in LabelImg, then ``od.records``), one COCO JSON of
the whole run (pre-labels for CVAT / Label Studio, read back by ``od.records``) and crops.

TensorFlow is imported only after the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.core import Detection
from od.data.inputs import COMBINED_JSON, InputImage, collect_inputs
from od.io.files import file_problem, shown
from od.model.errors import ModelError
from od.model.inference import Detector
from od.model.source import resolve_labels, resolve_model
from od.viz.outputs import Manifest, OutputError, OutputWriter, Result, check_out_dir
from od.options import add_common, add_force, add_max_detections, add_runtime, add_score_threshold, quiet_tensorflow


DEFAULT_OUT = Path("detections")
COCO_JSON = "coco"  # <out>/coco.json (--save-coco): every detection of the run as one COCO file


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m od.detect",
        description=(
            "Detect objects in images with an exported model and write annotated copies\n"
            "(the inputs are never modified). Folders are searched recursively."
        ),
        epilog=(
            "Examples:\n"
            "  python -m od.detect photos/                      # newest model under exported/\n"
            "  python -m od.detect 'shots/*.jpg' --model exported/raccoon --score-threshold 0.3\n"
            "  python -m od.detect new/ --save-voc              # pre-labels in detections/voc/ for LabelImg\n"
            "  python -m od.detect new/ --save-coco             # detections/coco.json for CVAT / Label Studio\n"
            "  python -m od.detect new/ --save-yolo             # YOLO pre-labels in detections/yolo/ (CVAT, Label Studio)\n"
            "Exit codes: 0 all images done, 1 some images failed, 2 usage error (bad flag, no model)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="image files, folders (recursive) or glob patterns")
    p.add_argument(
        "--model",
        metavar="PATH|NAME|HANDLE",
        help="export dir (exported/<name>), its name, a SavedModel dir, or a TF Hub handle "
        "(default: the newest export under exported/)",
    )
    add_runtime(p)
    p.add_argument("--label-map", metavar="PATH", help="label_map.pbtxt (default: the one inside the export; else numeric class ids)")
    add_score_threshold(p, 0.5, "boxes below it are not kept (default 0.5)")
    add_max_detections(p, "default: all the model returns")
    p.add_argument("--classes", metavar="NAMES", help="comma-separated class names (or ids) to keep, e.g. raccoon,dog")
    p.add_argument("--out", default=None, metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--save-json", action="store_true", help="write <out>/<image>.json per image and <out>/detections.json")
    p.add_argument(
        "--save-voc",
        action="store_true",
        help="write Pascal VOC pre-labels + image copies to <out>/voc/ (open in LabelImg; feed to od.records)",
    )
    p.add_argument(
        "--save-coco",
        action="store_true",
        help=f"write <out>/{COCO_JSON}.json: the run's detections as one COCO file (file_name relative to the "
        "folder of the inputs, categories from the label map, a score per box) for CVAT / Label Studio",
    )
    p.add_argument(
        "--save-yolo",
        action="store_true",
        help="write YOLO txt pre-labels + image copies to <out>/yolo/ (Ultralytics layout with data.yaml and "
        "classes.txt: import into CVAT / Label Studio / Ultralytics; feed to od.records)",
    )
    p.add_argument("--yolo-scores", action="store_true",
                   help="with --save-yolo: each box's score as a 6th column (as Ultralytics save_conf writes; "
                   "off by default: CVAT's YOLO import does not take it)")
    p.add_argument("--save-crops", action="store_true", help="write each kept box as <out>/crops/<class>/<image>_<n>.jpg")
    add_force(p, "files in --out that od.detect did not write, and VOC XMLs / YOLO txts in <out>/voc/, <out>/yolo/ "
              "(maybe hand-corrected)")
    add_common(p)
    return p


def parse_class_filter(spec: str | None, id_to_name: dict[int, str]) -> set[int] | None:
    """``--classes a,b,3`` -> class ids; ValueError naming unknown classes and the known ones."""
    if not spec:
        return None
    name_to_id = {n: i for i, n in id_to_name.items()}
    lower = {n.lower(): i for n, i in name_to_id.items()}
    ids: set[int] = set()
    unknown: list[str] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item in name_to_id:
            ids.add(name_to_id[item])
        elif item.lower() in lower:
            ids.add(lower[item.lower()])
        elif item.isdigit():
            ids.add(int(item))
        else:
            unknown.append(item)
    if unknown:
        known = ", ".join(f"{n} ({i})" for i, n in sorted(id_to_name.items())) or "none (no label map; use numeric ids)"
        raise ValueError(f"--classes: unknown class {', '.join(unknown)}; known classes: {known}")
    if not ids:
        raise ValueError("--classes is empty")
    return ids




def _runtime_name(runtime: str, detector: Detector) -> str:
    if runtime == "tflite":
        return f"TFLite model.tflite ({getattr(detector, 'mode', None) or 'unknown mode'})"
    return "TensorFlow + SavedModel"


def _keep_key_free(images: list[InputImage], stem: str) -> list[InputImage]:
    """Images keyed ``stem`` renamed ``stem_2``...: with --save-json their ``<key>.json`` would be
    the run-wide ``<out>/<stem>.json``."""
    taken = {i.key.lower() for i in images}
    out: list[InputImage] = []
    for im in images:
        if im.key.lower() == stem:
            n = 2
            while f"{im.key}_{n}".lower() in taken:
                n += 1
            taken.add(f"{im.key}_{n}".lower())
            im = dataclasses.replace(im, key=f"{im.key}_{n}")
        out.append(im)
    return out


def coco_root(specs: Sequence[str], images: Sequence[InputImage]) -> Path:
    """The folder ``file_name`` is relative to in ``--save-coco``: the common folder of the folders
    given and of the images given one by one (so ``photos/`` gives ``a.jpg``, ``sub/b.jpg``)."""
    dirs = [os.path.abspath(s) for s in specs if os.path.isdir(s)]
    parts = list(dirs)
    for im in images:
        p = os.path.abspath(im.path)
        if not any(p.startswith(d.rstrip(os.sep) + os.sep) for d in dirs):
            parts.append(os.path.dirname(p))
    return Path(os.path.commonpath(parts)) if parts else Path.cwd()


def _coco_bytes(results: Sequence[Result], root: Path, id_to_name: dict[int, str], meta: dict) -> bytes:
    from od.data.coco import format_detections

    rows = [(Path(os.path.relpath(os.path.abspath(r.image.path), root)).as_posix(), r.width, r.height, r.detections)
            for r in results]
    info = {"description": "detections by od.detect", "images_root": shown(root), **meta}
    doc = format_detections([(shown(f), w, h, d) for f, w, h, d in rows], id_to_name, info)
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def _summary_line(res: Result) -> str:
    counts = Counter(d.class_name for d in res.detections)
    what = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "no detections"
    return f"{shown(res.image.path)}: {what}"


# --------------------------------------------------------------------------- the run


def run(
    detector: Detector,
    images: Sequence[InputImage],
    writer: OutputWriter,
    score_threshold: float,
    class_ids: set[int] | None,
    max_detections: int | None,
    progress: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Detect on every image: the next image is decoded and the previous one drawn and saved in
    background threads while the model runs, so the model is rarely idle. One bad image is
    reported and skipped; the rest go on."""
    from tqdm import tqdm

    from od.data.images import open_image_rgb

    def load(item: InputImage):
        why = file_problem(item.path)
        if why is not None:
            return item, None, None, f"{shown(item.path)}: {why}"
        try:
            import numpy as np

            img = open_image_rgb(item.path)
            return item, img, np.asarray(img), None
        except Exception as e:  # noqa: BLE001 - ImageError, plus anything odd a decoder raises
            msg = str(e) if str(item.path) in str(e) else f"{item.path}: {e}"
            return item, None, None, shown(msg)  # names that are not UTF-8 as \xNN, printable

    results: list[Result] = []
    # disable=None: a bar on terminals only (logs and pipes get the per-image lines alone)
    bar = tqdm(total=len(images), unit="img", disable=None if progress and len(images) > 1 else True,
               file=sys.stderr, dynamic_ncols=True)

    def emit(res: Result) -> None:
        if res.error:
            error(res.error)
        else:
            line = _summary_line(res)
            if res.kept_voc:
                line += f" (kept existing {shown(writer.out / 'voc' / (res.image.key + '.xml'))}; --force replaces it)"
            if res.kept_yolo:
                line += f" (kept existing {shown(writer.yolo_label(res.image))}; --force replaces it)"
            if bar.disable:
                print(line, flush=True)
            else:
                tqdm.write(line, file=sys.stdout)
        results.append(res)
        bar.update(1)
        if on_result:
            on_result(res)

    def save(item: InputImage, img, dets: list[Detection]) -> Result:
        try:
            return writer.write(item, img, dets)
        except Exception as e:  # noqa: BLE001 - disk full, permissions...: report, go on
            return Result(item, img.width, img.height, dets, error=shown(f"{item.path}: cannot write outputs: {e}"))

    with ThreadPoolExecutor(1, thread_name_prefix="od-load") as loader, ThreadPoolExecutor(1, thread_name_prefix="od-save") as saver:
        queue = iter(images)
        loading: deque[Future] = deque()
        saving: deque[Future] = deque()
        for item in (next(queue, None) for _ in range(2)):
            if item is not None:
                loading.append(loader.submit(load, item))
        while loading:
            item, img, arr, err = loading.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                loading.append(loader.submit(load, nxt))
            if err is not None:
                emit(Result(item, error=err))
                continue
            try:
                dets = detector.postprocess(detector.raw(arr), img.width, img.height, score_threshold, class_ids, max_detections)
            except ModelError:
                raise
            except Exception as e:  # noqa: BLE001 - one image the model chokes on must not stop the batch
                emit(Result(item, img.width, img.height, error=shown(f"{item.path}: detection failed: {type(e).__name__}: {e}")))
                continue
            saving.append(saver.submit(save, item, img, dets))
            while saving and (saving[0].done() or len(saving) > 2):
                emit(saving.popleft().result())
        while saving:
            emit(saving.popleft().result())
    bar.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)
    if args.yolo_scores and not args.save_yolo:
        error("--yolo-scores adds a column to --save-yolo's txt files; pass --save-yolo too")
        return EXIT_USAGE

    out = Path(args.out) if args.out else DEFAULT_OUT
    if not args.out:
        note_default("output folder", f"{out}/")
    problem = check_out_dir(out)  # before the model loads: a bad --out is said at once
    if problem:
        error(problem)
        return EXIT_USAGE
    try:
        manifest = Manifest.load(out, args.force)
    except OutputError as e:
        error(str(e))
        return EXIT_USAGE
    try:
        source = resolve_model(args.model)
        runtime = source.runtime(args.runtime)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE

    images, input_problems = collect_inputs(args.inputs, out)
    input_problems = [shown(p) for p in input_problems]
    if args.save_coco and args.save_json:
        images = _keep_key_free(images, COCO_JSON)
    for p in input_problems:
        error(p)
    if not images:
        error("no images to process (" + ", ".join(shown(i) for i in args.inputs) + ")")
        return EXIT_USAGE

    id_to_name, labels_from = resolve_labels(source, args.label_map)
    if labels_from and labels_from != args.label_map:
        note_default("label map", labels_from)
    try:
        class_ids = parse_class_filter(args.classes, id_to_name)
    except ValueError as e:
        error(str(e))
        return EXIT_USAGE

    t0 = time.perf_counter()
    try:
        detector = Detector.load(source, id_to_name, runtime)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE
    load_s = time.perf_counter() - t0

    meta = {
        "model": source.ref,
        "runtime": runtime,
        "label_map": labels_from or None,
        "score_threshold": args.score_threshold,
        "classes": sorted(id_to_name.get(i, str(i)) for i in class_ids) if class_ids else None,
        "max_detections": args.max_detections,
    }
    writer = OutputWriter(out, [i.path for i in images], args.save_json, args.save_voc, args.save_crops, args.force, meta,
                          manifest, save_yolo=args.save_yolo, yolo_scores=args.yolo_scores,
                          yolo_classes=[id_to_name[i] for i in sorted(id_to_name)])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error(f"cannot create output folder {out}: {e.strerror or e}")
        return EXIT_USAGE
    print(f"od.detect: {len(images)} image(s), model {source.ref} ({_runtime_name(runtime, detector)} loaded in {load_s:.1f}s), score threshold {args.score_threshold}", file=sys.stderr)
    t1 = time.perf_counter()
    try:
        results = run(detector, images, writer, args.score_threshold, class_ids, args.max_detections,
                      progress=not args.quiet)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE
    finally:
        writer.finish()
    elapsed = time.perf_counter() - t1

    done = [r for r in results if not r.error]
    failed = [r for r in results if r.error]
    if args.save_yolo and done:
        problem = writer.write_yolo_names()
        writer.finish()
        if problem:
            error(problem)
            input_problems.append(problem)
    if args.save_json:
        combined = {**meta, "images": [writer.record(r) for r in done],
                    "failed": [{"image": shown(r.image.path), "error": r.error} for r in failed]}
        problem = writer.write_file(out / f"{COMBINED_JSON}.json", (json.dumps(combined, indent=2) + "\n").encode())
        writer.finish()
        if problem:
            error(problem)
            input_problems.append(problem)
    if args.save_coco:
        data = _coco_bytes(done, coco_root(args.inputs, [r.image for r in done]), id_to_name, meta)
        problem = writer.write_file(out / f"{COCO_JSON}.json", data)
        writer.finish()
        if problem:
            error(problem)
            input_problems.append(problem)

    per_class: dict[str, list[int]] = {}
    for r in done:
        counts = Counter(d.class_name for d in r.detections)
        for c, n in counts.items():
            row = per_class.setdefault(c, [0, 0])
            row[0] += 1
            row[1] += n
    print()
    if per_class:
        print_table(["class", "images", "boxes"], [[c, v[0], v[1]] for c, v in sorted(per_class.items())])
    rate = len(done) / elapsed if elapsed > 0 else 0.0
    print(f"{len(done)} image(s) done, {len(failed) + len(input_problems)} failed, {rate:.2f} img/s; outputs in {shown(out)}/")
    extras = [f"{shown(out)}/{k}/" for k, on in (("voc", args.save_voc), ("yolo", args.save_yolo),
                                                 ("crops", args.save_crops)) if on]
    if args.save_json:
        extras.append(f"{shown(out)}/{COMBINED_JSON}.json")
    if args.save_coco:
        extras.append(f"{shown(out)}/{COCO_JSON}.json")
    if extras:
        print("also wrote: " + ", ".join(extras))
    kept = [r for r in done if r.kept_voc]
    if kept:
        warn(f"{len(kept)} VOC XML(s) already in {out}/voc/ were kept (maybe hand-corrected); --force replaces them")
    kept = [r for r in done if r.kept_yolo]
    if kept:
        warn(f"{len(kept)} YOLO txt(s) already in {out}/yolo/labels/ were kept (maybe hand-corrected); "
             "--force replaces them")
    if failed or input_problems:
        for msg in [*input_problems, *(r.error for r in failed)]:
            print(f"  failed: {msg}", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


def cli() -> None:
    """Console entry point: ``main`` then a fast exit. With a detector loaded, TensorFlow's
    teardown at interpreter exit takes seconds; by the time ``main`` returns every output is
    written (atomically) and every thread joined, so skip it."""
    rc = main()
    if "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    cli()
