"""The classification plan: a folder of images per class -> items with a label each, label map, labels.txt.

Classes are the folder names. Their ids live in the label map in od's usual format (ids
1..N, 0 being the background in detection); records hold Model Garden's 0-based
``image/class/label`` = id - 1, with ``num_classes`` = N, and ``labels.txt`` beside the label
map lists the classes in id order, so line i (from 0) is label i: what ``label_image.py``
and Keras read. A label map already there keeps its ids; a new class folder is appended.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from od.core import SKIPPED_IMAGE, Problem
from od.data.inputs import IMAGE_SUFFIXES
from od.data.layout import Layout, UsageError
from od.data.plan import Item, Plan, _rel, unique_source_id
from od.data.splits import _split_of_digest
from od.data.walk import Roots, name_problem, walk_files
from od.io.files import shown

LABELS_FILE = "labels.txt"


def labels_path(label_map_path: str | os.PathLike) -> Path:
    return Path(label_map_path).with_name(LABELS_FILE)


def labels_text(label_map) -> str:
    """One class a line, in id order (line i = record label i)."""
    return "".join(f"{n}\n" for n in label_map.names)


def labels_clash(path: Path, text: str) -> str | None:
    """Why writing ``text`` to ``path`` would lose the user's file, or None.

    A labels.txt od wrote before lists a prefix of today's classes (ids are kept and new
    classes appended), so only a file that disagrees with the label map is protected.
    """
    if not os.path.lexists(path):
        return None
    try:
        old = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return f"{path} exists and is not a labels.txt od wrote"
    new = text.splitlines()
    if old == new[: len(old)]:
        return None
    return f"{path} lists other classes than the label map ({', '.join(old[:3])}{' ...' if len(old) > 3 else ''})"


def _class_label_map(path: Path, found: list[str]):
    """(label map, status, added classes, bytes to write or None). Raises LabelMapError."""
    from od.io.label_map import (
        LabelMap,
        LabelMapError,
        append_items,
        format_label_map,
        read_label_map,
    )

    if not path.exists():
        lm = LabelMap.from_names(found)
        return lm, "created", [], format_label_map(lm).encode("utf-8")
    lm = read_label_map(path)
    if lm.ids != list(range(1, len(lm) + 1)):
        raise LabelMapError(f"{path}: a classification label map needs ids 1..N without gaps (the record label "
                            f"is id - 1); this one has ids {', '.join(map(str, lm.ids[:8]))}")
    unknown = [n for n in found if n not in lm]
    if not unknown:
        return lm, "existing", [], None
    extended = lm.with_added(unknown)
    new_items = [(i, n) for i, n in extended.items if n in unknown]
    return extended, "extended", sorted(unknown), append_items(path.read_bytes(), new_items)


def _subdirs(d: Path, roots: Roots, root: Path, problems: list[Problem]) -> list[Path]:
    """Visible subfolders of ``d``; links leading outside and names that are not text become problems."""
    out = []
    with os.scandir(d) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            if not e.is_dir():
                if e.name.lower().endswith(IMAGE_SUFFIXES):
                    problems.append(Problem(_rel(e.path, root), "is not in a class folder; not read", SKIPPED_IMAGE))
                continue
            bad = name_problem(e.name)
            why = bad or (roots.refuse(e.path) if e.is_symlink() else None)
            if why:
                problems.append(Problem(shown(_rel(e.path, root)) + "/", f"folder {why}", SKIPPED_IMAGE))
                continue
            out.append(Path(e.path))
    return out


def plan_classification(
    layout: Layout, label_map_path: Path, *, val_fraction: float, test_fraction: float, follow_links: bool = False,
) -> Plan:
    """Find every class folder and image (no pixels read), give classes ids and images splits.

    Raises UsageError for a class folder without images and for fewer than two classes.
    """

    root = layout.root
    roots = Roots.of(root, follow_links=follow_links)
    problems: list[Problem] = []
    if layout.presplit:
        folders = [(s.name, c) for s in _subdirs(root, roots, root, problems) for c in
                   _subdirs(s, roots, root, problems)]
    else:
        folders = [(None, c) for c in _subdirs(root, roots, root, problems)]
    found_images: list[tuple[str | None, str, str]] = []  # (split, class, path)
    num_files = 0
    for split, folder in folders:
        n = 0
        for path, problem in walk_files(folder, roots, lambda p: _rel(p, root), IMAGE_SUFFIXES):
            num_files += 1
            why = roots.refuse(path) if problem is None else None  # a file link leading outside
            if why:
                problem = Problem(_rel(path, root), why, SKIPPED_IMAGE)
            if problem is not None:
                problems.append(problem)
                continue
            found_images.append((split, folder.name, path))
            n += 1
        if n == 0:
            raise UsageError(f"{_rel(folder, root)}/: class folder {folder.name!r} holds no image (of "
                             f"{', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
    found = sorted({c for _, c, _ in found_images})
    if len(found) < 2:
        what = f"only one class folder ({found[0]}/)" if found else "no class folder"
        raise UsageError(f"{root}: {what}; classification needs a folder of images for each of at least two classes")
    lm, status, added, lm_bytes = _class_label_map(label_map_path, found)

    items: list[Item] = []
    used_ids: set[int] = set()
    for split, cls, path in found_images:
        key = _rel(path, root)  # with its suffix: cat/a.jpg and cat/a.png are two images
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        sid = unique_source_id(key, digest, used_ids)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        items.append(Item(
            index=len(items), key=key, split=split or _split_of_digest(digest, val_fraction, test_fraction),
            xml_name=key, image_path=path, image_name=key, image_report=key, xml_size=None, boxes=(),
            source_id=sid, order=digest, size=size, label=lm.name_to_id[cls] - 1, class_name=cls,
        ))
    problems.sort(key=lambda p: p.file)
    labels = labels_text(lm).encode("utf-8")
    lp = labels_path(label_map_path)
    same = lp.is_file() and not lp.is_symlink() and lp.read_bytes() == labels
    return Plan(
        layout, items, problems, lm, status, added, num_files,
        splits_source="folders" if layout.presplit else "hash", outside_roots=sorted(roots.outside),
        label_map_bytes=lm_bytes, task="classification", labels_bytes=None if same else labels,
    )
