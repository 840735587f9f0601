"""``python -m od.demo`` — write the built-in synthetic Pascal VOC dataset (:mod:`od.data.synthetic`)."""

from __future__ import annotations

import argparse
import sys

from od.console import EXIT_OK, EXIT_USAGE, error, note_default, print_table
from od.data.synthetic import DEFAULT_NUM_IMAGES, DEFAULT_SEED, generate
from od.io.files import atomic_dir
from od.options import add_common, add_force, non_negative_int, positive_int, quiet_tensorflow

DEFAULT_OUT = "annotations/demo"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.demo",
        description="Generate the synthetic demo dataset (JPEG + LabelImg VOC XML side by side).",
    )
    ap.add_argument("--out", help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--num-images", type=positive_int, default=None, help=f"number of images (default {DEFAULT_NUM_IMAGES})")
    ap.add_argument("--seed", type=non_negative_int, default=None, help=f"random seed (default {DEFAULT_SEED})")
    add_force(ap, "an existing --out folder")
    add_common(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)

    out = args.out
    if out is None:
        out = DEFAULT_OUT
        note_default("--out", out)
    num = args.num_images
    if num is None:
        num = DEFAULT_NUM_IMAGES
        note_default("--num-images", num)
    seed = args.seed
    if seed is None:
        seed = DEFAULT_SEED
        note_default("--seed", seed)
    try:
        with atomic_dir(out, force=args.force) as tmp:
            stats = generate(tmp, num, seed)
    except FileExistsError as e:
        error(str(e))
        return EXIT_USAGE
    rows = [(c, v["images"], v["boxes"]) for c, v in stats["per_class"].items()]
    rows.append(("(no objects)", stats["negatives"], 0))
    print(f"od.demo: wrote {num} images + VOC XML to {out} (seed {seed})")
    print_table(["class", "images", "boxes"], rows)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
