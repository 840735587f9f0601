"""``python -m od.records DATA_DIR`` — Pascal VOC folder -> sharded TFRecords + label map + report.

Three layouts are recognised (``--annotations``/``--images`` override):
  1. a VOCdevkit year folder: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/*.txt``;
  2. an annotations folder (annotations/ Annotations/ annots/ xml/) beside an images
     folder (images/ JPEGImages/ imgs/);
  3. XML files next to their images (LabelImg's default), searched recursively.

First every XML is read (by the workers) and the whole conversion is planned: images,
classes, duplicates, splits, shards. Then the workers write the shards (a big shard in
consecutive chunks, joined in order afterwards), streaming one image at a time (memory
does not grow with the dataset). This process is one of the workers: with ``--workers 2``
there is one child process, fed through a pipe. Workers never
import TensorFlow: Examples are encoded by ``od.tfexample`` (hand-written wire format, the
image bytes passed through untouched) and written with its TF-free TFRecord writer
(CRC32C via ``google-crc32c``, batched ``writev``), so a worker starts in well under a
second. Shards are written under hidden temporary names and renamed only when every shard
is complete; ``report.json`` is written last.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from od.types import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Annotation, Box, Problem
from od.util import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    atomic_write_text,
    error,
    format_table,
    note_default,
    warn,
)

DEFAULT_OUT = "data/records"
DEFAULT_LABEL_MAP = "label_maps/label_map.pbtxt"
DEFAULT_VAL_FRACTION = 0.2
TARGET_SHARD_BYTES = 150 * 1024 * 1024  # OD API / TF guidance: 100-200 MB per shard
ANNOTATION_DIRS = ("annotations", "Annotations", "annots", "xml")
IMAGE_DIRS = ("images", "JPEGImages", "imgs")
SPLITS = ("train", "val", "test")
REPORT_VERSION = 1
MAX_PROBLEMS_SHOWN = 20
_SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord$")
_TMP_RE = re.compile(r"^\.(train|val|test)-\d{5}-of-\d{5}\.tfrecord\..*\.tmp$")


class UsageError(Exception):
    """Bad command line or unusable DATA_DIR (exit 2)."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    kind: str  # voc | folders | flat | explicit
    root: Path  # dataset root: images are never read from outside it (or images_dir)
    annotations_dir: Path
    images_dir: Path | None  # None: each image beside its XML
    imagesets_dir: Path | None = None
    description: str = ""

    def images_dir_for(self, xml: Path) -> Path | None:
        """Where ``xml``'s image lives; nested annotation folders mirror into the images folder."""
        if self.images_dir is None:
            return xml.parent
        rel = xml.parent.relative_to(self.annotations_dir)
        return self.images_dir / rel



