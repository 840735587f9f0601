"""CSV box tables (the columns of the TF tutorial's ``generate_tfrecord.py``): reading and writing.

The classic raccoon tutorial (``xml_to_csv.py`` then ``generate_tfrecord.py``) leaves users with
``train_labels.csv`` / ``test_labels.csv``: one row per box, ``filename,width,height,class,xmin,
ymin,xmax,ymax`` in pixels. od reads those files as they are (header required, names in any case,
extra columns ignored, BOM, CRLF and quoted fields accepted) and writes them back the same way.

Not named ``csv.py``: that would shadow the standard library's module.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Annotation, Box, Problem
from od.data.formats import CopyImage, Entry, LabelledImage, LabelSet
from od.data.layout import Layout, UsageError
from od.data.voc import _unsafe_filename, image_problem
from od.data.walk import Roots, name_problem
from od.io.files import atomic_write_text, file_problem, open_regular, read_file, shown

COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")  # the tutorial's header
REQUIRED = ("filename", "class", "xmin", "ymin", "xmax", "ymax")  # width/height optional: the real size decides
BOX_COLUMNS = ("class", "xmin", "ymin", "xmax", "ymax")
CSV_DIRS = ("", "data")  # DATA/*.csv and DATA/data/*.csv (where the tutorial's xml_to_csv.py writes them)
IMAGES_DIR = "images"  # the tutorial keeps the images in DATA/images/
SPLIT_ORDER = ("train", "val", "test", "")  # "" = no split in the name: hash split
TEST_AS_VAL = "the test CSV is used as val (there is no val CSV)"
PEEK_BYTES = 64 * 1024  # enough for the header and the first row when detecting


# --------------------------------------------------------------------------- finding


def split_of_name(path: Path) -> str:
    """The split a CSV's file name gives: *train* -> train, *val*/*eval* -> val, *test* -> test, else ""."""
    stem = path.stem.lower()
    for word, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if word in stem:  # "eval" and "validation" contain "val"
            return split
    return ""


def _columns(header: Sequence[str]) -> dict[str, int]:
    """Column name (stripped, lower case) -> index; the first of repeated names counts."""
    cols: dict[str, int] = {}
    for i, name in enumerate(header):
        cols.setdefault(name.strip().lower(), i)
    return cols


def _peek(path: Path) -> tuple[dict[str, int], str] | None:
    """(columns, first row's filename) of a CSV from its first bytes; None when it has no header."""
    try:
        data = read_file(path, PEEK_BYTES)
    except OSError:
        return None
    text = data.decode("utf-8-sig", errors="surrogateescape")
    lines = text.splitlines()
    if len(data) == PEEK_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    try:
        rows = [r for r in csv.reader(io.StringIO("\n".join(lines))) if any(c.strip() for c in r)]
    except csv.Error:
        return None
    if not rows:
        return None
    cols = _columns(rows[0])
    first = ""
    if len(rows) > 1 and "filename" in cols and cols["filename"] < len(rows[1]):
        first = rows[1][cols["filename"]].strip()
    return cols, first


def _is_box_table(cols: dict[str, int]) -> bool:
    """A header with ``filename`` and most box columns (a missing one is reported when reading)."""
    return "filename" in cols and sum(c in cols for c in BOX_COLUMNS) >= 3


def _inside(path: Path, root: Path) -> bool:
    return Roots.of(root).refuse(path) is None


def _named_file(split: str, arg: str, data_dir: Path) -> Path:
    """``--<split>-csv arg`` as a path: relative to DATA_DIR (else as given) or absolute."""
    p = Path(arg)
    if not p.is_absolute() and os.path.lexists(data_dir / p):
        p = data_dir / p
    why = file_problem(p)
    if why == "not found":
        raise UsageError(f"--{split}-csv {arg}: no such file (paths are relative to DATA_DIR {data_dir}, or absolute)")
    if why:
        raise UsageError(f"--{split}-csv {arg}: {why}")
    return p


