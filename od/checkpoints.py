"""Pretrained checkpoints: a registry, a verified download cache, safe extraction, fine-tune restore.

Model Garden publishes ImageNet backbones and a few COCO detectors; od names them so a template can
say ``pretrained_checkpoint: resnet50_imagenet``. Files are fetched over HTTPS into ``~/.cache/od``
(``OD_CACHE``) under a ``.part`` name, kept only when the whole body arrived (``Content-Length``
bytes or a complete chunked body; one retry, resumed with HTTP Range where the server allows),
then checked against a sha256. Archives may hold only plain files and folders (no links, no
absolute or '..' paths), and od never writes through a link in the cache. Any network or archive
failure is one error line saying which URL to fetch by hand and the exact path to put it at.

Checksums: where the registry has no published sha256 (Model Garden publishes none), the hash of
the first download is recorded in ``<cache>/<name>/SHA256SUMS`` and every later use is verified
against it (trust on first use). Nothing here invents a hash.

    python -m od.checkpoints list
    python -m od.checkpoints fetch resnet50_imagenet
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error
from od.model.checkpoints import REGISTRY, CheckpointError, cache_dir, resolve
from od.options import add_common, quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m od.checkpoints", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lst = sub.add_parser("list", help="the registry")
    f = sub.add_parser("fetch", help="download + verify (+ extract) into the cache; print the checkpoint path")
    f.add_argument("name", help="registry name, or a path to check")
    add_common(ap, [lst, f])
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)
    if args.cmd == "list":
        for spec in REGISTRY.values():
            sha = "published" if all(x.sha256 for x in spec.files) else "recorded on first download"
            print(f"{spec.name}\n    {spec.description}\n    initialises: {spec.contents}\n    sha256: {sha}")
            for f in spec.files:
                print(f"    {f.url}")
        print(f"cache: {cache_dir()} (set OD_CACHE to move it)")
        return EXIT_OK
    try:
        print(resolve(args.name, progress=not args.quiet))
    except CheckpointError as e:
        error(str(e))
        return EXIT_FAILURES if args.name in REGISTRY else EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
