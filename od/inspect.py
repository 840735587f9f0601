"""``python -m od.inspect RECORDS...`` — read detection or classification TFRecords back and check them.

Works on od's shards and on files written by the old OD API tools. Every record
is decoded and checked (image decodes and matches the stored size, boxes inside
[0, 1] and ordered, labels known to the label map and consistent with the class
texts; a classification record's ``image/class/label`` is label-map id - 1); each
problem names the file and the record index. Prints per-class counts, and with
``--gallery`` draws a seeded sample with its ground truth (boxes, or the class).

Reading streams record by record: memory stays flat whatever the dataset size
(the gallery keeps only its N sampled examples, by reservoir sampling).
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from od.console import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    error,
    note_default,
    print_table,
    warn,
)
from od.io.example import K_CLASS_LABEL
from od.io.files import file_problem, shown
from od.io.schema import RECORD_SUFFIXES
from od.options import (
    add_common,
    add_force,
    add_gallery,
    non_negative_int,
    quiet_tensorflow,
)
from od.viz.gallery import class_name, write_gallery

GALLERY_FILE = "gallery.png"
_EPS = 1e-4  # float32 storage of coordinates computed in float64


@dataclass(frozen=True)
class RecordProblem:
    file: str
    index: int  # 0-based record index in the file; -1 for the file as a whole
    filename: str  # image/filename when known
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}: record {self.index}" if self.index >= 0 else self.file
        if self.filename:
            where += f" ({self.filename})"
        return shown(f"{where}: {self.problem}")  # a file name that is not UTF-8 as \xNN


@dataclass
class ClassCount:
    class_id: int
    name: str
    images: int = 0
    boxes: int = 0
    difficult: int = 0
    in_label_map: bool = True


@dataclass
class InspectResult:
    files: list[str]
    records_per_file: dict[str, int] = field(default_factory=dict)
    num_records: int = 0
    num_boxes: int = 0
    negatives: int = 0
    classified: int = 0  # classification records (image/class/label, no boxes)
    classes: dict[tuple[int, str], ClassCount] = field(default_factory=dict)
    problems: list[RecordProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    samples: list = field(default_factory=list)  # [(file, index, DecodedExample)]

    @property
    def ok(self) -> bool:
        return not self.problems


# --- finding files -----------------------------------------------------------

def _looks_like_record(name: str) -> bool:
    return (Path(name).suffix in RECORD_SUFFIXES or "-of-" in name) and not name.startswith(".")


def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Paths, globs and directories -> (sorted unique record paths, inputs that matched nothing).

    Paths are returned whatever they are (a FIFO, a folder named ``x.tfrecord``): ``inspect_records``
    reports what is not a regular file instead of opening it, so nothing named like a record is
    skipped in silence.
    """
    found: list[str] = []
    unmatched: list[str] = []
    for a in args:
        if glob.has_magic(a):
            hits = sorted(p for p in glob.glob(a) if not os.path.isdir(p) or _looks_like_record(os.path.basename(p)))
        elif os.path.isdir(a):
            hits = sorted(str(p) for p in Path(a).iterdir() if _looks_like_record(p.name))
            if not hits and _looks_like_record(Path(a).name):
                hits = [a]  # a folder named like a record file, holding none: report it
        elif os.path.exists(a):  # a FIFO, socket or device too: reported, never opened
            hits = [a]
        else:
            hits = []
        if not hits:
            unmatched.append(a)
        found.extend(hits)
    seen: set[str] = set()
    unique = [p for p in found if not (p in seen or seen.add(p))]
    return unique, unmatched


# --- checks ------------------------------------------------------------------

def _size_problems(ex, size: tuple[int, int] | None) -> list[str]:
    """image/width and image/height: present, positive, and the decoded image's size (when it decodes).

    Boxes are normalised by these numbers and models resize by them: a zero, negative or wrong
    size puts every box of the record in the wrong place.
    """
    problems: list[str] = []
    stated: list[tuple[str, int, int]] = []  # (key, value in the record, decoded value)
    for key, value, real in (("image/width", ex.width, size and size[0]), ("image/height", ex.height, size and size[1])):
        if key not in ex.keys:
            problems.append(f"no {key}")
        elif value <= 0:
            problems.append(f"{key}={value} is not a possible image size (must be at least 1)")
        elif size is not None and value != real:
            stated.append((key, value, real))
    if stated:
        says = " ".join(f"{key}={value}" for key, value, _ in stated)
        problems.append(f"image is {size[0]}x{size[1]} but the record says {says}")
    return problems


