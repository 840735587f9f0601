"""``python -m od.demo`` — write a built-in synthetic dataset: Pascal VOC for detection
(:mod:`od.data.synthetic`, the default) or a folder per class with ``--task classify``
(:mod:`od.data.synthetic_classes`)."""

from __future__ import annotations

import argparse
import sys

from od.console import EXIT_OK, EXIT_USAGE, error, note_default, print_table
from od.data import synthetic, synthetic_classes
from od.io.files import atomic_dir
from od.options import add_common, add_force, non_negative_int, positive_int, quiet_tensorflow

DEFAULT_OUT = {"detect": "annotations/demo", "classify": "annotations/demo-classify"}
DEFAULT_NUM = {"detect": synthetic.DEFAULT_NUM_IMAGES, "classify": synthetic_classes.DEFAULT_NUM_IMAGES}
DEFAULT_SEED = synthetic.DEFAULT_SEED


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.demo",
        description=(
            "Generate a synthetic demo dataset: JPEG + LabelImg VOC XML side by side (detection),\n"
            "or <out>/<class>/*.jpg with --task classify. Same seed, same bytes."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--task", choices=("detect", "classify"), default="detect",
        help="detect: shapes with boxes (default); classify: one shape per image, a folder per class",
    )
    ap.add_argument("--out", help=f"output folder (default {DEFAULT_OUT['detect']}, or {DEFAULT_OUT['classify']})")
    ap.add_argument(
        "--num-images", type=positive_int, default=None,
        help=f"number of images (default {DEFAULT_NUM['detect']}, or {DEFAULT_NUM['classify']} for classify)",
    )
    ap.add_argument("--seed", type=non_negative_int, default=None, help=f"random seed (default {DEFAULT_SEED})")
    add_force(ap, "an existing --out folder")
    add_common(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)

    out = args.out
    if out is None:
        out = DEFAULT_OUT[args.task]
        note_default("--out", out)
    num = args.num_images
    if num is None:
        num = DEFAULT_NUM[args.task]
        note_default("--num-images", num)
    seed = args.seed
    if seed is None:
        seed = DEFAULT_SEED
        note_default("--seed", seed)
    try:
        with atomic_dir(out, force=args.force) as tmp:
            gen = synthetic_classes.generate if args.task == "classify" else synthetic.generate
            stats = gen(tmp, num, seed)
    except FileExistsError as e:
        error(str(e))
        return EXIT_USAGE
    if args.task == "classify":
        print(f"od.demo: wrote {num} images, a folder per class, to {out} (seed {seed})")
        print_table(["class", "images"], list(stats["per_class"].items()))
        return EXIT_OK
    rows = [(c, v["images"], v["boxes"]) for c, v in stats["per_class"].items()]
    rows.append(("(no objects)", stats["negatives"], 0))
    print(f"od.demo: wrote {num} images + VOC XML to {out} (seed {seed})")
    print_table(["class", "images", "boxes"], rows)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
