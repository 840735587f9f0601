"""Every VOC box as an image of its own in ``OUT/<class>/``: a detection dataset becomes a classification one.

The XML and images go through the same reading as ``od.records`` (``od.data.plan``: inside
the root, regular files only, duplicates; ``prepare_image``: decode check, EXIF), so the
crops show the pixels the boxes were drawn on. Crops are PNG, so they hold exactly those
pixels. ``OUT/.od-crops.json`` lists what od wrote: only those files are ever replaced or
removed (``force`` replaces the rest too).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Box, Problem
from od.data.layout import Layout
from od.data.plan import _drop_duplicates, _read_annotations
from od.data.voc import apply_box_rules
from od.data.walk import Roots
from od.io.files import atomic_write_bytes, atomic_write_text

MANIFEST = ".od-crops.json"


@dataclass
class CropResult:
    written: dict[str, int] = field(default_factory=dict)  # class -> crops written
    problems: list[Problem] = field(default_factory=list)
    removed: int = 0  # crops of an earlier run this run did not write again
    images: int = 0  # images read


def crop_window(box: Box, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """Pixel window ``(x0, y0, x1, y1)`` (x1, y1 exclusive): the box grown by ``margin`` of its size
    on each side, out to whole pixels, clipped to the image."""
    mx, my = margin * box.width, margin * box.height
    return (max(0, math.floor(box.xmin - mx)), max(0, math.floor(box.ymin - my)),
            min(width, math.ceil(box.xmax + mx)), min(height, math.ceil(box.ymax + my)))


def _folder_problem(name: str) -> str | None:
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        return f"class name {name!r} cannot be a folder name; box not cropped"
    return None


def _read_manifest(out: Path) -> set[str]:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {f for f in data.get("files", []) if isinstance(f, str)} if isinstance(data, dict) else set()


def _write_manifest(out: Path, files) -> None:
    atomic_write_text(out / MANIFEST, json.dumps({"files": sorted(files)}, indent=1) + "\n")


def _png(region) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(region).save(buf, "PNG")
    return buf.getvalue()


def make_crops(
    layout: Layout, out: Path, *, margin: float = 0.0, min_size: int = 1, force: bool = False,
    follow_links: bool = False, progress=lambda n: None,
) -> CropResult:
    """Write each box of ``layout``'s XMLs as ``out/<class>/<xml key>_<k>.png``; never raises for bad input."""
    import numpy as np
    from PIL import Image

    from od.data.images import prepare_image

    res = CropResult()
    roots = Roots.of(layout.root, *layout.explicit, follow_links=follow_links)
    entries, problems_by_xml, _ = _read_annotations(layout, roots)
    usable = _drop_duplicates(entries, problems_by_xml, layout.root)
    for ps in problems_by_xml.values():
        res.problems.extend(ps)
    ours = _read_manifest(out)
    written: set[str] = set()
    _write_manifest(out, ours)  # the manifest exists before the first crop does
    for name, key, ann, image in usable:
        progress(1)
        report = os.path.relpath(image, layout.root).replace(os.sep, "/")
        prep = prepare_image(ann.image_path, (ann.width, ann.height), report)
        if prep.data is None:
            res.problems.extend(prep.problems)
            continue
        res.images += 1
        boxes, box_problems = apply_box_rules(ann.boxes, prep.width, prep.height, name)
        res.problems.extend(p for p in box_problems if p.action != FIXED)
        pixels = None
        for k, b in enumerate(boxes):
            why = _folder_problem(b.name)
            x0, y0, x1, y1 = crop_window(b, prep.width, prep.height, margin)
            if not why and min(x1 - x0, y1 - y0) < min_size:
                why = f"crop {x1 - x0}x{y1 - y0} is below --min-size {min_size}; not written"
            if why:
                res.problems.append(Problem(name, f"box {k} ({b.name}): {why}", DROPPED_BOX))
                continue
            rel = f"{b.name}/{key.replace('/', '__')}_{k}.png"
            target = out / rel
            if os.path.lexists(target) and rel not in ours and not force:
                res.problems.append(Problem(str(target), "exists and was not written by od.crops; not replaced "
                                            "(move it away, or pass --force)", SKIPPED_IMAGE))
                continue
            if pixels is None:
                pixels = np.asarray(Image.open(io.BytesIO(prep.data)).convert("RGB"))
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel not in ours:
                ours.add(rel)
                _write_manifest(out, ours)  # listed before written: a crash never leaves a crop od disowns
            atomic_write_bytes(target, _png(np.ascontiguousarray(pixels[y0:y1, x0:x1])))
            written.add(rel)
            res.written[b.name] = res.written.get(b.name, 0) + 1
    for rel in sorted(ours - written):  # an earlier run's crops this run did not make again
        p = out / rel
        if p.is_file() and not p.is_symlink():
            p.unlink()
            res.removed += 1
    _write_manifest(out, written)
    res.problems.sort(key=lambda p: p.file)
    return res
