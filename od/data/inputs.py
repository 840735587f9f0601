"""What od.detect runs on: image files, folders (recursive) and globs, each with a unique output key."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
COMBINED_JSON = "detections"  # <out>/detections.json (per-image JSONs never take this name)
RESERVED_DIRS = ("voc", "crops")  # <out>/voc/, <out>/crops/


@dataclass(frozen=True)
class InputImage:
    """One image to process and the unique key its outputs are named by (posix, no suffix)."""

    path: Path
    key: str


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _natural(name: str) -> list:
    """Sort key: img2 before img10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _walk_images(folder: Path, exclude: Path | None) -> list[Path]:
    """Entries named like images under ``folder`` (recursive, natural order), skipping hidden entries
    and ``exclude``. They need not be regular files (``run`` reports a FIFO or socket without opening
    it); a folder named like an image is searched, and listed itself when no image is found in it."""
    found: list[Path] = []
    image_named_dirs: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        dirs[:] = sorted(
            (d for d in dirs if not d.startswith(".") and (exclude is None or (rootp / d).resolve() != exclude)),
            key=_natural,
        )
        image_named_dirs += [rootp / d for d in dirs if _is_image(Path(d))]
        found += [rootp / f for f in sorted(files, key=_natural) if not f.startswith(".") and _is_image(Path(f))]
    if image_named_dirs:
        holding = {parent for f in found for parent in f.parents}
        found += [d for d in image_named_dirs if d not in holding]
    return found


def collect_inputs(specs: Sequence[str], out_dir: Path) -> tuple[list[InputImage], list[str]]:
    """Expand files/folders/globs into images with unique output keys; returns (images, problems).

    Keys: a file's stem, or its path relative to the folder argument (so ``a/x.jpg`` and
    ``a/sub/x.jpg`` stay apart); clashes between arguments get the folder's name, then ``_2``...
    The output folder is never searched (a second run must not detect on its own outputs).
    """
    out_resolved = out_dir.resolve()
    problems: list[str] = []
    candidates: list[tuple[Path, str, str]] = []  # (path, preferred key, fallback prefix)
    for spec in specs:
        p = Path(spec)
        found = _walk_images(p, out_resolved if out_resolved != p.resolve() else None) if p.is_dir() else []
        if found:
            for f in found:
                rel = f.relative_to(p).with_suffix("").as_posix()
                candidates.append((f, rel, p.resolve().name or "root"))
        elif (p.exists() and not p.is_dir()) or (p.is_dir() and _is_image(p)):
            # a file (a FIFO too: reported by run, never opened), or a folder named like an image
            # that holds none
            candidates.append((p, p.stem, p.resolve().parent.name))
        elif p.is_dir():
            continue
        elif any(c in spec for c in "*?["):
            matches = sorted(glob.glob(spec, recursive=True), key=_natural)
            files: list[Path] = []
            for m in matches:
                mp = Path(m)
                inside = _walk_images(mp, out_resolved) if mp.is_dir() else []
                files += inside
                if not inside and _is_image(mp):
                    files.append(mp)
            if not files:
                problems.append(f"{spec}: no images match this pattern")
            for f in files:
                candidates.append((f, f.stem, f.resolve().parent.name))
        else:
            problems.append(f"{spec}: no such file or folder")

    seen_paths: set[Path] = set()
    taken: set[str] = {COMBINED_JSON}
    images: list[InputImage] = []
    for path, key, prefix in candidates:
        rp = path.resolve()
        if rp in seen_paths:  # same file named twice (e.g. a folder and a glob)
            continue
        seen_paths.add(rp)
        options = [key, f"{prefix}/{key}" if prefix else key]
        chosen = next((k for k in options if _key_ok(k, taken)), None)
        n = 2
        while chosen is None:
            if _key_ok(f"{key}_{n}", taken):
                chosen = f"{key}_{n}"
            n += 1
        taken.add(chosen.lower())
        images.append(InputImage(path, chosen))
    return images, problems


def _key_ok(key: str, taken: set[str]) -> bool:
    first = key.split("/", 1)[0]
    if "/" in key and first.lower() in RESERVED_DIRS:
        return False
    return key.lower() not in taken