def _found_files(data_dir: Path) -> list[Path]:
    """DATA/*.csv and DATA/data/*.csv that are box tables (regular files inside DATA, sorted)."""
    found: list[Path] = []
    for sub in CSV_DIRS:
        d = data_dir / sub if sub else data_dir
        if not d.is_dir() or not _inside(d, data_dir):
            continue
        with os.scandir(d) as it:
            names = sorted(e.name for e in it if e.name.lower().endswith(".csv") and not e.name.startswith("."))
        for name in names:
            p = d / name
            if name_problem(name) or file_problem(p) or not _inside(p, data_dir):
                continue  # not read: links out, FIFOs, folders named *.csv, undecodable names
            peek = _peek(p)
            if peek is not None and _is_box_table(peek[0]):
                found.append(p)
    return found


def _assign_splits(files: list[tuple[str, Path]]) -> tuple[tuple[tuple[str, Path], ...], str]:
    """(sources sorted train, val, test, none; a note when the test CSV stands in for val)."""
    splits = {s for s, _ in files}
    note = ""
    if "test" in splits and "val" not in splits:
        # The tutorial trains on train_labels.csv and evaluates on test_labels.csv: that is od's val.
        files = [("val" if s == "test" else s, p) for s, p in files]
        note = TEST_AS_VAL
    ordered = sorted(files, key=lambda sp: (SPLIT_ORDER.index(sp[0]), str(sp[1])))
    return tuple(ordered), note


def _images_folder(data_dir: Path, sources: Sequence[tuple[str, Path]]) -> Path:
    """Where the rows' images are: DATA/images/ (the tutorial), beside the CSV, or DATA/.

    The first of those that holds the first row's filename; else DATA/images/ if present."""
    first_csv = sources[0][1]
    cands = _image_candidates(data_dir, None, first_csv)
    peek = _peek(first_csv) if not file_problem(first_csv) else None
    fn = peek[1] if peek else ""
    if fn and not _unsafe_filename(fn):
        for d in cands:
            if os.path.isfile(d / fn.replace("\\", "/")):
                return d
    return cands[0]


def _image_candidates(root: Path, images_dir: Path | None, csv_path: Path) -> list[Path]:
    """Folders a row's filename is looked up in, in order (only those inside the dataset root)."""
    out: list[Path] = []
    for d in (images_dir, root / IMAGES_DIR, csv_path.parent, root):
        if d is not None and d.is_dir() and _inside(d, root) and d not in out:
            out.append(d)
    return out or [root]


def _rel(path: str | os.PathLike, root: str | os.PathLike) -> str:
    from od.data.plan import _rel as rel

    return rel(path, root)


def find_csv(data_dir: Path, csv_files: dict[str, str]) -> Layout | None:
    """The CSV Layout of ``data_dir``, or None when it holds no CSV box table.

    ``csv_files`` (``--train-csv``/``--val-csv``/``--test-csv`` as ``{split: path}``) name the files:
    relative to DATA_DIR or absolute, and allowed outside it (the user chose them). Without them:
    DATA/*.csv and DATA/data/*.csv whose header has ``filename`` and the box columns, each split
    from its file name (*train*, *val*/*eval*, *test*; no split name: hash split). Raises
    UsageError for a named file that is missing or not a regular file.
    """
    data_dir = Path(data_dir)
    explicit: tuple[Path, ...] = ()
    if csv_files:
        named = [(s, _named_file(s, a, data_dir)) for s, a in sorted(csv_files.items(), key=lambda kv: SPLIT_ORDER.index(kv[0]))]
        seen: dict[str, str] = {}
        for s, p in named:
            real = os.path.realpath(p)
            if real in seen:
                raise UsageError(f"--{s}-csv and --{seen[real]}-csv name the same file {p}")
            seen[real] = s
        files = named
        explicit = tuple(p for _, p in named if not _inside(p, data_dir))
    else:
        files = [(split_of_name(p), p) for p in _found_files(data_dir)]
        if not files:
            return None
    sources, note = _assign_splits(files)
    images = _images_folder(data_dir, sources)
    where = _folder_name(images, data_dir)
    listed = ", ".join(f"{_rel(p, data_dir)} ({s or 'hash split'})" for s, p in sources)
    desc = f"CSV boxes {listed}; images in {where}" + (f"; {note}" if note else "")
    return Layout("csv", data_dir, sources[0][1].parent, images, description=desc, explicit=explicit,
                  sources=sources)


# --------------------------------------------------------------------------- reading