def shard_name(split: str, index: int, count: int) -> str:
    """OD API shard naming (``train-00000-of-00004.tfrecord``); readers glob ``shard_pattern``."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_pattern(split: str) -> str:
    return f"{split}-*-of-*.tfrecord"

def _has_imagesets(year_dir: Path) -> Path | None:
    main = year_dir / "ImageSets" / "Main"
    if any((main / f"{n}.txt").is_file() for n in ("train", "val", "trainval", "test")):
        return main
    return None


def _is_voc_year(d: Path) -> bool:
    return (d / "Annotations").is_dir() and (d / "JPEGImages").is_dir()


def _resolve_dir(arg: str, data_dir: Path | None, what: str) -> Path:
    p = Path(arg)
    if not p.is_dir() and data_dir is not None and not p.is_absolute() and (data_dir / p).is_dir():
        p = data_dir / p
    if not p.is_dir():
        raise UsageError(f"{what} {arg}: no such folder")
    return p


def detect_layout(data_dir: str | Path | None, annotations: str | None = None, images: str | None = None) -> Layout:
    """Work out where the XML and images are; raises UsageError with what was expected."""
    dd = Path(data_dir) if data_dir is not None else None
    if dd is not None and not dd.is_dir():
        raise UsageError(f"DATA_DIR {dd}: no such folder")
    if annotations or images:
        ann = _resolve_dir(annotations, dd, "--annotations") if annotations else dd
        if ann is None:
            raise UsageError("give DATA_DIR or --annotations")
        img = _resolve_dir(images, dd, "--images") if images else None
        root = dd if dd is not None else Path(os.path.commonpath([ann.resolve()] + ([img.resolve()] if img else [])))
        sets = _has_imagesets(dd) if dd is not None else None
        desc = f"--annotations {ann}" + (f" --images {img}" if img else " (images beside the XML)")
        return Layout("explicit", root, ann, img, sets, desc)
    assert dd is not None
    if _is_voc_year(dd):
        sets = _has_imagesets(dd)
        desc = "VOCdevkit year folder (Annotations/ + JPEGImages/" + (" + ImageSets/Main" if sets else "") + ")"
        return Layout("voc", dd, dd / "Annotations", dd / "JPEGImages", sets, desc)
    years: list[Path] = []
    if dd.is_dir():
        with os.scandir(dd) as entries:  # DirEntry.is_dir: no stat per file in a flat folder of images
            years = sorted(Path(e.path) for e in entries if e.is_dir() and _is_voc_year(Path(e.path)))
    if len(years) == 1:
        y = years[0]
        sets = _has_imagesets(y)
        desc = f"VOCdevkit year folder {y.name}/ (Annotations/ + JPEGImages/" + (" + ImageSets/Main" if sets else "") + ")"
        return Layout("voc", y, y / "Annotations", y / "JPEGImages", sets, desc)
    if len(years) > 1:
        names = ", ".join(str(y) for y in years)
        raise UsageError(f"{dd} holds several VOC year folders ({names}); pass one of them as DATA_DIR")
    ann = next((dd / n for n in ANNOTATION_DIRS if (dd / n).is_dir()), None)
    img = next((dd / n for n in IMAGE_DIRS if (dd / n).is_dir()), None)
    if ann is not None and any(ann.rglob("*.xml")):
        if img is not None:
            return Layout("folders", dd, ann, img, None, f"{ann.name}/ beside {img.name}/")
        return Layout("folders", dd, ann, None, None, f"{ann.name}/ (images beside the XML)")
    if next(_iter_xml_names(dd), None) is not None:
        return Layout("flat", dd, dd, None, None, "XML next to the images")
    raise UsageError(
        f"no Pascal VOC XML found in {dd}. Expected one of: a VOCdevkit year folder (Annotations/, JPEGImages/, "
        f"ImageSets/Main/); an annotations folder ({', '.join(ANNOTATION_DIRS)}) beside an images folder "
        f"({', '.join(IMAGE_DIRS)}); or .xml files next to their images. Or pass --annotations DIR --images DIR."
    )


def _iter_xml_names(folder: Path):
    """``(folder path, file name)`` of the XML files under ``folder`` (sorted; hidden folders and files skipped)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.lower().endswith(".xml") and not f.startswith("."):
                yield dirpath, f


# --------------------------------------------------------------------------- splits


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """Stable split from the file stem alone: adding images never moves existing ones."""
    return _split_of_digest(hashlib.sha256(key.encode("utf-8")).digest(), val_fraction, test_fraction)


