"""``python -m od.records DATA_DIR`` — Pascal VOC folder -> sharded TFRecords + label map + report.

Three layouts are recognised (``--annotations``/``--images`` override):
  1. a VOCdevkit year folder: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/*.txt``;
  2. an annotations folder (annotations/ Annotations/ annots/ xml/) beside an images
     folder (images/ JPEGImages/ imgs/);
  3. XML files next to their images (LabelImg's default), searched recursively.

First every XML is read (by the workers) and the whole conversion is planned: images,
classes, duplicates, splits, shards. Then the workers write the shards (a big shard in
consecutive chunks, joined in order afterwards), streaming one image at a time (memory
does not grow with the dataset). This process is one of the workers: with ``--workers 2``
there is one child process, fed through a pipe. Workers never
import TensorFlow: Examples are encoded by ``od.tfexample`` (hand-written wire format, the
image bytes passed through untouched) and written with its TF-free TFRecord writer
(CRC32C via ``google-crc32c``, batched ``writev``), so a worker starts in well under a
second. Shards are written under hidden temporary names and renamed only when every shard
is complete; ``report.json`` is written last.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, format_table, note_default, warn
from od.data.layout import Layout, UsageError, detect_layout
from od.data.plan import make_shard_tasks, plan_dataset
from od.data.report import build_report
from od.data.shards import run_tasks
from od.io.files import atomic_write_text
from od.io.shards import SHARD_RE, SPLITS, TMP_RE

DEFAULT_OUT = "data/records"
DEFAULT_LABEL_MAP = "label_maps/label_map.pbtxt"
DEFAULT_VAL_FRACTION = 0.2
MAX_PROBLEMS_SHOWN = 20


def print_summary(report: dict, out: Path, file=None) -> None:
    file = file or sys.stdout
    s = report["summary"]
    splits = report["splits"]
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p("")
    rows = [
        (name, sp["num_images"], sp["num_boxes"], sp["negatives"], len(sp["files"]))
        for name, sp in splits.items()
    ]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows), sum(r[4] for r in rows)))
    p(format_table(["split", "images", "boxes", "negatives", "shards"], rows))
    p("")
    names = [c["name"] for c in report["classes"]]
    headers = ["class (id)"]
    for name in splits:
        headers += [f"{name} images", f"{name} boxes"]
    crow = []
    for c in report["classes"]:
        row: list[object] = [f"{c['name']} ({c['id']})"]
        for sp in splits.values():
            pc = sp["per_class"].get(c["name"], {"images": 0, "boxes": 0})
            row += [pc["images"], pc["boxes"]]
        crow.append(row)
    if names:
        p(format_table(headers, crow))
        p("")
    probs = report["problems"]
    a = s["problems_by_action"]
    if probs:
        p(f"problems: {len(probs)} ({a['skipped_image']} images skipped, {a['dropped_box']} boxes dropped, "
          f"{a['fixed']} fixed)")
        for pr in probs[:MAX_PROBLEMS_SHOWN]:
            p(f"  {pr['file']}: {pr['problem']} [{pr['action']}]")
        if len(probs) > MAX_PROBLEMS_SHOWN:
            p(f"  ... {len(probs) - MAX_PROBLEMS_SHOWN} more in {out / 'report.json'}")
    else:
        p("problems: none")
    p(f"images: {s['images_converted']} converted ({s['images_copied_unchanged']} copied byte for byte, "
      f"{s['images_reencoded']} re-encoded), {s['images_skipped']} skipped")


# --------------------------------------------------------------------------- CLI


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1)")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.records",
        description="Convert a Pascal VOC dataset (XML + images) to sharded TFRecords, a label map and report.json.",
        epilog="Layouts: VOCdevkit year folder; annotations/ beside images/; or XML next to images. "
        "Exit codes: 0 all converted, 1 some images skipped (or nothing converted, or --strict found problems), "
        "2 usage error.",
    )
    ap.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="dataset folder")
    ap.add_argument("--annotations", metavar="DIR", help="folder of VOC XML files (overrides detection)")
    ap.add_argument("--images", metavar="DIR", help="folder of images (default: beside each XML)")
    ap.add_argument("--out", metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--label-map", metavar="PATH", help=f"label map to honour or create (default {DEFAULT_LABEL_MAP})")
    ap.add_argument("--add-classes", action="store_true", help="add classes missing from an existing label map")
    ap.add_argument("--val-fraction", type=_fraction, default=None, metavar="F", help=f"val share when no ImageSets (default {DEFAULT_VAL_FRACTION})")
    ap.add_argument("--test-fraction", type=_fraction, default=0.0, metavar="F", help="test share when no ImageSets (default 0)")
    ap.add_argument("--shards", type=_positive, metavar="N", help="shards per split (default: ~150 MB each, at least 1)")
    ap.add_argument("--workers", type=_positive, metavar="N", help="worker processes (default: CPU count)")
    ap.add_argument("--skip-difficult", action="store_true", help="drop boxes marked difficult")
    ap.add_argument("--strict", action="store_true", help="any problem -> exit 1 before writing anything")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _clean_stale(out: Path, keep: set[str] | None) -> list[str]:
    """Remove temp shards of interrupted runs and (unless ``keep`` is None) shards not in ``keep``."""
    removed: list[str] = []
    if not out.is_dir():
        return removed
    for f in sorted(out.iterdir()):
        old_shard = keep is not None and SHARD_RE.match(f.name) and f.name not in keep
        if old_shard or TMP_RE.match(f.name):
            try:
                f.unlink()
                removed.append(f.name)
            except OSError:
                pass
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.data_dir is None and not args.annotations:
        ap.print_usage(sys.stderr)
        error("give DATA_DIR (or --annotations DIR)")
        return EXIT_USAGE

    out = Path(args.out) if args.out else Path(DEFAULT_OUT)
    if not args.out:
        note_default("--out", DEFAULT_OUT)
    lm_path = Path(args.label_map) if args.label_map else Path(DEFAULT_LABEL_MAP)
    if not args.label_map:
        note_default("--label-map", DEFAULT_LABEL_MAP)
    val_fraction = args.val_fraction
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = args.workers or max(1, cpus)
    if args.workers is None:
        note_default("--workers", workers)
    if out.exists() and not out.is_dir():
        error(f"--out {out} exists and is not a folder")
        return EXIT_USAGE
    if lm_path.is_dir():
        error(f"--label-map {lm_path} is a folder; give a .pbtxt file path")
        return EXIT_USAGE

    try:
        layout = detect_layout(args.data_dir, args.annotations, args.images)
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
        if not layout.imagesets_dir:
            note_default("--val-fraction", val_fraction)
    if val_fraction + args.test_fraction >= 1.0:
        error(f"--val-fraction {val_fraction} + --test-fraction {args.test_fraction} leaves nothing to train on")
        return EXIT_USAGE
    data_dir = args.data_dir if args.data_dir is not None else str(layout.root)
    print(f"od.records: reading {data_dir} (layout: {layout.description})", file=sys.stderr)
    # A conversion makes a few small acyclic objects per image and keeps them to the end:
    # the cycle collector would only rescan them again and again (~4% of the run).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args, layout, data_dir, out, lm_path, val_fraction, workers)
    except KeyboardInterrupt:
        error("interrupted; nothing was written")
        return 130
    finally:
        if gc_was_enabled:
            gc.enable()


def _run(
    args: argparse.Namespace, layout: Layout, data_dir: str, out: Path, lm_path: Path, val_fraction: float,
    workers: int,
) -> int:
    from od.io.label_map import LabelMapError, write_label_map

    show = not args.quiet
    try:
        plan = plan_dataset(
            layout, lm_path, add_classes=args.add_classes, skip_difficult=args.skip_difficult,
            val_fraction=val_fraction, test_fraction=args.test_fraction, show_progress=show,
        )
    except LabelMapError as e:
        error(f"{e} (fix it, or pass another --label-map)")
        return EXIT_USAGE
    if plan.label_map_status == "existing":
        nc = len(plan.label_map)
        print(f"od.records: using existing label map {lm_path} ({nc} class{'es' if nc != 1 else ''})", file=sys.stderr)
    if plan.not_listed:
        shown = ", ".join(plan.not_listed[:3]) + (" ..." if len(plan.not_listed) > 3 else "")
        warn(f"{len(plan.not_listed)} XML files are not in any ImageSets/Main list and were left out ({shown})")
    if not plan.items:
        for pr in plan.problems[:MAX_PROBLEMS_SHOWN]:
            print(f"  {pr}", file=sys.stderr)
        error(f"nothing to convert in {data_dir}: none of its {plan.num_xml} XML files is usable")
        return EXIT_FAILURES
    if len(plan.label_map) == 0:
        warn("no object classes found (every image is a negative); the label map will be empty")

    name_to_id = dict(plan.label_map.name_to_id)
    if args.strict:
        checks = make_shard_tasks(plan, out, args.shards, name_to_id, dry_run=True)
        outcomes = run_tasks(checks, workers, len(plan.items), show, desc="checking")
        found = list(plan.problems) + [p for o in sorted(outcomes, key=lambda o: o.index) for p in o.problems]
        if found:
            for pr in found[:MAX_PROBLEMS_SHOWN]:
                print(f"  {pr}", file=sys.stderr)
            if len(found) > MAX_PROBLEMS_SHOWN:
                print(f"  ... {len(found) - MAX_PROBLEMS_SHOWN} more", file=sys.stderr)
            error(f"--strict: {len(found)} problems found; nothing written")
            return EXIT_FAILURES

    out.mkdir(parents=True, exist_ok=True)
    _clean_stale(out, keep=None)  # leftovers of interrupted runs only (temp names)
    tasks = make_shard_tasks(plan, out, args.shards, name_to_id)
    if args.shards is None:
        note_default("--shards", "about 150 MB per shard (" + ", ".join(
            f"{s}: {sum(t.split == s for t in tasks)}" for s in SPLITS if any(t.split == s for t in tasks)) + ")")
    try:
        outcomes = run_tasks(tasks, workers, len(plan.items), show)
    except BaseException as e:
        for t in tasks:
            try:
                os.unlink(t.tmp_path)
            except OSError:
                pass
        if isinstance(e, KeyboardInterrupt):
            error("interrupted; no shard was finished, nothing replaced")
            return 130
        raise

    # Every shard is complete: rename them into place, then drop shards of older runs.
    for t in tasks:
        os.replace(t.tmp_path, t.final_path)
    files: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        files[t.split].append(Path(t.final_path).name)
    removed = _clean_stale(out, keep={n for v in files.values() for n in v})
    if plan.label_map_status in ("created", "extended"):
        write_label_map(lm_path, plan.label_map)
    report = build_report(plan, data_dir, str(lm_path), outcomes, dict(files))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    print_summary(report, out)
    s = report["summary"]
    lm_note = {"created": "created", "extended": f"extended with {', '.join(plan.added_classes)}",
               "existing": "unchanged"}[plan.label_map_status]
    nc = len(plan.label_map)
    print(f"label map: {lm_path} ({lm_note}, {nc} class{'es' if nc != 1 else ''})")
    n_shards = sum(len(v) for v in files.values())
    print(f"records:   {out} ({n_shards} shard{'s' if n_shards != 1 else ''}), report: {out / 'report.json'}")
    if removed:
        print(f"           removed {len(removed)} old shard(s) of an earlier run that this run did not write")
    if s["images_converted"] == 0:
        error("no image could be converted")
        return EXIT_FAILURES
    if "val" not in files:
        warn("the val split is empty; training has nothing to evaluate on (raise --val-fraction or add images)")
    if plan.unknown_classes:
        what = ", ".join(f"{c} ({n})" for c, n in plan.unknown_classes.items())
        warn(f"boxes of classes not in the label map {lm_path} were dropped: {what}. Pass --add-classes to add "
             "them, or --label-map with a new file for a different dataset")
    if plan.unknown_classes and s["boxes"] == 0:
        error(f"no box was kept: none of the dataset's classes is in {lm_path}")
        return EXIT_FAILURES
    if s["images_skipped"]:
        warn(f"{s['images_skipped']} images were skipped; see the problems above / report.json")
        return EXIT_FAILURES
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