@dataclass
class _Row:
    row: int
    width: int  # 0: not given
    height: int
    box: Box | None  # None: a negative (no class, no coordinates) or a dropped row


@dataclass
class _Group:
    """The rows of one filename in one CSV."""

    source: int  # index into the layout's sources
    name: str  # report name of the CSV
    filename: str
    rows: list[_Row] = field(default_factory=list)


def _where(name: str, row: int) -> str:
    return f"{name} row {row}"


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _size(text: str) -> int | None:
    """A width/height cell: the pixels (0 when empty), or None when it is not a positive whole number."""
    if not text:
        return 0
    v = _number(text)
    if v is None or v <= 0 or not v.is_integer():
        return None
    return int(v)


def _parse_row(cells: list[str], cols: dict[str, int], name: str, row: int, labels: LabelSet) -> _Row | None:
    """One data row (its filename already read); None when it is dropped (the problem is added)."""
    def cell(col: str) -> str:
        i = cols.get(col)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    where = _where(name, row)
    short = [c for c in REQUIRED if cols[c] >= len(cells)]
    if short:
        labels.add(Problem(where, f"has {len(cells)} fields, the header has {len(cols)} (no {', '.join(short)}); "
                           "box dropped", DROPPED_BOX))
        return None
    sizes = []
    for col in ("width", "height"):
        v = _size(cell(col))
        if v is None:
            labels.add(Problem(where, f"{col} {cell(col)!r} is not a positive whole number; box dropped", DROPPED_BOX))
            return None
        sizes.append(v)
    cls = cell("class")
    texts = [cell(c) for c in ("xmin", "ymin", "xmax", "ymax")]
    if not cls and not any(texts):
        return _Row(row, sizes[0], sizes[1], None)  # filename with no box: a negative image
    if not cls:
        labels.add(Problem(where, "empty class; box dropped", DROPPED_BOX))
        return None
    if name_problem(cls):
        labels.add(Problem(where, f"class {shown(cls)!r} is not valid UTF-8 text; box dropped", DROPPED_BOX))
        return None
    coords = [_number(t) for t in texts]
    bad = [f"{c} {t!r}" for c, t, v in zip(("xmin", "ymin", "xmax", "ymax"), texts, coords) if v is None]
    if bad:
        labels.add(Problem(where, f"{', '.join(bad)} not a number ({cls}); box dropped", DROPPED_BOX))
        return None
    x0, y0, x1, y1 = coords
    if x1 <= x0 or y1 <= y0:
        what = "xmax <= xmin" if x1 <= x0 else "ymax <= ymin"
        labels.add(Problem(where, f"box ({cls}) [{x0:g}, {y0:g}, {x1:g}, {y1:g}] has {what} (zero or negative "
                           "size); box dropped", DROPPED_BOX))
        return None
    return _Row(row, sizes[0], sizes[1], Box(x0, y0, x1, y1, cls, origin=f"row {row}"))


def _read_rows(path: Path, name: str, source: int, labels: LabelSet) -> list[_Group] | None:
    """The rows of one CSV grouped by filename (in order of first appearance); None when the whole
    file is unusable (its problem added)."""
    groups: dict[str, _Group] = {}
    try:
        f = open_regular(path)
    except OSError as e:
        labels.add(Problem(name, f"cannot read CSV: {e.strerror or e}", SKIPPED_IMAGE))
        return None
    with io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
        reader = csv.reader(text)
        cols: dict[str, int] | None = None
        row = 0
        try:
            for cells in reader:
                row += 1  # row N = the N-th record, the header being row 1 (line N without quoted newlines)
                if not any(c.strip() for c in cells):
                    continue  # blank line
                if cols is None:
                    cols = _columns(cells)
                    missing = [c for c in REQUIRED if c not in cols]
                    if missing:
                        looks_like_data = len(cells) > 4 and _number(cells[4].strip()) is not None
                        why = (" (the first row looks like data: a header row is required)" if looks_like_data
                               else f" (its header: {','.join(c.strip() for c in cells)})")
                        labels.add(Problem(name, f"no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}"
                                           f"{why}; expected the header {','.join(COLUMNS)}; file not read",
                                           SKIPPED_IMAGE))
                        return None
                    continue
                fn = cells[cols["filename"]].strip() if cols["filename"] < len(cells) else ""
                if not fn:
                    labels.add(Problem(_where(name, row), "no filename; row dropped", DROPPED_BOX))
                    continue
                g = groups.get(fn)
                if g is None:
                    g = groups[fn] = _Group(source, name, fn)
                parsed = _parse_row(cells, cols, name, row, labels)
                g.rows.append(parsed or _Row(row, 0, 0, None))  # a dropped row still declares its image
        except csv.Error as e:
            labels.add(Problem(_where(name, row + 1), f"malformed CSV ({e}); the rest of the file is not read",
                               SKIPPED_IMAGE))
        except OSError as e:
            labels.add(Problem(name, f"cannot read CSV: {e.strerror or e}; the rest of the file is not read",
                               SKIPPED_IMAGE))
        if cols is None:
            labels.add(Problem(name, f"empty CSV (no header row; expected {','.join(COLUMNS)})", SKIPPED_IMAGE))
            return None
    return list(groups.values())


