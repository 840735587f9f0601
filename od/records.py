"""``python -m od.records DATA_DIR`` — Pascal VOC folder -> sharded TFRecords + label map + report.

Three layouts are recognised (``--annotations``/``--images`` override):
  1. a VOCdevkit year folder: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/*.txt``;
  2. an annotations folder (annotations/ Annotations/ annots/ xml/) beside an images
     folder (images/ JPEGImages/ imgs/);
  3. XML files next to their images (LabelImg's default), searched recursively.
A folder of images per class (``DATA/<class>/``, or ``DATA/{train,val,test}/<class>/``) and no
XML is a classification dataset (``od.data.classification``); COCO, YOLO and CSV datasets are found by
their readers (``od.data.formats``); ``--format`` overrides.

First every XML is read and the whole conversion is planned (``od.data.plan``): images,
classes, duplicates, splits, shards. Then the shards are written (``od.data.shards``), one
whole shard per worker process, one image in memory at a time, under temporary names.
Everything is checked before anything replaces what ``--out`` held (``od.data.output``):
one writer at a time, only od's own files replaced, all renames or none.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, format_table, note_default, warn
from od.data.layout import LAYOUTS, Layout, UsageError, detect_layout
from od.data.plan import make_shard_tasks, plan_dataset
from od.data.report import build_report
from od.data.output import OutputError, commit, discard, locked, survey, temp_name
from od.data.shards import WorkerError, run_tasks
from od.data.splits import DEFAULT_VAL_FRACTION
from od.io.schema import REPORT_FILE, SPLITS, SchemaError, dumps, read_report
from od.options import add_common, add_force, add_split_fractions, positive_int, quiet_tensorflow

DEFAULT_OUT = "data/records"
DEFAULT_LABEL_MAP = "label_maps/label_map.pbtxt"
MAX_PROBLEMS_SHOWN = 20


def _print_classification(report: dict, p) -> None:
    splits = report["splits"]
    rows = [(name, sp["num_images"], len(sp["files"])) for name, sp in splits.items()]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    p(format_table(["split", "images", "shards"], rows))
    p("")
    rows = [[f"{c['name']} ({c['id']})", c["id"] - 1] + [sp["per_class"].get(c["name"], {}).get("images", 0)
                                                      for sp in splits.values()]
            for c in report["classes"]]
    p(format_table(["class (id)", "label"] + [f"{n} images" for n in splits], rows))
    p("")


def _print_detection(report: dict, p) -> None:
    splits = report["splits"]
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
    _print_box_sizes(report, p)


def _template_sizes(task: str) -> dict:
    """Detection: the shipped detection templates' input sizes, for the box sizes in the report."""
    if task == "classification":
        return {}
    from od.model.templates import detection_input_sizes

    return detection_input_sizes()


def _print_box_sizes(report: dict, p) -> None:
    """One line of box sizes in the stored images, and how small they get at each detection template."""
    bs = report.get("box_sizes") or {}
    a = bs.get("all") or {}
    if not a.get("count"):
        return
    s = a["size"]
    p(f"box sizes (sqrt(w*h) px in the stored images): min {s['min']:.0f}, p10 {s['p10']:.0f}, "
      f"median {s['median']:.0f}, max {s['max']:.0f}")
    rows = [(name, f"{hw[0]}x{hw[1]}", f"{a['at_templates'][name]['median_size']:.0f}",
             f"{a['at_templates'][name]['under_16']:.0%}", f"{a['at_templates'][name]['under_32']:.0%}")
            for name, hw in bs.get("templates", {}).items() if name in a.get("at_templates", {})]
    if rows:
        p(format_table(["at template", "input", "median box px", "< 16 px", "< 32 px"], rows))
    p("")