def _split_of_digest(digest: bytes, val_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def read_imagesets(main_dir: Path) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "trainval": [...], "test": [...]}`` (first token of each line)."""
    out: dict[str, list[str]] = {}
    for name in ("train", "val", "trainval", "test"):
        p = main_dir / f"{name}.txt"
        if p.is_file():
            out[name] = [ln.split()[0] for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.split()]
    return out


# --------------------------------------------------------------------------- planning


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


class Outcome(NamedTuple):
    """What became of one image (a NamedTuple for the same reason as ``Item``)."""

    index: int
    converted: bool
    width: int = 0
    height: int = 0
    fast_path: bool = False
    reencoded: bool = False
    class_counts: tuple[tuple[str, int], ...] = ()
    problems: tuple[Problem, ...] = ()
    kept_boxes: int = 0


_hot_functions: tuple | None = None


def _hot() -> tuple:
    """``(prepare_image, apply_box_rules, encode_example_parts)``, imported on first use.

    Not at module level: ``od.records --help`` must not load Pillow; not per image either
    (an import statement costs a lookup through the import system every time).
    """
    global _hot_functions
    if _hot_functions is None:
        from od.images import prepare_image
        from od.tfexample import encode_example_parts
        from od.voc import apply_box_rules

        _hot_functions = (prepare_image, apply_box_rules, encode_example_parts)
    return _hot_functions


def _convert_item(item: Item, name_to_id: dict) -> tuple[Outcome, tuple | None]:
    """Prepare one image and encode its Example as ``(prefix, image bytes, suffix)`` parts."""
    prepare_image, apply_box_rules, _ = _hot()
    prep = prepare_image(item.image_path, item.xml_size, item.image_report)
    if prep.data is None:
        return Outcome(item.index, False, problems=prep.problems), None
    boxes, box_problems = apply_box_rules(item.boxes, prep.width, prep.height, item.xml_name)
    try:
        rec = _encode(item, prep, boxes, name_to_id)
    except ValueError as e:  # e.g. a class name or file name that is not valid UTF-8 text
        problem = Problem(item.image_report, f"cannot encode the Example: {e}", SKIPPED_IMAGE)
        return Outcome(item.index, False, problems=prep.problems + box_problems + (problem,)), None
    counts = Counter(b.name for b in boxes)
    return (
        Outcome(
            item.index, True, prep.width, prep.height, prep.fast_path, not prep.fast_path,
            tuple(sorted(counts.items())), prep.problems + box_problems, len(boxes),
        ),
        rec,
    )


def _encode(item: Item, prep, boxes: Sequence[Box], name_to_id: dict) -> tuple:
    return _hot()[2](
        image_bytes=prep.data,
        image_format="jpeg",
        width=prep.width,
        height=prep.height,
        filename=item.image_name,
        source_id=item.source_id,
        boxes=boxes,
        class_ids=[name_to_id[b.name] for b in boxes],
    )


def _no_progress(n: int) -> None:
    pass


def write_shard(task: ShardTask, progress: Callable[[int], None] = _no_progress) -> list[Outcome]:
    """Convert and write one shard to its temp name (or only check, with ``dry_run``).

    Streams: one image is in memory at a time, whatever the shard size.
    """
    from time import monotonic

    from od.tfexample import open_record_writer

    outcomes: list[Outcome] = []
    writer = None if task.dry_run else open_record_writer(task.tmp_path)
    try:
        pending = 0
        last = monotonic()
        for item in task.items:
            out, rec = _convert_item(item, task.name_to_id)
            outcomes.append(out)
            if writer is not None and rec is not None:
                writer.write(rec)
            # Drop this image's bytes before reading the next: the allocator then reuses the
            # same (already mapped) memory instead of faulting in fresh pages for every image.
            rec = None
            pending += 1
            if pending >= 256 or monotonic() - last >= 0.2:  # a few updates a second is plenty
                progress(pending)
                pending = 0
                last = monotonic()
        if pending:
            progress(pending)
    finally:
        if writer is not None:
            writer.close()
    return outcomes


PARSE_CHUNK = 256  # most XMLs per parsing job (fewer when that leaves workers without jobs)
MIN_PARALLEL = 300  # below this many images a second process costs more than it saves (fork + copy-on-write ~10 ms)
MIN_PARALLEL_BYTES = 32 * 1024 * 1024  # ... unless they are big: hashing + copying 32 MB takes ~50 ms
CHUNK_MIN_ITEMS = 32  # a shard is split into chunks of at least this many images (see _chunked)


def _parse_chunk(
    jobs: Sequence[tuple[str, str, str]], progress: Callable[[int], None] = _no_progress
) -> list[tuple[Annotation, int]]:
    """Annotations and their image's size in bytes (-1 when unknown), read in a worker."""
    from od.voc import parse_voc

    out = []
    for x, root, images in jobs:
        ann = parse_voc(x, root, images)
        size = -1
        if ann.image_path is not None:
            try:
                size = os.stat(ann.image_path).st_size
            except OSError:
                pass
        out.append((ann, size))
    progress(len(jobs))
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
    pool: "Workers | None" = None,
) -> Plan:
    """Read every XML, resolve images, classes, duplicates and splits (no pixels read)."""
    from od.label_map import LabelMap, read_label_map
    from od.tfexample import _source_id_of_digest, source_id_for

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
    pool = pool or Workers(1)
    # Small jobs when there are few XMLs, so every worker gets some (4+ per worker balances well).
    chunk = max(16, min(PARSE_CHUNK, math.ceil(len(xmls) / (4 * pool.n))))
    jobs = [
        [(x, root_s, im) for x, im in zip(xmls[i : i + chunk], image_dirs[i : i + chunk])]
        for i in range(0, len(xmls), chunk)
    ]
    parsed = [a for chunk in pool.map_progress(
        _parse_chunk, jobs, len(xmls), "reading XML", show_progress and len(xmls) >= 2000, leave=False, ahead=2)
        for a in chunk]

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
            n = max(1, math.ceil(sum(_image_size(it) for it in items) / TARGET_SHARD_BYTES))
        else:
            n = shards
        n = max(1, min(n, len(items)))
        for i in range(n):
            final = out / shard_name(split, i, n)
            tmp = out / f".{final.name}.{pid}.tmp"
            tasks.append(ShardTask(split, str(final), str(tmp), tuple(items[i::n]), name_to_id, dry_run))
    return tasks


class WorkerError(RuntimeError):
    """A worker process failed or died; the message says which job and why."""