def check_example(ex, label_map=None) -> tuple[list[str], tuple[int, int] | None]:
    """Problems of one decoded example, and the real image size (None when it does not decode)."""
    import numpy as np
    from PIL import Image

    problems: list[str] = []
    size = None
    try:
        with Image.open(io.BytesIO(ex.image_bytes)) as im:
            im.load()  # full decode: catches truncated data, not just a good header
            size = im.size
    except Exception as e:  # Pillow raises many types for bad data
        problems.append(f"image does not decode: {type(e).__name__}: {e}")
    problems += _size_problems(ex, size)

    b = ex.boxes_yxyx
    for i in range(ex.num_boxes):
        ymin, xmin, ymax, xmax = (float(v) for v in b[i])
        coords = f"(ymin={ymin:.4g}, xmin={xmin:.4g}, ymax={ymax:.4g}, xmax={xmax:.4g})"
        if not np.all(np.isfinite(b[i])):
            problems.append(f"box {i} has a non-finite coordinate {coords}")
            continue
        if min(ymin, xmin) < -_EPS or max(ymax, xmax) > 1 + _EPS:
            problems.append(f"box {i} is outside [0, 1] {coords}")
        if not (xmin < xmax and ymin < ymax):
            problems.append(f"box {i} is empty or reversed {coords}")

    texts = ex.class_texts
    for i, cid in enumerate(int(c) for c in ex.class_ids):
        text = texts[i] if i < len(texts) else ""
        if cid < 1:
            problems.append(
                f"box {i} has class id {cid}" + (" (no image/object/class/label)" if "image/object/class/label" not in ex.keys else "")
                + "; ids start at 1"
            )
        elif label_map is not None:
            if cid not in label_map.id_to_name:
                problems.append(f"box {i}: class id {cid}{f' ({text!r})' if text else ''} is not in the label map")
            elif text and text != label_map.id_to_name[cid]:
                problems.append(
                    f"box {i}: class text {text!r} but the label map says id {cid} is {label_map.id_to_name[cid]!r}"
                )
    return problems, size


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", "") or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _Inspector:
    """Accumulates counts and problems record by record (streaming)."""

    def __init__(self, label_map, num_samples: int, seed: int) -> None:
        self.label_map = label_map
        self.num_samples = num_samples
        self.rng = random.Random(seed)
        self.decodable = 0
        self.res: InspectResult | None = None
        self.text_to_ids: dict[str, dict[int, tuple[str, int]]] = defaultdict(dict)
        self.id_to_texts: dict[int, dict[str, tuple[str, int]]] = defaultdict(dict)
        self.source_ids: dict[str, tuple[str, int]] = {}
        self.non_numeric: Counter[str] = Counter()
        self.non_numeric_example: dict[str, str] = {}
        self.duplicate_sources = 0

    def record(self, path: str, n: int, rec: bytes) -> None:
        from od.io.example import ExampleError, decode_example

        res = self.res
        res.num_records += 1
        try:
            ex = decode_example(rec)
        except ExampleError as e:
            res.problems.append(RecordProblem(path, n, "", f"cannot decode: {e}"))
            return
        problems, size = check_example(ex, self.label_map)
        caption = None
        if ex.num_boxes == 0 and K_CLASS_LABEL in ex.keys:
            caption, more = self._class_label(path, n, rec)
            problems += more
        res.problems.extend(RecordProblem(path, n, ex.filename, p) for p in problems)

        sid = ex.source_id
        if not sid.isdigit():
            self.non_numeric[path] += 1
            self.non_numeric_example.setdefault(path, sid)
        elif sid in self.source_ids:
            self.duplicate_sources += 1
            if self.duplicate_sources <= 3:
                f0, i0 = self.source_ids[sid]
                res.warnings.append(
                    f"{path}: record {n} ({ex.filename}): image/source_id {sid} repeats "
                    f"{f0}: record {i0} (COCO evaluation would merge the two images)"
                )
        else:
            self.source_ids[sid] = (path, n)

        res.num_boxes += ex.num_boxes
        if caption is not None:
            res.classified += 1
        elif ex.num_boxes == 0:
            res.negatives += 1
        in_image: set[tuple[int, str]] = set()
        for i, cid in enumerate(int(c) for c in ex.class_ids):
            text = ex.class_texts[i]
            key = (cid, class_name(cid, text, self.label_map))
            cc = res.classes.get(key)
            if cc is None:
                known = self.label_map is None or cid in self.label_map.id_to_name
                cc = res.classes[key] = ClassCount(cid, key[1], in_label_map=known)
            cc.boxes += 1
            cc.difficult += int(ex.difficult[i])
            in_image.add(key)
            if text:
                self.text_to_ids[text].setdefault(cid, (path, n))
                self.id_to_texts[cid].setdefault(text, (path, n))
        for key in in_image:
            res.classes[key].images += 1

        if self.num_samples > 0 and size is not None:
            # Reservoir sampling: a uniform, seeded sample without holding the dataset in memory.
            self.decodable += 1
            sample = (path, n, ex, caption)
            if len(res.samples) < self.num_samples:
                res.samples.append(sample)
            else:
                j = self.rng.randrange(self.decodable)
                if j < self.num_samples:
                    res.samples[j] = sample

    def _class_label(self, path: str, n: int, rec: bytes) -> tuple[str | None, list[str]]:
        """A classification record's class (counted as one image of it) and its problems: the label
        is label-map id - 1, so it must be >= 0, in the label map, and agree with image/class/text."""
        from od.io.example import ExampleError, decode_classification_example

        try:
            lab = decode_classification_example(rec)
        except ExampleError as e:
            return None, [f"cannot decode the class: {e}"]
        cid = lab.label + 1
        problems = []
        if lab.label < 0:
            problems.append(f"{K_CLASS_LABEL} is {lab.label}; labels start at 0 (label map id - 1)")
        elif self.label_map is not None:
            if cid not in self.label_map.id_to_name:
                problems.append(f"{K_CLASS_LABEL} {lab.label}{f' ({lab.text!r})' if lab.text else ''}: "
                                f"no id {cid} in the label map")
            elif lab.text and lab.text != self.label_map.id_to_name[cid]:
                problems.append(f"class text {lab.text!r} but the label map says label {lab.label} (id {cid}) "
                                f"is {self.label_map.id_to_name[cid]!r}")
        name = class_name(cid, lab.text, self.label_map)
        key = (cid, name)
        cc = self.res.classes.get(key)
        if cc is None:
            known = self.label_map is None or cid in self.label_map.id_to_name
            cc = self.res.classes[key] = ClassCount(cid, name, in_label_map=known)
        cc.images += 1
        if lab.text:
            self.text_to_ids[lab.text].setdefault(cid, (path, n))
        return name, problems

    def finish(self) -> None:
        res = self.res
        # One class text must mean one id everywhere, or training silently splits/merges classes.
        for text, ids in sorted(self.text_to_ids.items()):
            if len(ids) > 1:
                (f0, i0), *_ = ids.values()
                places = "; ".join(f"id {cid} first at {f}: record {i}" for cid, (f, i) in sorted(ids.items()))
                res.problems.append(RecordProblem(f0, i0, "", f"class text {text!r} has several ids: {places}"))
        if self.label_map is None:  # with a map, each box was already checked against it
            for cid, texts in sorted(self.id_to_texts.items()):
                if len(texts) > 1:
                    (f0, i0), *_ = texts.values()
                    places = "; ".join(f"{t!r} first at {f}: record {i}" for t, (f, i) in sorted(texts.items()))
                    res.problems.append(RecordProblem(f0, i0, "", f"class id {cid} has several texts: {places}"))
        for path, count in self.non_numeric.items():
            res.warnings.append(
                f"{path}: {count} record(s) have a non-numeric image/source_id "
                f"(e.g. {self.non_numeric_example[path]!r}); Model Garden's evaluator converts it to a number "
                "and fails: re-convert the dataset with od.records"
            )
        if self.duplicate_sources > 3:
            res.warnings.append(f"... and {self.duplicate_sources - 3} more repeated image/source_id values")