def _declared_size(g: _Group, labels: LabelSet) -> tuple[int, int]:
    """The size the rows of one image declare (0x0 when none, or when rows disagree: reported)."""
    first: _Row | None = None
    for r in g.rows:
        if r.width <= 0 or r.height <= 0:
            continue
        if first is None:
            first = r
        elif (r.width, r.height) != (first.width, first.height):
            labels.add(Problem(_where(g.name, r.row), f"{shown(g.filename)} is {r.width}x{r.height} here but "
                               f"{first.width}x{first.height} in row {first.row}; the declared size is ignored "
                               "(the image's own size is used)", FIXED))
            return 0, 0
    return (first.width, first.height) if first else (0, 0)


def _find_image(g: _Group, folders: Sequence[Path], roots: Roots, root: Path) -> tuple[str | None, str]:
    """(the image of a group, or None and why)."""
    unsafe = _unsafe_filename(g.filename)
    if unsafe:
        return None, f"filename {shown(g.filename)!r} {unsafe}; not read (never outside the dataset)"
    rel = g.filename.replace("\\", "/")
    whys = []
    for d in folders:
        cand = os.path.join(d, rel)
        why = image_problem(cand, roots)
        if why is None:
            return cand, ""
        if why != "not found":
            return None, f"image {shown(g.filename)!r}: {why}"
        whys.append(d)
    looked = ", ".join(_folder_name(d, root) for d in whys)
    return None, f"image {shown(g.filename)!r} not found (looked in {looked})"


def _folder_name(d: Path, root: Path) -> str:
    """A folder for messages: ``images/``, or "the dataset folder" for the root itself."""
    return "the dataset folder" if os.path.abspath(d) == os.path.abspath(root) else _rel(d, root).rstrip("/") + "/"


def _key(image: str, images_dir: Path, root: Path) -> str:
    """The image path relative to the images folder (else the root), POSIX, without its suffix."""
    base = images_dir if _under(image, images_dir) else root
    rel = PurePosixPath(Path(os.path.relpath(image, base)).as_posix())
    return str(rel.with_suffix("")) if rel.suffix else str(rel)


def _under(path: str, folder: Path) -> bool:
    p, d = os.path.abspath(path), os.path.abspath(folder)
    return p.startswith(d.rstrip(os.sep) + os.sep)


