"""The conversion plan: every XML read, images resolved, duplicates, classes, splits, shards."""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from od.core import DROPPED_BOX, SKIPPED_IMAGE, Box, Problem
from od.data.formats import Entry, LabelSet, read_labels
from od.data.layout import Layout, read_imagesets
from od.data.output import temp_name
from od.data.splits import _split_of_digest, hash_split
from od.data.voc import parse_voc
from od.data.walk import Roots, walk_xml
from od.io.files import shown
from od.io.schema import SPLITS, shard_name

TARGET_SHARD_BYTES = 150 * 1024 * 1024  # OD API / TF guidance: 100-200 MB per shard
# A split of n * MIN_SHARD_BYTES gets at least min(n, PARALLEL_SHARDS) shards, so that that many
# workers can write it at once (a shard is one worker's job). From the data alone, never from
# --workers: the output must not depend on it. 32 MB take 0.04 s (photos) to 0.25 s (30 KB images).
MIN_SHARD_BYTES = 32 * 1024 * 1024
PARALLEL_SHARDS = 8


class Item(NamedTuple):
    """One image to convert (metadata only; pixels are read by the worker).

    A NamedTuple, not a dataclass: one is made per image and half of them are pickled to a
    worker, and tuples are several times cheaper at both.
    """

    index: int
    key: str
    split: str
    xml_name: str  # report name of the XML
    image_path: str
    image_name: str  # image/filename in the record (relative to the images folder)
    image_report: str  # report name of the image (relative to the dataset root)
    xml_size: tuple[int, int] | None
    boxes: tuple[Box, ...]
    source_id: int
    order: bytes = b""  # sha256 of key (shard order); computed when empty
    size: int = -1  # bytes of the image file when planned (-1: unknown); sizes shards
    label: int = -1  # classification: the 0-based class label (-1: a detection item)
    class_name: str = ""  # classification: the class (its folder's name)


@dataclass(frozen=True)
class ShardTask:
    split: str
    final_path: str
    tmp_path: str
    items: tuple[Item, ...]
    name_to_id: dict
    dry_run: bool = False