def inspect_records(
    files: Sequence[str],
    label_map=None,
    num_samples: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> InspectResult:
    """Read every record of ``files``; bad data becomes a RecordProblem, never an exception."""
    from od.io.tfrecord import iter_file_records

    res = InspectResult(files=list(files))
    if label_map is not None:
        for cid, name in label_map.items:
            res.classes[(cid, name)] = ClassCount(cid, name)
    insp = _Inspector(label_map, num_samples, seed)
    insp.res = res

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit=" rec", desc="inspect", file=sys.stderr, leave=False, disable=None)
    for path in files:
        count = 0
        why = file_problem(path)
        if why is not None:
            res.problems.append(RecordProblem(path, -1, "", why))
            res.records_per_file[path] = 0
            continue
        try:
            for n, rec in enumerate(iter_file_records(path)):
                count = n + 1
                insp.record(path, n, rec)
                if bar is not None:
                    bar.update(1)
        except Exception as e:  # TFRecordError, tf.errors.DataLossError / NotFoundError, OSError ...
            msg = _first_line(e).removeprefix(f"{path}: ")
            res.problems.append(
                RecordProblem(path, -1, "", f"not readable as TFRecord after {count} good record(s): {msg}")
            )
        res.records_per_file[path] = count
        if count == 0 and not (res.problems and res.problems[-1].file == path and res.problems[-1].index == -1):
            # A file with bytes in it holds a record or fails to read: this one is 0 bytes.
            res.problems.append(RecordProblem(path, -1, "", "empty file: no records (0 bytes)"))
    if bar is not None:
        bar.close()
    insp.finish()
    return res