def read_csv(layout: Layout, roots: Roots) -> LabelSet:
    """Every row of the layout's CSVs: one Entry per image (its rows grouped by filename).

    Problems name the file and row (``train_labels.csv row 12``: the header is row 1). An image in
    two CSVs (or twice under two spellings) keeps its first rows, in the order train, val, test."""
    root = layout.root
    labels = LabelSet()
    images_dir = layout.images_dir or root
    notes = []
    groups: list[_Group] = []
    for i, (split, path) in enumerate(layout.sources):
        name = _rel(path, root)
        notes.append(f"{name}: {split or 'hash'}")
        why = roots.refuse(path) if path not in layout.explicit else None
        if why:
            labels.add(Problem(name, f"CSV {why}", SKIPPED_IMAGE))
            labels.num_files += 1
            continue
        got = _read_rows(path, name, i, labels)
        if got is None:
            labels.num_files += 1
            continue
        groups.extend(got)
    labels.num_files += len(groups)

    made: list[tuple[int, Entry, int]] = []  # (source, entry, first row)
    by_image: dict[str, _Group] = {}
    folders = [_image_candidates(root, images_dir, path) for _, path in layout.sources]
    for g in groups:
        path = layout.sources[g.source][1]
        first_row = g.rows[0].row
        image, why = _find_image(g, folders[g.source], roots, root)
        n = len(g.rows)
        if image is None:
            more = f" ({n} rows skipped)" if n > 1 else ""
            labels.add(Problem(_where(g.name, first_row), why + more, SKIPPED_IMAGE))
            continue
        image = os.path.abspath(image)
        other = by_image.get(image)
        if other is not None:
            labels.add(Problem(_where(g.name, first_row), f"image {_rel(image, root)} is already labelled in "
                               f"{_where(other.name, other.rows[0].row)}; only one annotation per image is used "
                               f"(these {n} row{'s' if n > 1 else ''} skipped)", SKIPPED_IMAGE))
            continue
        by_image[image] = g
        width, height = _declared_size(g, labels)
        boxes = tuple(r.box for r in g.rows if r.box is not None)
        ann = Annotation(str(path), image, g.filename, width, height, boxes)
        made.append((g.source, Entry(g.name, _key(image, images_dir, root), ann, image), first_row))

    # Keys must be unique (split, source id): two images differing only by suffix keep their suffix.
    counts: dict[str, int] = {}
    for _, e, _ in made:
        counts[e.key] = counts.get(e.key, 0) + 1
    for src, e, _ in sorted(made, key=lambda t: (t[0], t[1].key, t[2])):
        if counts[e.key] > 1:
            rel = Path(os.path.relpath(e.image, images_dir if _under(e.image, images_dir) else root)).as_posix()
            e = e._replace(key=rel)
        labels.entries.append(e)
        split = layout.sources[src][0]
        if split:
            labels.splits[e.key] = split
    if labels.splits:
        note = f"; {TEST_AS_VAL}" if layout.description.endswith(TEST_AS_VAL) else ""
        labels.split_source = "CSV file names (" + ", ".join(notes) + ")" + note
    return labels


# --------------------------------------------------------------------------- writing


def _cell(v: float) -> str:
    """A pixel value as the tutorial writes it: an int when integral, else the shortest exact float."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_csv(images: Sequence[LabelledImage], classes: Sequence[str], out: Path, copy_image: CopyImage) -> list[Path]:
    """``<split>_labels.csv`` (train_labels.csv, val_labels.csv, test_labels.csv) with the tutorial's
    columns, and the images under ``out/images/<image_name>``.

    Pixel values are written as ints when integral, else as the shortest float that reads back
    exactly (so ``read_csv`` gives the same boxes). The format has no class list (``classes``
    without boxes are not kept), no negatives and no crowd flag: an image with no box is one row
    with empty class and coordinates (od reads it back as a negative; the tutorial's
    generate_tfrecord.py would not), and ``is_crowd`` boxes are left out (an ordinary box over a
    crowd would teach it as one object). When there are test images but no val images, an empty
    val_labels.csv is written too, so that the test CSV is not read back as val."""
    out = Path(out)
    by_split: dict[str, list[LabelledImage]] = {}
    for im in images:
        by_split.setdefault(im.split, []).append(im)
    if "test" in by_split and "val" not in by_split:
        by_split["val"] = []
    written: list[Path] = []
    for split in ("train", "val", "test"):
        if split not in by_split:
            continue
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for im in sorted(by_split[split], key=lambda im: im.image_name):
            boxes = [b for b in im.boxes if not b.is_crowd]
            size = [str(int(im.width)), str(int(im.height))]
            if not boxes:
                w.writerow([im.image_name, *size, "", "", "", "", ""])
            for b in boxes:
                w.writerow([im.image_name, *size, b.name, _cell(b.xmin), _cell(b.ymin), _cell(b.xmax), _cell(b.ymax)])
            copy_image(im.image_path, out / IMAGES_DIR / im.image_name)
        path = out / f"{split}_labels.csv"
        atomic_write_text(path, buf.getvalue())
        written.append(path)
    return written
