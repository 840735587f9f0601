"""The conversion plan: every XML read, images resolved, duplicates, classes, splits, shards."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from od.core import DROPPED_BOX, SKIPPED_IMAGE, Annotation, Box, Problem
from od.data.layout import Layout, _iter_xml_names, read_imagesets
from od.data.splits import _split_of_digest, hash_split
from od.io.shards import SPLITS, shard_name

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


@dataclass(frozen=True)
class ShardTask:
    split: str
    final_path: str
    tmp_path: str
    items: tuple[Item, ...]
    name_to_id: dict
    dry_run: bool = False


def _read_xmls(xmls: Sequence[str], root: str, image_dirs: Sequence[str], show: bool) -> list[tuple[Annotation, int]]:
    """Annotations and their image's size in bytes (-1 when unknown), in XML order."""
    from od.data.voc import parse_voc

    pairs = zip(xmls, image_dirs)
    if show and len(xmls) >= 2000:  # ~50 us per XML: a bar only where it is long enough to see
        from tqdm import tqdm

        pairs = tqdm(pairs, total=len(xmls), desc="reading XML", unit="xml", disable=None, leave=False)
    out = []
    for x, images in pairs:
        ann = parse_voc(x, root, images)
        size = -1
        if ann.image_path is not None:
            try:
                size = os.stat(ann.image_path).st_size
            except OSError:
                pass
        out.append((ann, size))
    return out


@functools.lru_cache(maxsize=64)
def _abs_prefix(root: str) -> str:
    return os.path.abspath(root).rstrip(os.sep) + os.sep


@functools.lru_cache(maxsize=4096)
def _abs_dir(path: str) -> str:
    return os.path.abspath(path)


def _abs(path: str | Path) -> str:
    """``os.path.abspath(path)``; for ``folder/name`` strings the folder's part is cached."""
    if isinstance(path, str) and os.sep == "/" and not path.startswith("//"):
        d, sep, b = path.rpartition("/")
        if d and b not in ("", ".", ".."):  # a plain last component: normalising cannot touch it
            a = _abs_dir(d)
            return a + "/" + b if a != "/" else "/" + b  # == os.path.join(a, b)
    return os.path.abspath(path)