def _rel(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` for messages and record names (lexical), as text."""
    p, r = os.path.abspath(path), os.path.abspath(root)
    rel = os.path.relpath(p, r) if p == r or p.startswith(r.rstrip(os.sep) + os.sep) else os.fspath(path)
    return shown(rel.replace(os.sep, "/"))


def _refile(problems: Sequence[Problem], name: str) -> list[Problem]:
    return [Problem(name, p.problem, p.action) for p in problems]


@dataclass
class Plan:
    layout: Layout
    items: list[Item]
    problems: list[Problem]  # planning problems (XML, duplicates, unknown classes), in XML order
    label_map: object
    label_map_status: str  # created | existing | extended
    added_classes: list[str]
    num_xml: int
    difficult_skipped: int = 0
    not_listed: list[str] = field(default_factory=list)
    splits_source: str = "hash"
    unknown_classes: dict[str, int] = field(default_factory=dict)  # class -> boxes dropped
    boxes_in_xml: int = 0  # boxes of usable XMLs before the label map's filter
    outside_roots: list[str] = field(default_factory=list)  # real folders read outside the root (--follow-links)
    label_map_bytes: bytes | None = None  # the label map file to write (created or edited), None: unchanged
    task: str = "detection"  # or "classification" (od.data.classification)
    labels_bytes: bytes | None = None  # classification: labels.txt to write beside the label map


def read_voc_labels(layout: Layout, roots: Roots) -> LabelSet:
    """Every XML of a VOC layout parsed (the VOC reader of ``od.data.formats``)."""
    root = layout.root
    labels = LabelSet()
    folders = [layout.annotations_dir] + ([layout.images_dir] if layout.images_dir is not None else [])
    for d in folders:
        why = roots.refuse(d) if d not in layout.explicit else None
        if why:
            name = _rel(d, root) + "/"
            labels.add(Problem(name, f"folder {why}", SKIPPED_IMAGE))
            return labels
    for path, problem in walk_xml(layout.annotations_dir, roots, lambda p: _rel(p, root)):
        if problem is not None:
            labels.num_files += path.lower().endswith(".xml")
            labels.add(problem)
            continue
        labels.num_files += 1
        name = _rel(path, root)
        ann = parse_voc(path, root, layout.images_dir_for(Path(path)), roots)
        if ann.problems:
            labels.problems[name] = _refile(ann.problems, name)
        if ann.image_path is None:
            continue
        key = Path(os.path.relpath(path, layout.annotations_dir)).with_suffix("").as_posix()
        labels.entries.append(Entry(name, key, ann, os.path.abspath(ann.image_path)))
    return labels


def _read_annotations(layout: Layout, roots: Roots) -> tuple[list[Entry], dict[str, list[Problem]], int]:
    """Every label of the layout read, in its format: (entries, problems per report name, input count)."""
    labels = read_labels(layout, roots)
    return labels.entries, labels.problems, labels.num_files


def _drop_duplicates(entries: list[Entry], problems: dict[str, list[Problem]], root: Path) -> list[Entry]:
    """Two XMLs -> one image: keep the XML named like the image (else the first), skip the rest."""
    by_image: dict[str, list[Entry]] = {}
    for e in entries:
        by_image.setdefault(e.image, []).append(e)
    dropped: set[str] = set()
    for img, group in by_image.items():
        if len(group) < 2:
            continue
        stem = Path(img).stem
        winner = next((e for e in group if Path(e.name).stem == stem), group[0])
        for e in group:
            if e is not winner:
                dropped.add(e.key)
                problems.setdefault(e.name, []).append(Problem(
                    e.name, f"points at the same image {_rel(img, root)} as {winner.name}; "
                    "only one annotation per image is used", SKIPPED_IMAGE))
    return [e for e in entries if e.key not in dropped]


def _label_map(path: Path, found: list[str], add_classes: bool):
    """(label map, status, added classes, bytes to write or None). Raises LabelMapError."""
    from od.io.label_map import LabelMap, append_items, format_label_map, read_label_map

    if not path.exists():
        lm = LabelMap.from_names(found)
        return lm, "created", [], format_label_map(lm).encode("utf-8")
    lm = read_label_map(path)
    unknown = [n for n in found if n not in lm]
    if not (unknown and add_classes):
        return lm, "existing", [], None
    extended = lm.with_added(unknown)
    new_items = [(i, n) for i, n in extended.items if n in unknown]
    return extended, "extended", unknown, append_items(path.read_bytes(), new_items)


def plan_dataset(
    layout: Layout,
    label_map_path: Path,
    *,
    add_classes: bool,
    skip_difficult: bool,
    val_fraction: float,
    test_fraction: float,
    follow_links: bool = False,
) -> Plan:
    """Read every XML, resolve images, classes, duplicates and splits (no pixels read)."""

    root = layout.root
    roots = Roots.of(root, *layout.explicit, follow_links=follow_links)
    labels = read_labels(layout, roots)
    entries, problems_by_xml, num_xml = labels.entries, labels.problems, labels.num_files
    usable = _drop_duplicates(entries, problems_by_xml, root)

    found = sorted({b.name for e in usable for b in e.ann.boxes})
    lm, status, added, lm_bytes = _label_map(label_map_path, found, add_classes)

    # Splits.
    sets = read_imagesets(layout.imagesets_dir) if layout.imagesets_dir else {}
    assigned: dict[str, str] = {}
    split_src = "hash"
    if sets:
        split_src = "ImageSets/Main"
        for split_name in ("train", "val", "test"):
            for stem in sets.get(split_name, []):
                assigned.setdefault(stem, split_name)
        for stem in sets.get("trainval", []):
            if stem not in assigned:
                assigned[stem] = hash_split(stem, val_fraction, 0.0)  # only trainval listed: split it
    elif set(labels.splits.values()) == {"train"} and {s for s, _ in layout.sources} <= {"train", ""}:
        # a train file alone (instances_train.json, train_labels.csv, a data.yaml with train: only): od.train
        # needs a val split, so it is carved out by hash as for a VOC folder
        labels.splits = {}
    elif labels.splits:
        split_src = labels.split_source or "given by the dataset"

    items: list[Item] = []
    not_listed: list[str] = []
    used_ids: set[int] = set()
    difficult_skipped = 0
    unknown_total: Counter = Counter()
    images_root = str(layout.images_dir) if layout.images_dir else str(root)
    for name, key, ann, img in usable:
        digest = hashlib.sha256(key.encode("utf-8")).digest()  # split, source id and shard order
        if sets:
            split = assigned.get(key.rsplit("/", 1)[-1]) or assigned.get(key)
            if split is None:
                not_listed.append(name)
                continue
        else:  # the split the format gives (COCO files, YOLO folders, CSV files), else by hash
            split = labels.splits.get(key) or _split_of_digest(digest, val_fraction, test_fraction)
        kept: list[Box] = []
        dropped_unknown: Counter = Counter()
        for b in ann.boxes:
            if b.name not in lm:
                dropped_unknown[b.name] += 1
            elif skip_difficult and b.difficult:
                difficult_skipped += 1
            else:
                kept.append(b)
        for cls, n in sorted(dropped_unknown.items()):
            unknown_total[cls] += n
            problems_by_xml.setdefault(name, []).append(Problem(
                name, f"class {cls!r} is not in the label map {label_map_path}; {n} box{'es' if n > 1 else ''} "
                "dropped (pass --add-classes to add it)", DROPPED_BOX))
        sid = unique_source_id(key, digest, used_ids)
        try:
            size = os.stat(ann.image_path).st_size
        except OSError:
            size = -1
        items.append(Item(
            index=len(items), key=key, split=split, xml_name=name, image_path=ann.image_path,
            image_name=_rel(img, images_root), image_report=_rel(img, root),
            xml_size=(ann.width, ann.height) if ann.width and ann.height else None,
            boxes=tuple(kept), source_id=sid, order=digest, size=size,
        ))

    problems = [p for name in sorted(problems_by_xml) for p in problems_by_xml[name]]
    return Plan(
        layout, items, problems, lm, status, added, num_xml, difficult_skipped, not_listed, split_src,
        dict(sorted(unknown_total.items())), sum(len(e.ann.boxes) for e in usable),
        sorted(roots.outside), lm_bytes,
    )


def _image_size(item: Item) -> int:
    if item.size >= 0:
        return item.size
    try:
        return os.path.getsize(item.image_path)
    except OSError:
        return 0


def _shard_order(items: Sequence[Item]) -> list[Item]:
    """Items of a split in a stable pseudo-random order (mixes classes/sources across shards)."""
    return sorted(items, key=lambda it: (it.order or hashlib.sha256(it.key.encode("utf-8")).digest(), it.key))


def make_shard_tasks(
    plan: Plan, out: Path, shards: int | None, name_to_id: dict, dry_run: bool = False
) -> list[ShardTask]:
    tasks: list[ShardTask] = []
    for split in SPLITS:
        items = _shard_order([it for it in plan.items if it.split == split])
        if not items:
            continue
        if shards is None:
            size = sum(_image_size(it) for it in items)
            n = max(math.ceil(size / TARGET_SHARD_BYTES), min(PARALLEL_SHARDS, size // MIN_SHARD_BYTES))
        else:
            n = shards
        n = max(1, min(n, len(items)))
        for i in range(n):
            final = out / shard_name(split, i, n)
            tasks.append(ShardTask(split, str(final), temp_name(final), tuple(items[i::n]), name_to_id, dry_run))
    return tasks


def unique_source_id(key: str, digest: bytes, used_ids: set[int]) -> int:
    """``source_id_for(key)`` (from its sha256 ``digest``), re-hashed deterministically in the rare
    case it collides with one in ``used_ids``; the id is added to ``used_ids``."""
    from od.io.example import _source_id_of_digest, source_id_for

    sid = _source_id_of_digest(digest)
    bump = 0
    while sid in used_ids:
        bump += 1
        sid = source_id_for(f"{key}#{bump}")
    used_ids.add(sid)
    return sid
