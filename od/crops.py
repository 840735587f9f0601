"""``python -m od.crops DATA_DIR --out DIR`` — every VOC box as an image in ``DIR/<class>/``.

A second-stage classifier learns from the objects a detector finds; this turns a detection
dataset into its training data (``python -m od.records DIR`` then reads it as a
classification dataset). The work is done by ``od.data.crops``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, print_table, warn
from od.data.layout import UsageError, detect_layout
from od.options import add_common, add_force, fraction, positive_int

MAX_PROBLEMS_SHOWN = 20


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.crops",
        description="Write every box of a Pascal VOC dataset as an image crop into OUT/<class>/ (PNG), "
        "a classification dataset for `python -m od.records OUT`.",
        epilog="Exit codes: 0 done, 1 some XML, images or boxes were skipped, 2 usage error.",
    )
    ap.add_argument("data_dir", metavar="DATA_DIR", help="VOC dataset folder (the layouts od.records reads)")
    ap.add_argument("--out", metavar="DIR", required=True, help="folder of the crops, one subfolder per class")
    ap.add_argument("--margin", type=fraction(), default=0.0, metavar="F",
                    help="grow each box by F of its width/height on every side, in [0, 1] (default 0)")
    ap.add_argument("--min-size", type=positive_int, default=1, metavar="PX",
                    help="skip crops narrower or lower than PX pixels (default 1: keep all)")
    ap.add_argument("--follow-links", action="store_true",
                    help="read files and folders that links lead to outside the dataset")
    add_force(ap, "files in --out that od.crops did not write (its own, listed in --out/.od-crops.json, are "
              "replaced by each run)")
    add_common(ap)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        layout = detect_layout(args.data_dir, kind="voc")
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error(f"--out {out}: cannot create the folder: {e.strerror or e}")
        return EXIT_USAGE
    from od.data.crops import make_crops

    print(f"od.crops: reading {args.data_dir} (layout: {layout.description})", file=sys.stderr)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(desc="cropping", unit="img", disable=None, dynamic_ncols=True)
    try:
        res = make_crops(layout, out, margin=args.margin, min_size=args.min_size, force=args.force,
                         follow_links=args.follow_links, progress=bar.update if bar else lambda n: None)
    except OSError as e:
        error(f"cannot write {e.filename or out}: {e.strerror or e}")
        return EXIT_FAILURES
    except KeyboardInterrupt:
        error("interrupted; the crops written so far are listed in the manifest")
        return 130
    finally:
        if bar is not None:
            bar.close()
    if res.written:
        print_table(["class", "crops"], [(c, n) for c, n in sorted(res.written.items())]
                    + [("total", sum(res.written.values()))])
    for p in res.problems[:MAX_PROBLEMS_SHOWN]:
        print(f"  {p}")
    if len(res.problems) > MAX_PROBLEMS_SHOWN:
        print(f"  ... {len(res.problems) - MAX_PROBLEMS_SHOWN} more")
    print(f"crops: {sum(res.written.values())} from {res.images} images in {out}"
          + (f"; removed {res.removed} crops of the previous run not made again" if res.removed else ""))
    if not res.written:
        error(f"no crop was written from {args.data_dir}")
        return EXIT_FAILURES
    if len(res.written) < 2:
        warn("one class only: a classifier needs at least two (od.records will refuse this folder)")
    return EXIT_FAILURES if res.problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