def _child_main(conn, progress: bool) -> None:
    """A worker process: run ``(job id, fn, job)`` messages until told to stop (None or EOF)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it cleans up temp shards
    gc.disable()  # short-lived, and its jobs make no reference cycles (see main)

    def report(n: int) -> None:
        if progress:
            conn.send(("progress", None, n))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:  # every result is delivered: leave at once (nothing to flush or clean up)
            os._exit(0)
        jid, fn, job = msg
        try:
            result = fn(job, report)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
            import traceback

            conn.send(("error", jid, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            continue
        conn.send(("done", jid, result))


class _Child:
    """One worker process and its end of a duplex pipe."""

    def __init__(self, ctx, progress: bool):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_child_main, args=(child_conn, progress), daemon=True)
        self.proc.start()
        child_conn.close()
        self.outstanding: list[int] = []  # job ids sent and not answered yet, in order


class Workers:
    """Runs jobs in this process *and* ``workers - 1`` child processes.

    The parent works too instead of waiting: on a 2-core machine one child plus the parent
    use both cores with a single fork (~3 ms), and only the child's share of jobs and
    results is pickled. Children are plain processes on pipes (no executor machinery); they
    and the parent take jobs from one queue. ``map_progress`` returns results in job order
    whoever ran them, so output never depends on the number of workers.
    """

    def __init__(self, workers: int, progress: bool = True):
        self.n = max(1, workers)
        self._progress = progress  # False (--quiet): children send no progress messages
        self._children: list[_Child] = []

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.terminate()
            return
        for c in self._children:
            try:
                c.conn.send(None)
            except OSError:
                pass
        for c in self._children:
            c.proc.join(timeout=10)
            if c.proc.is_alive():
                c.proc.terminate()
            c.conn.close()
        self._children = []

    def _start(self) -> None:
        if self._children or self.n <= 1:
            return
        # fork is cheapest (children inherit the imports), but not once TensorFlow is loaded
        # in this process (its threads do not survive a fork); od itself never loads it here.
        use_fork = "fork" in mp.get_all_start_methods() and "tensorflow" not in sys.modules
        if use_fork:
            # Import what the jobs use (Pillow, lxml, crc32c) once, here, so that every forked
            # child inherits it instead of importing it again.
            import od.images  # noqa: F401
            import od.tfexample
            import od.voc  # noqa: F401

            od.tfexample._crc32c_value()
            # Objects that exist now are left out of the garbage collector's scans, in here
            # and in the children: a collection in a child would otherwise touch (and so
            # copy-on-write) every page of memory it shares with the parent.
            gc.freeze()
        ctx = mp.get_context("fork" if use_fork else "spawn")
        self._children = [_Child(ctx, self._progress) for _ in range(self.n - 1)]

    def terminate(self) -> None:
        """Stop the children now (Ctrl-C, errors): a half-written shard is worthless anyway."""
        for c in self._children:
            if c.proc.is_alive():
                c.proc.terminate()
        for c in self._children:
            c.proc.join(timeout=5)
            c.conn.close()
        self._children = []

    def map_progress(
        self, fn, jobs: Sequence, total: int, desc: str, show: bool, leave: bool = True, parallel: bool | None = None,
        ahead: int = 1,
    ) -> list:
        """``fn(job, progress)`` for every job, results in order of ``jobs``; children help when there is enough work.

        ``parallel`` overrides the default rule (at least ``MIN_PARALLEL`` images). ``ahead``
        jobs are queued per child: 2 for many small jobs, 1 when jobs are big and few
        (one child must not hoard two shards while the parent has nothing left).
        """
        if show:
            from tqdm import tqdm

            # disable=None: a bar on a terminal, none in logs (CI, pipes)
            bar = tqdm(total=total, desc=desc, unit="img", disable=None, dynamic_ncols=True, leave=leave)
        else:  # --quiet: no bar, and no tqdm import
            bar = _NoBar()
        try:
            if parallel is None:
                parallel = total >= MIN_PARALLEL
            if self.n <= 1 or len(jobs) <= 1 or not parallel:
                return [fn(j, bar.update) for j in jobs]
            self._start()
            return self._run(fn, jobs, bar, ahead)
        finally:
            bar.close()

    def _run(self, fn, jobs: Sequence, bar, ahead: int) -> list:
        """Children and the parent take jobs from one queue until it is empty.

        A feeder thread hands each child its next job the moment it answers, so a child
        never waits for the parent to finish one of its own jobs.
        """
        import threading
        from multiprocessing.connection import wait

        results: list = [None] * len(jobs)
        lock = threading.Lock()
        state = {"next": 0}
        failures: list[BaseException] = []

        def take() -> int | None:
            with lock:
                i = state["next"]
                if i >= len(jobs):
                    return None
                state["next"] = i + 1
                return i

        def update(n: int) -> None:
            with lock:
                bar.update(n)

        def give(c: _Child) -> None:
            i = take()
            if i is not None:
                c.conn.send((i, fn, jobs[i]))
                c.outstanding.append(i)

        def feeder() -> None:
            by_conn = {c.conn: c for c in self._children}
            try:
                for _ in range(ahead):
                    for c in self._children:
                        give(c)
                while True:
                    busy = [c.conn for c in self._children if c.outstanding]
                    if not busy:
                        return
                    for conn in wait(busy):
                        c = by_conn[conn]
                        try:
                            kind, jid, payload = conn.recv()
                        except (EOFError, OSError):
                            raise WorkerError(
                                f"a worker process (pid {c.proc.pid}) died (exit code {c.proc.exitcode})"
                            ) from None
                        if kind == "progress":
                            update(payload)
                            continue
                        c.outstanding.remove(jid)
                        if kind == "error":
                            raise WorkerError(f"a worker failed:\n{payload}")
                        results[jid] = payload
                        give(c)
            except BaseException as e:  # noqa: BLE001 - re-raised in the parent's thread
                with lock:
                    state["next"] = len(jobs)  # no more jobs for anyone
                failures.append(e)

        # The feeder needs the GIL to answer a child quickly while this thread converts.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))
        thread = threading.Thread(target=feeder, name="od-records-feeder", daemon=True)
        thread.start()
        try:
            while (i := take()) is not None:
                results[i] = fn(jobs[i], update)
        except BaseException:
            with lock:
                state["next"] = len(jobs)
            raise
        finally:
            sys.setswitchinterval(switch)
        thread.join()
        if failures:
            raise failures[0]
        return results


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _makespan(sizes: Sequence[int], workers: int) -> int:
    """Finish time when ``workers`` take jobs biggest first, each the next one when free."""
    import heapq

    loads = [0] * workers
    for s in sorted(sizes, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + s)
    return max(loads)


def _chunked(tasks: Sequence[ShardTask], workers: int) -> list[tuple[int, ShardTask]]:
    """Split shards only where workers would otherwise wait (e.g. one big train shard).

    Whole shards are kept when they already share out evenly. Otherwise the shards, one
    after the other, are cut into ``workers`` equal runs of images, so a shard crossing a
    cut is written as consecutive chunks, each to its own part file (``tmp_path`` + ``-k``);
    ``_join_parts`` puts them back together in order, byte-identical to a shard written
    whole. Few cuts, because joining copies every part but the first. Returns
    ``(shard number, task)`` pairs in shard order.
    """
    sizes = [len(t.items) for t in tasks]
    total = sum(sizes)
    if workers <= 1 or total == 0 or _makespan(sizes, workers) <= 1.05 * total / workers + CHUNK_MIN_ITEMS:
        return list(enumerate(tasks))
    cuts = sorted({round(total * k / workers) for k in range(1, workers)})
    out: list[tuple[int, ShardTask]] = []
    start = 0
    for s, t in enumerate(tasks):
        n = len(t.items)
        inner = [c - start for c in cuts if start + CHUNK_MIN_ITEMS <= c <= start + n - CHUNK_MIN_ITEMS]
        start += n
        if not inner:
            out.append((s, t))
            continue
        bounds = [0, *inner, n]
        for k in range(len(bounds) - 1):
            part = replace(t, tmp_path=f"{t.tmp_path[:-4]}-{k}.tmp", items=t.items[bounds[k] : bounds[k + 1]])
            out.append((s, part))
    return out


def _join_parts(dest: str, parts: Sequence[str]) -> None:
    """``dest`` = the part files one after the other (the first is renamed, the rest appended)."""
    os.replace(parts[0], dest)
    # Not O_APPEND: copy_file_range refuses to write to a file opened for appending.
    out = os.open(dest, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    try:
        for p in parts[1:]:
            src = os.open(p, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                start = os.lseek(out, 0, os.SEEK_END)
                size = os.fstat(src).st_size
                done = 0  # bytes of this part appended so far
                try:  # in the kernel (no copy through Python; a reflink on filesystems that can)
                    while done < size:
                        n = os.copy_file_range(src, out, size - done)
                        if n == 0:
                            break
                        done += n
                except (AttributeError, OSError):
                    pass  # not supported here (other OS, some file systems), or failed part-way
                if done < size:  # start this part again with plain reads and writes
                    os.ftruncate(out, start)
                    os.lseek(out, start, os.SEEK_SET)
                    os.lseek(src, 0, os.SEEK_SET)
                    while chunk := os.read(src, 1 << 20):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(out, view):]
            finally:
                os.close(src)
            os.unlink(p)
    finally:
        os.close(out)


def run_tasks(
    tasks: Sequence[ShardTask], pool: Workers, total: int, show_progress: bool = True, desc: str = "converting"
) -> list[Outcome]:
    """Write (or check) every shard, split into chunks that every worker helps with.

    Each shard ends up at its ``tmp_path``; on failure no part file is left behind.
    """
    parallel = None
    if pool.n > 1 and total < MIN_PARALLEL:  # few images: worth it only if they are big
        parallel = sum(_image_size(it) for t in tasks for it in t.items) >= MIN_PARALLEL_BYTES
    chunks = list(enumerate(tasks)) if parallel is False else _chunked(tasks, pool.n)
    # Biggest chunks first, so that no worker is left with a big one at the end.
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i][1].items))
    try:
        results = pool.map_progress(
            write_shard, [chunks[i][1] for i in order], total, desc, show_progress, parallel=parallel
        )
        by_chunk = dict(zip(order, results))
        if not all(t.dry_run for t in tasks):
            for s, t in enumerate(tasks):
                parts = [c.tmp_path for k, c in chunks if k == s]
                if parts != [t.tmp_path]:
                    _join_parts(t.tmp_path, parts)
    except BaseException:
        pool.terminate()  # stop workers before removing the part files they write
        for _, c in chunks:
            with contextlib.suppress(OSError):
                os.unlink(c.tmp_path)
        raise
    return [o for i in range(len(chunks)) for o in by_chunk[i]]


# --------------------------------------------------------------------------- report


def build_report(
    plan: Plan, data_dir: str, label_map_path: str, outcomes: Sequence[Outcome], files: dict[str, list[str]]
) -> dict:
    lm = plan.label_map
    by_index = {o.index: o for o in outcomes}
    splits: dict[str, dict] = {}
    problems: list[Problem] = list(plan.problems)
    for split in SPLITS:
        its = [it for it in plan.items if it.split == split]
        if not its and not files.get(split):
            continue
        per_class = {n: {"images": 0, "boxes": 0} for n in lm.names}
        n_images = n_boxes = negatives = 0
        for it in its:
            o = by_index[it.index]
            if not o.converted:
                continue
            n_images += 1
            n_boxes += o.kept_boxes
            negatives += o.kept_boxes == 0
            for cls, n in o.class_counts:
                per_class.setdefault(cls, {"images": 0, "boxes": 0})
                per_class[cls]["images"] += 1
                per_class[cls]["boxes"] += n
        splits[split] = {
            "files": files.get(split, []),
            "num_images": n_images,
            "num_boxes": n_boxes,
            "negatives": negatives,
            "per_class": per_class,
        }
    for it in plan.items:
        problems.extend(by_index[it.index].problems)
    # Planning problems come first per XML; keep a stable, readable order by file.
    problems.sort(key=lambda p: p.file)
    converted = [o for o in outcomes if o.converted]
    actions = Counter(p.action for p in problems)
    summary = {
        "layout": plan.layout.kind,
        "layout_description": plan.layout.description,
        "split_source": plan.splits_source,
        "xml_files": plan.num_xml,
        "images_converted": len(converted),
        "images_skipped": plan.num_xml - len(converted) - len(plan.not_listed),
        "images_copied_unchanged": sum(o.fast_path for o in converted),
        "images_reencoded": sum(o.reencoded for o in converted),
        "boxes": sum(o.kept_boxes for o in converted),
        "negatives": sum(o.kept_boxes == 0 for o in converted),
        "problems": len(problems),
        "problems_by_action": {a: actions.get(a, 0) for a in (SKIPPED_IMAGE, DROPPED_BOX, FIXED)},
        "difficult_boxes_skipped": plan.difficult_skipped,
        "not_in_imagesets": len(plan.not_listed),
    }
    return {
        "version": REPORT_VERSION,
        "data_dir": data_dir,
        "label_map": label_map_path,
        "classes": [{"id": i, "name": n} for i, n in lm.items],
        "num_classes": lm.num_classes,
        "splits": splits,
        "problems": [p.to_dict() for p in problems],
        "summary": summary,
    }


def print_summary(report: dict, out: Path, file=None) -> None:
    file = file or sys.stdout
    s = report["summary"]
    splits = report["splits"]
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p("")
    rows = [
        (name, sp["num_images"], sp["num_boxes"], sp["negatives"], len(sp["files"]))
        for name, sp in splits.items()
    ]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows), sum(r[4] for r in rows)))
    p(format_table(["split", "images", "boxes", "negatives", "shards"], rows))
    p("")
    names = [c["name"] for c in report["classes"]]
    headers = ["class (id)"]
    for name in splits:
        headers += [f"{name} images", f"{name} boxes"]
    crow = []
    for c in report["classes"]:
        row: list[object] = [f"{c['name']} ({c['id']})"]
        for sp in splits.values():
            pc = sp["per_class"].get(c["name"], {"images": 0, "boxes": 0})
            row += [pc["images"], pc["boxes"]]
        crow.append(row)
    if names:
        p(format_table(headers, crow))
        p("")
    probs = report["problems"]
    a = s["problems_by_action"]
    if probs:
        p(f"problems: {len(probs)} ({a['skipped_image']} images skipped, {a['dropped_box']} boxes dropped, "
          f"{a['fixed']} fixed)")
        for pr in probs[:MAX_PROBLEMS_SHOWN]:
            p(f"  {pr['file']}: {pr['problem']} [{pr['action']}]")
        if len(probs) > MAX_PROBLEMS_SHOWN:
            p(f"  ... {len(probs) - MAX_PROBLEMS_SHOWN} more in {out / 'report.json'}")
    else:
        p("problems: none")
    p(f"images: {s['images_converted']} converted ({s['images_copied_unchanged']} copied byte for byte, "
      f"{s['images_reencoded']} re-encoded), {s['images_skipped']} skipped")


# --------------------------------------------------------------------------- CLI


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1)")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.records",
        description="Convert a Pascal VOC dataset (XML + images) to sharded TFRecords, a label map and report.json.",
        epilog="Layouts: VOCdevkit year folder; annotations/ beside images/; or XML next to images. "
        "Exit codes: 0 all converted, 1 some images skipped (or nothing converted, or --strict found problems), "
        "2 usage error.",
    )
    ap.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="dataset folder")
    ap.add_argument("--annotations", metavar="DIR", help="folder of VOC XML files (overrides detection)")
    ap.add_argument("--images", metavar="DIR", help="folder of images (default: beside each XML)")
    ap.add_argument("--out", metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--label-map", metavar="PATH", help=f"label map to honour or create (default {DEFAULT_LABEL_MAP})")
    ap.add_argument("--add-classes", action="store_true", help="add classes missing from an existing label map")
    ap.add_argument("--val-fraction", type=_fraction, default=None, metavar="F", help=f"val share when no ImageSets (default {DEFAULT_VAL_FRACTION})")
    ap.add_argument("--test-fraction", type=_fraction, default=0.0, metavar="F", help="test share when no ImageSets (default 0)")
    ap.add_argument("--shards", type=_positive, metavar="N", help="shards per split (default: ~150 MB each, at least 1)")
    ap.add_argument("--workers", type=_positive, metavar="N", help="worker processes (default: CPU count)")
    ap.add_argument("--skip-difficult", action="store_true", help="drop boxes marked difficult")
    ap.add_argument("--strict", action="store_true", help="any problem -> exit 1 before writing anything")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _clean_stale(out: Path, keep: set[str] | None) -> list[str]:
    """Remove temp shards of interrupted runs and (unless ``keep`` is None) shards not in ``keep``."""
    removed: list[str] = []
    if not out.is_dir():
        return removed
    for f in sorted(out.iterdir()):
        old_shard = keep is not None and _SHARD_RE.match(f.name) and f.name not in keep
        if old_shard or _TMP_RE.match(f.name):
            try:
                f.unlink()
                removed.append(f.name)
            except OSError:
                pass
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.data_dir is None and not args.annotations:
        ap.print_usage(sys.stderr)
        error("give DATA_DIR (or --annotations DIR)")
        return EXIT_USAGE

    out = Path(args.out) if args.out else Path(DEFAULT_OUT)
    if not args.out:
        note_default("--out", DEFAULT_OUT)
    lm_path = Path(args.label_map) if args.label_map else Path(DEFAULT_LABEL_MAP)
    if not args.label_map:
        note_default("--label-map", DEFAULT_LABEL_MAP)
    val_fraction = args.val_fraction
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = args.workers or max(1, cpus)
    if args.workers is None:
        note_default("--workers", workers)
    if out.exists() and not out.is_dir():
        error(f"--out {out} exists and is not a folder")
        return EXIT_USAGE
    if lm_path.is_dir():
        error(f"--label-map {lm_path} is a folder; give a .pbtxt file path")
        return EXIT_USAGE

    try:
        layout = detect_layout(args.data_dir, args.annotations, args.images)
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
        if not layout.imagesets_dir:
            note_default("--val-fraction", val_fraction)
    if val_fraction + args.test_fraction >= 1.0:
        error(f"--val-fraction {val_fraction} + --test-fraction {args.test_fraction} leaves nothing to train on")
        return EXIT_USAGE
    data_dir = args.data_dir if args.data_dir is not None else str(layout.root)
    print(f"od.records: reading {data_dir} (layout: {layout.description})", file=sys.stderr)
    # A conversion makes a few small acyclic objects per image and keeps them to the end:
    # the cycle collector would only rescan them again and again (~4% of the run).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with Workers(workers, progress=not args.quiet) as pool:
            return _run(args, layout, data_dir, out, lm_path, val_fraction, pool)
    except KeyboardInterrupt:
        error("interrupted; nothing was written")
        return 130
    finally:
        if gc_was_enabled:
            gc.enable()


def _run(
    args: argparse.Namespace, layout: Layout, data_dir: str, out: Path, lm_path: Path, val_fraction: float,
    pool: Workers,
) -> int:
    from od.label_map import LabelMapError, write_label_map

    show = not args.quiet
    try:
        plan = plan_dataset(
            layout, lm_path, add_classes=args.add_classes, skip_difficult=args.skip_difficult,
            val_fraction=val_fraction, test_fraction=args.test_fraction, show_progress=show, pool=pool,
        )
    except LabelMapError as e:
        error(f"{e} (fix it, or pass another --label-map)")
        return EXIT_USAGE
    if plan.label_map_status == "existing":
        nc = len(plan.label_map)
        print(f"od.records: using existing label map {lm_path} ({nc} class{'es' if nc != 1 else ''})", file=sys.stderr)
    if plan.not_listed:
        shown = ", ".join(plan.not_listed[:3]) + (" ..." if len(plan.not_listed) > 3 else "")
        warn(f"{len(plan.not_listed)} XML files are not in any ImageSets/Main list and were left out ({shown})")
    if not plan.items:
        for pr in plan.problems[:MAX_PROBLEMS_SHOWN]:
            print(f"  {pr}", file=sys.stderr)
        error(f"nothing to convert in {data_dir}: none of its {plan.num_xml} XML files is usable")
        return EXIT_FAILURES
    if len(plan.label_map) == 0:
        warn("no object classes found (every image is a negative); the label map will be empty")

    name_to_id = dict(plan.label_map.name_to_id)
    if args.strict:
        checks = make_shard_tasks(plan, out, args.shards, name_to_id, dry_run=True)
        outcomes = run_tasks(checks, pool, len(plan.items), show, desc="checking")
        found = list(plan.problems) + [p for o in sorted(outcomes, key=lambda o: o.index) for p in o.problems]
        if found:
            for pr in found[:MAX_PROBLEMS_SHOWN]:
                print(f"  {pr}", file=sys.stderr)
            if len(found) > MAX_PROBLEMS_SHOWN:
                print(f"  ... {len(found) - MAX_PROBLEMS_SHOWN} more", file=sys.stderr)
            error(f"--strict: {len(found)} problems found; nothing written")
            return EXIT_FAILURES

    out.mkdir(parents=True, exist_ok=True)
    _clean_stale(out, keep=None)  # leftovers of interrupted runs only (temp names)
    tasks = make_shard_tasks(plan, out, args.shards, name_to_id)
    if args.shards is None:
        note_default("--shards", "about 150 MB per shard (" + ", ".join(
            f"{s}: {sum(t.split == s for t in tasks)}" for s in SPLITS if any(t.split == s for t in tasks)) + ")")
    try:
        outcomes = run_tasks(tasks, pool, len(plan.items), show)
    except BaseException as e:
        pool.terminate()  # stop workers before removing the temp shards they write
        for t in tasks:
            try:
                os.unlink(t.tmp_path)
            except OSError:
                pass
        if isinstance(e, KeyboardInterrupt):
            error("interrupted; no shard was finished, nothing replaced")
            return 130
        raise

    # Every shard is complete: rename them into place, then drop shards of older runs.
    for t in tasks:
        os.replace(t.tmp_path, t.final_path)
    files: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        files[t.split].append(Path(t.final_path).name)
    removed = _clean_stale(out, keep={n for v in files.values() for n in v})
    if plan.label_map_status in ("created", "extended"):
        write_label_map(lm_path, plan.label_map)
    report = build_report(plan, data_dir, str(lm_path), outcomes, dict(files))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    print_summary(report, out)
    s = report["summary"]
    lm_note = {"created": "created", "extended": f"extended with {', '.join(plan.added_classes)}",
               "existing": "unchanged"}[plan.label_map_status]
    nc = len(plan.label_map)
    print(f"label map: {lm_path} ({lm_note}, {nc} class{'es' if nc != 1 else ''})")
    n_shards = sum(len(v) for v in files.values())
    print(f"records:   {out} ({n_shards} shard{'s' if n_shards != 1 else ''}), report: {out / 'report.json'}")
    if removed:
        print(f"           removed {len(removed)} old shard(s) of an earlier run that this run did not write")
    if s["images_converted"] == 0:
        error("no image could be converted")
        return EXIT_FAILURES
    if "val" not in files:
        warn("the val split is empty; training has nothing to evaluate on (raise --val-fraction or add images)")
    if plan.unknown_classes:
        what = ", ".join(f"{c} ({n})" for c, n in plan.unknown_classes.items())
        warn(f"boxes of classes not in the label map {lm_path} were dropped: {what}. Pass --add-classes to add "
             "them, or --label-map with a new file for a different dataset")
    if plan.unknown_classes and s["boxes"] == 0:
        error(f"no box was kept: none of the dataset's classes is in {lm_path}")
        return EXIT_FAILURES
    if s["images_skipped"]:
        warn(f"{s['images_skipped']} images were skipped; see the problems above / report.json")
        return EXIT_FAILURES
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