def print_summary(report: dict, out: Path, file=None) -> None:
    file = file or sys.stdout
    s = report["summary"]
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p("")
    if report.get("task") == "classification":
        _print_classification(report, p)
    else:
        _print_detection(report, p)
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.records",
        description="Convert a labelled dataset (Pascal VOC, COCO JSON, YOLO txt or CSV, plus images), or a folder of images per class, to sharded "
        "TFRecords, a label map and report.json.",
        epilog="Layouts: VOCdevkit year folder; annotations/ beside images/; or XML next to images; classification: "
        "DATA/<class>/*.jpg or DATA/{train,val,test}/<class>/ (writes labels.txt beside the label map). "
        "Exit codes: 0 all converted, 1 some images skipped (or nothing converted, or --strict found problems), "
        "2 usage error.",
    )
    ap.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="dataset folder")
    ap.add_argument("--format", "--layout", dest="format", choices=LAYOUTS, default="auto",
                    help="auto (default): found from DATA_DIR; voc | coco | yolo | csv: that label format only; "
                    "classification: a folder of images per class")
    ap.add_argument("--annotations", metavar="DIR", help="folder of VOC XML files (overrides detection)")
    ap.add_argument("--images", metavar="DIR", help="folder of images (default: beside each XML)")
    for split in ("train", "val", "test"):
        ap.add_argument(f"--{split}-csv", metavar="CSV", help=f"CSV of the {split} boxes (implies --format csv; "
                        "paths relative to DATA_DIR or absolute)")
    ap.add_argument("--out", metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--label-map", metavar="PATH", help=f"label map to honour or create (default {DEFAULT_LABEL_MAP})")
    ap.add_argument("--add-classes", action="store_true", help="add classes missing from an existing label map")
    add_split_fractions(ap, DEFAULT_VAL_FRACTION)
    ap.add_argument("--shards", type=positive_int, metavar="N", help="shards per split (default: ~150 MB each; one per 32 MB up to 8, so workers share a split)")
    ap.add_argument("--workers", type=positive_int, metavar="N", help="worker processes (default: CPU count)")
    ap.add_argument("--skip-difficult", action="store_true", help="drop boxes marked difficult")
    ap.add_argument("--follow-links", action="store_true",
                    help="read files and folders that links lead to outside the dataset (listed in the report)")
    add_force(ap, "files in --out that look like shards but were not written by od; a labels.txt that disagrees "
              "with the label map")
    ap.add_argument("--strict", action="store_true", help="any problem -> exit 1 before writing anything")
    add_common(ap)
    return ap


def _earlier_run(out: Path) -> str | None:
    """What an earlier run left in ``out`` (per its report.json), said so before it is replaced."""
    try:
        report = read_report(out / REPORT_FILE)
    except (SchemaError, OSError):
        return None
    n = sum(len(sp.get("files", [])) for sp in report.get("splits", {}).values())
    return f"the records of {report.get('data_dir', '?')} ({n} shard{'s' if n != 1 else ''})"


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    quiet_tensorflow(args.verbose)
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
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = args.workers or max(1, cpus)
    if args.workers is None:
        note_default("--workers", workers)
    if lm_path.is_dir():
        error(f"--label-map {lm_path} is a folder; give a .pbtxt file path")
        return EXIT_USAGE
    try:
        csv_files = {s: getattr(args, f"{s}_csv") for s in ("train", "val", "test") if getattr(args, f"{s}_csv")}
        layout = detect_layout(args.data_dir, args.annotations, args.images, args.format, csv_files)
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    val_fraction = args.val_fraction
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
        given = {split for split, _ in layout.sources if split}  # COCO files, YOLO folders, CSV files
        if not layout.imagesets_dir and not layout.presplit and not given - {"train"}:
            note_default("--val-fraction", val_fraction)
    if val_fraction + args.test_fraction >= 1.0:
        error(f"--val-fraction {val_fraction} + --test-fraction {args.test_fraction} leaves nothing to train on")
        return EXIT_USAGE
    data_dir = args.data_dir if args.data_dir is not None else str(layout.root)
    earlier = _earlier_run(out)
    if earlier:
        print(f"od.records: {out} holds {earlier}; this run replaces them (only once it is complete)",
              file=sys.stderr)
    print(f"od.records: reading {data_dir} (layout: {layout.description})", file=sys.stderr)
    try:
        return _run(args, layout, data_dir, out, lm_path, val_fraction, workers)
    except KeyboardInterrupt:
        error("interrupted; nothing was replaced")
        return 130


def _show_problems(found) -> None:
    for pr in found[:MAX_PROBLEMS_SHOWN]:
        print(f"  {pr}", file=sys.stderr)
    if len(found) > MAX_PROBLEMS_SHOWN:
        print(f"  ... {len(found) - MAX_PROBLEMS_SHOWN} more", file=sys.stderr)


def _run(
    args: argparse.Namespace, layout: Layout, data_dir: str, out: Path, lm_path: Path, val_fraction: float,
    workers: int,
) -> int:
    from od.io.label_map import LabelMapError

    show = not args.quiet
    try:
        if layout.kind == "classification":
            from od.data.classification import plan_classification

            plan = plan_classification(layout, lm_path, val_fraction=val_fraction, test_fraction=args.test_fraction,
                                       follow_links=args.follow_links)
        else:
            plan = plan_dataset(
                layout, lm_path, add_classes=args.add_classes, skip_difficult=args.skip_difficult,
                val_fraction=val_fraction, test_fraction=args.test_fraction, follow_links=args.follow_links,
            )
    except LabelMapError as e:
        error(f"{e} (fix it, or pass another --label-map)")
        return EXIT_USAGE
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    if plan.label_map_status == "existing":
        nc = len(plan.label_map)
        print(f"od.records: using existing label map {lm_path} ({nc} class{'es' if nc != 1 else ''})", file=sys.stderr)
    if plan.not_listed:
        listed = ", ".join(plan.not_listed[:3]) + (" ..." if len(plan.not_listed) > 3 else "")
        warn(f"{len(plan.not_listed)} XML files are not in any ImageSets/Main list and were left out ({listed})")
    if not plan.items:
        _show_problems(plan.problems)
        what = "image" if plan.task == "classification" else "XML"
        error(f"nothing to convert in {data_dir}: none of its {plan.num_xml} {what} files is usable")
        return EXIT_FAILURES
    if plan.boxes_in_xml and not any(it.boxes for it in plan.items):
        _show_problems(plan.problems)
        error(f"no box would be kept: none of the dataset's classes ({', '.join(plan.unknown_classes)}) is in "
              f"the label map {lm_path}; nothing was written (pass --add-classes, or another --label-map)")
        return EXIT_FAILURES
    if len(plan.label_map) == 0:
        warn("no object classes found (every image is a negative); the label map will be empty")

    name_to_id = dict(plan.label_map.name_to_id)
    if args.strict:
        checks = make_shard_tasks(plan, out, args.shards, name_to_id, dry_run=True)
        outcomes = run_tasks(checks, workers, len(plan.items), show, "checking")
        found = list(plan.problems) + [p for o in sorted(outcomes, key=lambda o: o.index) for p in o.problems]
        if found:
            _show_problems(found)
            error(f"--strict: {len(found)} problems found; nothing written")
            return EXIT_FAILURES

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error(f"--out {out}: cannot create the folder: {e.strerror or e}")
        return EXIT_USAGE
    notes: list[str] = []
    try:
        with locked(out, notes):
            for n in notes:
                print(f"od: note: {n}", file=sys.stderr)
            return _write(args, plan, data_dir, out, lm_path, workers, name_to_id, show)
    except OutputError as e:
        error(str(e))
        return EXIT_USAGE
    except WorkerError as e:
        error(f"{e}; nothing in {out} was replaced")
        return EXIT_FAILURES
    except OSError as e:
        where = e.filename or out
        error(f"cannot write {where}: {e.strerror or e}; nothing in {out} was replaced")
        return EXIT_FAILURES


def _write(args, plan, data_dir: str, out: Path, lm_path: Path, workers: int, name_to_id: dict, show: bool) -> int:
    """Write every file under a temp name, check, then rename them all (under the lock)."""
    from od.io.label_map import read_label_map
    from od.io.tfrecord import iter_file_records

    existing = survey(out)
    discard([str(out / f) for f in existing.stale_temps])  # of od runs that died: nobody else writes here
    tasks = make_shard_tasks(plan, out, args.shards, name_to_id)
    if args.shards is None:
        note_default("--shards", "~150 MB a shard, one per 32 MB up to 8 (" + ", ".join(
            f"{s}: {sum(t.split == s for t in tasks)}" for s in SPLITS if any(t.split == s for t in tasks)) + ")")
    new_names = {Path(t.final_path).name for t in tasks}
    clash = [f for f in existing.foreign if f in new_names]
    if clash and not args.force:
        raise OutputError(f"{out / clash[0]} was not written by od (it is not listed in {out / REPORT_FILE}); "
                          "move it away, or pass --force to replace it")
    labels_file = None
    if plan.labels_bytes is not None:
        from od.data.classification import labels_clash, labels_path

        labels_file = labels_path(os.path.realpath(lm_path))
        clash = labels_clash(labels_file, plan.labels_bytes.decode("utf-8"))
        if clash and not args.force:
            raise OutputError(f"{clash}; move it away, or pass --force to replace it")
    temps = [t.tmp_path for t in tasks]
    try:
        outcomes = run_tasks(tasks, workers, len(plan.items), show, "converting")
        files: dict[str, list[str]] = defaultdict(list)
        for t in tasks:
            files[t.split].append(Path(t.final_path).name)
        report = build_report(plan, data_dir, str(lm_path), outcomes, dict(files), _template_sizes(plan.task))
        s = report["summary"]
        if s["images_converted"] == 0:
            discard(temps)
            _show_problems([p for o in outcomes for p in o.problems])
            error("no image could be converted; nothing was replaced")
            return EXIT_FAILURES
        empty = _classes_without_images(plan, outcomes)
        if empty:
            discard(temps)
            _show_problems([p for o in outcomes for p in o.problems])
            error(f"class folder {empty[0]}/ has no usable image (all its images were skipped); nothing in {out} "
                  "was replaced")
            return EXIT_USAGE
        if plan.boxes_in_xml and s["boxes"] == 0:
            discard(temps)
            error(f"no box was kept (see the problems in the summary); nothing in {out} was replaced")
            return EXIT_FAILURES
        # Check before anything is renamed: every shard holds what was converted into it.
        converted = {o.index for o in outcomes if o.converted}
        for t in tasks:
            want = sum(it.index in converted for it in t.items)
            got = sum(1 for _ in iter_file_records(t.tmp_path))
            if got != want:
                raise OSError(f"{t.tmp_path} holds {got} records, expected {want}")
        report_tmp = temp_name(out / REPORT_FILE)
        temps.append(report_tmp)
        _write_bytes(report_tmp, dumps(report).encode("utf-8"))
        pairs = [(t.tmp_path, t.final_path) for t in tasks] + [(report_tmp, str(out / REPORT_FILE))]
        if plan.label_map_bytes is not None:
            target = Path(os.path.realpath(lm_path))  # a linked label map is updated at its target
            target.parent.mkdir(parents=True, exist_ok=True)
            lm_tmp = temp_name(target)
            temps.append(lm_tmp)
            _write_bytes(lm_tmp, plan.label_map_bytes)
            read_label_map(lm_tmp)  # what we wrote reads back
            pairs.append((lm_tmp, str(target)))
        if labels_file is not None:
            labels_tmp = temp_name(labels_file)
            temps.append(labels_tmp)
            _write_bytes(labels_tmp, plan.labels_bytes)
            pairs.append((labels_tmp, str(labels_file)))
        old = [str(out / f) for f in existing.ours if f not in new_names]
        commit(pairs, remove=old)
    except BaseException:
        discard(temps)
        raise

    print_summary(report, out)
    lm_note = {"created": "created", "extended": f"extended with {', '.join(plan.added_classes)}",
               "existing": "unchanged"}[plan.label_map_status]
    nc = len(plan.label_map)
    print(f"label map: {lm_path} ({lm_note}, {nc} class{'es' if nc != 1 else ''})")
    if plan.task == "classification":
        from od.data.classification import labels_path

        print(f"labels:    {labels_path(lm_path)} (line i = record label i = label map id - 1)")
    n_shards = len(tasks)
    print(f"records:   {out} ({n_shards} shard{'s' if n_shards != 1 else ''}), report: {out / REPORT_FILE}")
    if old:
        print(f"           removed {len(old)} shard(s) of the previous run that this run did not write")
    for f in existing.foreign:
        if f not in new_names:
            warn(f"kept {out / f}: it looks like a shard but od did not write it (not in {REPORT_FILE}); training "
                 f"reads every {f.split('-')[0]}-*-of-*.tfrecord in {out}, so move it away unless it belongs there")
    if plan.outside_roots:
        warn(f"--follow-links: read files outside {data_dir} from " + ", ".join(plan.outside_roots))
    if "val" not in files:
        warn("the val split is empty; training has nothing to evaluate on (raise --val-fraction or add images)")
    if plan.unknown_classes:
        what = ", ".join(f"{c} ({n})" for c, n in plan.unknown_classes.items())
        warn(f"boxes of classes not in the label map {lm_path} were dropped: {what}. Pass --add-classes to add "
             "them, or --label-map with a new file for a different dataset")
    skipped = s["problems_by_action"]["skipped_image"]
    if skipped:
        warn(f"{skipped} files were skipped; see the problems above / {out / REPORT_FILE}")
        return EXIT_FAILURES
    return EXIT_OK


def _classes_without_images(plan, outcomes) -> list[str]:
    """Classification: the class folders none of whose images converted (sorted)."""
    if plan.task != "classification":
        return []
    converted = {o.index for o in outcomes if o.converted}
    have: dict[str, bool] = {}
    for it in plan.items:
        have[it.class_name] = have.get(it.class_name, False) or it.index in converted
    return sorted(c for c, ok in have.items() if not ok)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    sys.exit(main())