# --- CLI ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m od.inspect",
        description="Check detection or classification TFRecords (od shards or OD API .record files): decode "
        "every example, check images, boxes and labels, print per-class counts, optionally draw a gallery.",
        epilog="Exit status: 0 no problems, 1 problems found, 2 usage error (e.g. no files matched).",
    )
    p.add_argument("records", nargs="+", metavar="RECORDS",
                   help="TFRecord files, globs ('data/records/train-*') or directories")
    p.add_argument("--label-map", metavar="PATH", help="label_map.pbtxt to check class ids and texts against")
    add_gallery(p, 0, f"{GALLERY_FILE}, a grid of sampled examples with their boxes")
    p.add_argument("--out", metavar="DIR", help=f"where {GALLERY_FILE} goes (default: the folder of the first record file)")
    add_force(p, f"an existing {GALLERY_FILE} in --out")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for choosing gallery examples (default 0)")
    p.add_argument("--max-problems", type=non_negative_int, default=50, metavar="N",
                   help="print at most N problems (all are counted; default 50, 0 = all)")
    add_common(p)
    return p


def print_report(res: InspectResult, max_problems: int = 50, out=None) -> None:
    out = out or sys.stdout
    rows = []
    classification = res.classified and not res.num_boxes
    for (cid, name), cc in sorted(res.classes.items()):
        shown_name = name + ("" if cc.in_label_map else "  (not in label map)")
        rows.append([shown_name, cid, cid - 1, cc.images] if classification
                    else [shown_name, cid, cc.images, cc.boxes, cc.difficult])
    if rows:
        head = ["class", "id", "label", "images"] if classification else ["class", "id", "images", "boxes", "difficult"]
        print_table(head, rows, file=out)
    else:
        print("(no boxes)", file=out)
    if len(res.files) > 1:
        print(file=out)
        print_table(["file", "records"], [[shown(f), res.records_per_file.get(f, 0)] for f in res.files], file=out)
    if res.classified and not res.num_boxes:
        what = "classification records (a class per image: label = id - 1)"
    else:
        what = f"{res.num_boxes} boxes, {res.negatives} negative (box-less) images"
        if res.classified:
            what += f", {res.classified} classification records"
    print(f"\n{res.num_records} records in {len(res.files)} file(s): {what}, {len(res.problems)} problem(s)", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)

    files, unmatched = expand_inputs(args.records)
    for u in unmatched:
        why = "" if glob.has_magic(u) or os.path.exists(u) else " (no such file or directory)"
        error(f"no TFRecord files match {u!r}{why}")
    if unmatched or not files:
        error("nothing to inspect; create records first with `python -m od.records DATA_DIR` (or `make records`)")
        return EXIT_USAGE
    gallery = None
    if args.gallery:
        out = Path(args.out) if args.out else Path(files[0]).parent
        if not args.out:
            note_default("--out", out)
        gallery = out / GALLERY_FILE
        if os.path.lexists(gallery) and not args.force:
            error(f"{gallery} exists; pass --force to replace it, or --out DIR")
            return EXIT_USAGE

    label_map = None
    if args.label_map:
        from od.io.label_map import LabelMapError, read_label_map

        try:
            label_map = read_label_map(args.label_map)
        except LabelMapError as e:
            error(str(e))
            return EXIT_USAGE

    res = inspect_records(files, label_map, num_samples=args.gallery, seed=args.seed, progress=not args.quiet)

    for w in res.warnings:
        warn(shown(w))
    listed = res.problems if args.max_problems <= 0 else res.problems[: args.max_problems]
    for p in listed:
        print(f"od: problem: {p}", file=sys.stderr)
    if len(listed) < len(res.problems):
        print(f"od: ... and {len(res.problems) - len(listed)} more problem(s) (--max-problems 0 shows all)",
              file=sys.stderr)
    print_report(res, args.max_problems)

    if gallery is not None:
        if res.samples:
            try:
                gallery.parent.mkdir(parents=True, exist_ok=True)
                write_gallery(gallery, res.samples, label_map)
                print(f"gallery: {gallery} ({len(res.samples)} examples, seed {args.seed})")
            except OSError as e:
                error(f"{gallery}: cannot write gallery: {e.strerror or e}")
                return EXIT_FAILURES
        else:
            warn(f"no decodable examples to draw; {gallery} not written")
    return EXIT_OK if res.ok else EXIT_FAILURES


if __name__ == "__main__":
    sys.exit(main())
