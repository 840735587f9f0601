"""``python -m od.convert DATA --to voc|coco|yolo|csv --out DIR`` — a dataset in another label format.

Tools disagree on formats (LabelImg writes VOC, CVAT and Roboflow export COCO or YOLO, old
TF scripts want CSV); this rewrites a dataset for them, read the way ``od.records`` reads it,
so the output holds the boxes, classes and splits training would have seen. The work is done
by ``od.data.reformat``; nothing is ever written into DATA.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from od.console import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    error,
    note_default,
    print_table,
    warn,
)
from od.data.formats import FORMATS
from od.data.layout import UsageError, detect_layout
from od.data.reformat import IMAGE_MODES
from od.data.splits import DEFAULT_VAL_FRACTION
from od.options import add_common, add_force, add_split_fractions

MAX_PROBLEMS_SHOWN = 20


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.convert",
        description="Write a detection dataset (Pascal VOC, COCO JSON, YOLO txt or CSV) in another label format, "
        "read the way od.records reads it: the same boxes (on the real image size, clipped as od.records "
        "clips them), classes and train/val/test split per image. DATA is never written to.",
        epilog="Images whose pixels od.records would change (EXIF rotation, CMYK, alpha, 16-bit, truncated) are "
        "written as the JPEG od.records stores, so boxes and pixels agree in any tool. Rounding: VOC 0.01 px, "
        "COCO/CSV/YOLO as their writers state (see the README). Exit codes: 0 done, 1 some images were skipped "
        "(or --strict found problems, or nothing was usable), 2 usage error.",
    )
    ap.add_argument("data_dir", metavar="DATA", help="dataset folder (any layout od.records reads)")
    ap.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    ap.add_argument("--out", required=True, metavar="DIR",
                    help="new (or empty) folder for the converted dataset; never inside DATA")
    ap.add_argument("--format", "--layout", dest="format", choices=("auto",) + FORMATS, default="auto",
                    help="DATA's format: auto (default: found as od.records finds it) | voc | coco | yolo | csv")
    for split in ("train", "val", "test"):
        ap.add_argument(f"--{split}-csv", metavar="CSV", help=f"CSV of the {split} boxes (implies --format csv)")
    ap.add_argument("--images", choices=IMAGE_MODES, default="copy",
                    help="how images get into --out: copy (default); hardlink (no extra space; same files: editing "
                    "one edits the other; a copy where links cannot be made); symlink (absolute links to DATA: "
                    "od.records then needs --follow-links). Images od re-encodes are always new files")
    add_split_fractions(ap, DEFAULT_VAL_FRACTION)
    ap.add_argument("--follow-links", action="store_true",
                    help="read files and folders that links lead to outside DATA")
    add_force(ap, "an earlier od.convert output in --out (only files listed in its .od-convert.manifest; a "
              "folder holding anything else is never replaced)")
    ap.add_argument("--strict", action="store_true", help="any problem -> exit 1 before writing anything")
    add_common(ap)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from od.data.reformat import (
        ConvertError,
        ReadBackError,
        convert_dataset,
        read_dataset,
    )

    csv_files = {s: getattr(args, f"{s}_csv") for s in ("train", "val", "test") if getattr(args, f"{s}_csv")}
    try:
        layout = detect_layout(args.data_dir, kind=args.format, csv_files=csv_files)
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    val = args.val_fraction
    if val is None:
        val = DEFAULT_VAL_FRACTION
    if val + args.test_fraction >= 1.0:
        error(f"--val-fraction {val} + --test-fraction {args.test_fraction} leaves nothing to train on")
        return EXIT_USAGE
    out = Path(args.out)
    print(f"od.convert: reading {args.data_dir} (layout: {layout.description})", file=sys.stderr)
    bar = None
    try:
        from od.data.reformat import check_out

        check_out(out, [Path(args.data_dir), layout.root, *layout.explicit], args.force)  # before any reading
        plan = read_dataset(layout, val_fraction=val, test_fraction=args.test_fraction,
                            follow_links=args.follow_links)
        if args.val_fraction is None and plan.splits_source == "hash":
            note_default("--val-fraction", val)
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(desc="checking" if args.strict else "converting", unit="img", disable=None,
                       dynamic_ncols=True, total=len(plan.items))
        res = convert_dataset(
            layout, out, args.to, images=args.images, force=args.force, strict=args.strict, val_fraction=val,
            test_fraction=args.test_fraction, follow_links=args.follow_links, inputs=[Path(args.data_dir)],
            source=args.data_dir, progress=bar.update if bar else lambda n: None, plan=plan,
        )
    except (ConvertError, UsageError) as e:
        error(str(e))
        return EXIT_USAGE
    except ReadBackError as e:
        error(f"{e}; nothing in {out} was written")
        return EXIT_FAILURES
    except (OSError, ValueError) as e:
        where = getattr(e, "filename", None) or out
        error(f"cannot write {where}: {getattr(e, 'strerror', None) or e}; nothing in {out} was written")
        return EXIT_FAILURES
    except KeyboardInterrupt:
        error(f"interrupted; nothing in {out} was written")
        return 130
    finally:
        if bar is not None:
            bar.close()
    return _report(res, args)


def _report(res, args) -> int:
    from od.data.reformat import FORMAT_NAMES, MANIFEST, split_counts

    counts = split_counts(res.images)
    if counts:
        rows = [(s, *c) for s, c in counts.items()]
        rows.append(("total", *(sum(r[i] for r in rows) for i in (1, 2, 3))))
        print_table(["split", "images", "boxes", "negatives"], rows)
        per_class = Counter(b.name for im in res.images for b in im.boxes)
        print_table(["class", "boxes"], [(c, per_class.get(c, 0)) for c in res.classes])
    if res.not_listed:
        warn(f"{len(res.not_listed)} XML files are not in any ImageSets/Main list and were left out "
             f"({', '.join(res.not_listed[:3])}{' ...' if len(res.not_listed) > 3 else ''})")
    a = Counter(p.action for p in res.problems)
    if res.problems:
        print(f"problems: {len(res.problems)} ({a['skipped_image']} images skipped, {a['dropped_box']} boxes "
              f"dropped, {a['fixed']} fixed)")
        shown = res.problems if args.verbose else res.problems[:MAX_PROBLEMS_SHOWN]
        for p in shown:
            print(f"  {p}")
        if len(res.problems) > len(shown):
            print(f"  ... {len(res.problems) - len(shown)} more (--verbose lists them all)")
    else:
        print("problems: none")
    if not res.images:
        error(f"nothing to convert in {args.data_dir}: none of its {res.num_inputs} labelled images is usable; "
              "nothing written")
        return EXIT_FAILURES
    if not res.written:
        error(f"--strict: {len(res.problems)} problems found; nothing written")
        return EXIT_FAILURES
    verb = {"copy": "copied", "hardlink": "hard-linked", "symlink": "symlinked"}[args.images]
    placed = len(res.images) - len(res.reencoded)
    how = f"{placed} {verb}" + (f" ({res.copied_instead} copied: no hard link possible)" if res.copied_instead else "")
    if res.reencoded:
        how += f", {len(res.reencoded)} written as the JPEG od.records stores (pixels it changes)"
    print(f"{FORMAT_NAMES[res.fmt]} dataset: {res.out} ({len(res.files)} files; images: {how}; splits: "
          f"{res.splits_source}; what od wrote: {res.out / MANIFEST})"
          + ("; replaced the earlier od.convert output" if res.replaced_earlier else ""))
    if args.images == "symlink":
        warn(f"the images in {res.out} are links into {args.data_dir}: pass --follow-links to od.records, and "
             f"keep {args.data_dir} where it is")
    if res.skipped:
        warn(f"{res.skipped} images were skipped (see the problems above); the output holds the others")
        return EXIT_FAILURES
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