def _rel(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` for messages and record names (lexical: no file system calls)."""
    p = _abs(path)
    prefix = _abs_prefix(os.fspath(root))
    if p.startswith(prefix):
        return p[len(prefix):].replace(os.sep, "/")
    return os.fspath(path)


def _refile(problems: Sequence[Problem], name: str) -> tuple[Problem, ...]:
    return tuple(Problem(name, p.problem, p.action) for p in problems)


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


def plan_dataset(
    layout: Layout,
    label_map_path: Path,
    *,
    add_classes: bool,
    skip_difficult: bool,
    val_fraction: float,
    test_fraction: float,
    show_progress: bool = True,
) -> Plan:
    """Read every XML, resolve images, classes, duplicates and splits (no pixels read)."""
    from od.io.label_map import LabelMap, read_label_map
    from od.io.example import _source_id_of_digest, source_id_for

    root = layout.root
    root_s = str(root)
    # Strings, not Path objects: per-file pathlib calls were a visible share of the run.
    # Folder-level facts (normalised name, images folder, key and report-name prefixes) are
    # computed once per folder; per file only string concatenation is left.
    xmls: list[str] = []
    keys: list[str] = []
    xml_names: list[str] = []  # report name of each XML (== _rel(xml, root))
    image_dirs: list[str] = []
    folders: dict[str, tuple[str, str, str, str]] = {}
    for dirpath, f in _iter_xml_names(layout.annotations_dir):
        facts = folders.get(dirpath)
        if facts is None:
            d = Path(dirpath)
            rel = d.relative_to(layout.annotations_dir).as_posix()
            images = layout.images_dir_for(d / "x.xml")  # the images folder of any XML in d
            dir_s = str(d)
            probe = _rel("x.xml" if dir_s == "." else os.path.join(dir_s, "x.xml"), root)
            facts = folders[dirpath] = (dir_s, str(images), "" if rel == "." else rel + "/", probe[:-5])
        dir_s, images_s, prefix, name_prefix = facts
        xmls.append(f if dir_s == "." else os.path.join(dir_s, f))  # == str(Path(dirpath) / f)
        keys.append(prefix + f[:-4])  # == relative_to(annotations).with_suffix("").as_posix()
        xml_names.append(name_prefix + f)
        image_dirs.append(images_s)
    parsed = _read_xmls(xmls, root_s, image_dirs, show_progress)

    # Per XML (listing order): report name, key, annotation; problems only where there are some.
    problems_by_xml: dict[str, list[Problem]] = {}
    # (report name, key, annotation, absolute image path, image bytes)
    usable: list[tuple[str, str, Annotation, str, int]] = []
    by_image: dict[str, tuple[str, str, Annotation, str, int]] = {}
    clashes: dict[str, list[tuple[str, str, Annotation, str, int]]] = {}  # image -> every XML pointing at it
    for name, key, (ann, size) in zip(xml_names, keys, parsed):
        if ann.problems:
            problems_by_xml[name] = list(_refile(ann.problems, name))
        if ann.image_path is None:
            continue
        img = _abs(ann.image_path)  # abspath normalises
        entry = (name, key, ann, img, size)
        usable.append(entry)
        first = by_image.setdefault(img, entry)
        if first is not entry:
            clashes.setdefault(img, [first]).append(entry)

    # Two XMLs -> one image: keep the XML named like the image (else the first), skip the rest.
    if clashes:
        dropped: set[str] = set()
        for img, entries in clashes.items():
            stem = Path(img).stem
            winner = next((e for e in entries if Path(e[0]).stem == stem), entries[0])
            for e in entries:
                if e is not winner:
                    dropped.add(e[1])
                    problems_by_xml.setdefault(e[0], []).append(
                        Problem(
                            e[0],
                            f"points at the same image {_rel(img, root)} as {winner[0]}; "
                            "only one annotation per image is used",
                            SKIPPED_IMAGE,
                        )
                    )
        kept_keys = {e[1] for e in usable if e[1] not in dropped}
        usable = [e for e in usable if e[1] in kept_keys]

    # Label map: honour an existing one; otherwise create it from the classes found.
    found = sorted({b.name for _, _, ann, _, _ in usable for b in ann.boxes})
    added: list[str] = []
    if label_map_path.exists():
        lm = read_label_map(label_map_path)
        status = "existing"
        unknown = [n for n in found if n not in lm]
        if unknown and add_classes:
            lm = lm.with_added(unknown)
            added = unknown
            status = "extended"
    else:
        lm = LabelMap.from_names(found)
        status = "created"

    # Splits.
    sets = read_imagesets(layout.imagesets_dir) if layout.imagesets_dir else {}
    assigned: dict[str, str] = {}
    split_src = "hash"
    if sets:
        split_src = "ImageSets/Main"
        for split_name, listed in (("train", "train"), ("val", "val"), ("test", "test")):
            for stem in sets.get(listed, []):
                assigned.setdefault(stem, split_name)
        for stem in sets.get("trainval", []):
            if stem not in assigned:
                assigned[stem] = hash_split(stem, val_fraction, 0.0)  # only trainval listed: split it

    items: list[Item] = []
    not_listed: list[str] = []
    used_ids: set[int] = set()
    difficult_skipped = 0
    unknown_total: Counter = Counter()
    root_prefix = _abs_prefix(root_s)
    images_prefix = _abs_prefix(str(layout.images_dir)) if layout.images_dir else root_prefix
    names_in_lm = set(lm.names)
    sha256 = hashlib.sha256
    for name, key, ann, img, size in usable:
        digest = sha256(key.encode("utf-8")).digest()  # split, source id and shard order
        if sets:
            split = assigned.get(key.rsplit("/", 1)[-1]) or assigned.get(key)
            if split is None:
                not_listed.append(name)
                continue
        else:
            split = _split_of_digest(digest, val_fraction, test_fraction)
        boxes = ann.boxes  # the usual case: every box is kept
        if skip_difficult or any(b.name not in names_in_lm for b in boxes):
            kept: list[Box] = []
            dropped_unknown: Counter = Counter()
            for b in boxes:
                if b.name not in names_in_lm:
                    dropped_unknown[b.name] += 1
                    continue
                if skip_difficult and b.difficult:
                    difficult_skipped += 1
                    continue
                kept.append(b)
            boxes = tuple(kept)
            for cls, n in sorted(dropped_unknown.items()):
                unknown_total[cls] += n
                problems_by_xml.setdefault(name, []).append(
                    Problem(
                        name,
                        f"class {cls!r} is not in the label map {label_map_path}; {n} box{'es' if n > 1 else ''} "
                        "dropped (pass --add-classes to add it)",
                        DROPPED_BOX,
                    )
                )
        sid = _source_id_of_digest(digest)  # == source_id_for(key)
        bump = 0
        while sid in used_ids:  # rare hash collision: deterministic re-hash
            bump += 1
            sid = source_id_for(f"{key}#{bump}")
        used_ids.add(sid)
        path = ann.image_path
        # == _rel(path, images folder or root) and _rel(path, root), from the absolute path found above
        report = img[len(root_prefix):].replace(os.sep, "/") if img.startswith(root_prefix) else path
        image_name = img[len(images_prefix):].replace(os.sep, "/") if img.startswith(images_prefix) else path
        items.append(
            Item(
                index=len(items),
                key=key,
                split=split,
                xml_name=name,
                image_path=path,
                image_name=image_name,
                image_report=report,
                xml_size=(ann.width, ann.height) if ann.width and ann.height else None,
                boxes=boxes,
                source_id=sid,
                order=digest,
                size=size,
            )
        )

    problems = [p for name in xml_names for p in problems_by_xml.get(name, ())]
    return Plan(layout, items, problems, lm, status, added, len(xmls), difficult_skipped, not_listed, split_src,
                dict(sorted(unknown_total.items())))


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
    pid = os.getpid()
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
            tmp = out / f".{final.name}.{pid}.tmp"
            tasks.append(ShardTask(split, str(final), str(tmp), tuple(items[i::n]), name_to_id, dry_run))
    return tasks
