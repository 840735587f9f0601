"""YOLO txt labels (Ultralytics layouts): reading to ``Entry`` rows and writing.

Two layouts are found: a ``data.yaml`` (or another ``*.yaml`` with ``names:``) naming the classes
and the train/val/test folders or list files, and a bare ``images/`` + ``labels/`` pair (split
subfolders optional) with the classes in ``classes.txt`` / ``obj.names`` / a ``data.yaml``. Each
image's label file is found by Ultralytics' rule: the last ``/images/`` of the image path becomes
``/labels/`` and the suffix ``.txt`` (no ``images`` folder in the path: the txt beside the image).

A label row is ``class cx cy w h``, fractions of the image size. The image size comes from its
header (nothing decoded here). Ultralytics loads images with OpenCV, which applies the EXIF
orientation, so its fractions are of the image as viewers show it: the size declared for a
rotated image is the transposed one, and od's image rules (``_rotate_decision``) then rotate
the stored pixels to match. Pixel checks (clipping, decoding) are left to the shard writer.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Annotation, Box, Problem
from od.data.formats import CopyImage, Entry, LabelledImage, LabelSet
from od.data.inputs import IMAGE_SUFFIXES
from od.data.layout import Layout, UsageError
from od.data.walk import Roots, walk_files
from od.io.files import atomic_write_text, file_problem, open_regular, read_file, shown

MAX_YAML_BYTES = 1024 * 1024  # a data.yaml is a few hundred bytes
MAX_LABEL_BYTES = 8 * 1024 * 1024  # a label file is a few lines
MAX_LIST_BYTES = 64 * 1024 * 1024  # train.txt: one image path per line
CLASS_FILES = ("classes.txt", "obj.names")  # Label Studio / darknet (CVAT YOLO 1.1)
SPLIT_KEYS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
TOLERANCE = 0.01  # a value this far outside 0..1 is kept (the box is clipped later); further: dropped
DECIMALS = 6  # written: cx cy w h rounded to 1e-6 of the image size
_NOT_LABELS = {"classes.txt", "train.txt", "val.txt", "valid.txt", "test.txt"}  # txt that are not label files


@dataclass(frozen=True)
class _Spec:
    """What a YOLO dataset folder says (from data.yaml or the bare folders)."""

    names: dict[int, str]
    names_from: str  # report name of the file naming the classes
    sources: tuple[tuple[str, Path], ...]  # (split or "" = hash split, folder or list file)
    notes: tuple[Problem, ...]
    kpt_values: int  # numbers per row after the box in a pose dataset (kpt_shape), 0 when none
    description: str
    split_source: str
    base: Path  # what relative lines of a list file are read from when not beside it (path:)


# --------------------------------------------------------------------------- paths


def label_path(image: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Ultralytics' image -> label rule: the last ``/images/`` becomes ``/labels/``, suffix ``.txt``.

    With ``root``, only the part of the path inside it counts (Ultralytics applies the rule to the
    absolute path; inside a dataset that is the same unless a folder above it is named ``images``,
    which must not send od's lookups out of the dataset)."""
    s = os.fspath(image)
    if root is not None:
        a, r = os.path.abspath(s), os.path.abspath(root).rstrip(os.sep)
        if a.startswith(r + os.sep):
            return Path(r + os.fspath(label_path(a[len(r):])))
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        head, tail = s.rsplit(sa, 1)
        s = head + sb + tail
    return Path(os.path.splitext(s)[0] + ".txt")


def _label_dir(folder: Path, root: Path) -> Path:
    """The labels folder of an images folder (the same rule on a folder)."""
    return label_path(folder / "x.jpg", root).parent


def _image_dir(label_dir: Path) -> Path:
    """The reverse rule, for messages: the last ``/labels/`` becomes ``/images/``."""
    s = os.fspath(label_dir) + os.sep
    sa, sb = f"{os.sep}labels{os.sep}", f"{os.sep}images{os.sep}"
    if sa in s:
        head, tail = s.rsplit(sa, 1)
        s = head + sb + tail
    return Path(s.rstrip(os.sep))


def _rel(path: str | os.PathLike, root: Path) -> str:
    from od.data.plan import _rel as rel

    return rel(path, root)


def _inside(path: Path, root: Path) -> bool:
    real, r = os.path.realpath(path), os.path.realpath(root)
    return real == r or real.startswith(r.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------- finding


def _load_yaml(path: Path, name: str) -> object:
    import yaml

    try:
        data = read_file(path, MAX_YAML_BYTES + 1)
    except OSError as e:
        raise UsageError(f"{name}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_YAML_BYTES:
        raise UsageError(f"{name}: larger than {MAX_YAML_BYTES} bytes, too large for a YOLO data.yaml")
    try:
        return yaml.safe_load(data.decode("utf-8-sig", errors="replace"))
    except yaml.YAMLError as e:
        raise UsageError(f"{name}: not valid YAML ({str(e).splitlines()[0]})") from None


def _yaml_file(dd: Path) -> tuple[Path, dict] | None:
    """data.yaml / data.yml, else the first other ``*.yaml`` in ``dd`` with ``names:`` (sorted)."""
    named = [dd / n for n in ("data.yaml", "data.yml")]
    try:
        others = sorted(p for p in dd.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p not in named
                        and not p.name.startswith("."))
    except OSError:
        others = []
    for p in named:
        if file_problem(p) is None:
            data = _load_yaml(p, _rel(p, dd))
            if not isinstance(data, dict):
                raise UsageError(f"{_rel(p, dd)}: not a YOLO data.yaml (expected a mapping with names: and train:)")
            return p, data
    for p in others:
        if file_problem(p) is None:
            try:
                data = _load_yaml(p, _rel(p, dd))
            except UsageError:
                continue  # some other YAML beside the data: not ours to judge
            if isinstance(data, dict) and "names" in data:
                return p, data
    return None


def _names(raw: object, where: str) -> dict[int, str]:
    """``names:`` as ``{index: name}`` (a list, or a mapping of indices to names)."""
    if isinstance(raw, (list, tuple)):
        items = list(enumerate(raw))
    elif isinstance(raw, dict):
        items = []
        for k, v in raw.items():
            try:
                i = int(k)
            except (TypeError, ValueError):
                raise UsageError(f"{where}: names: key {k!r} is not a class index (0, 1, ...)") from None
            if i < 0 or str(i) != str(k).strip():
                raise UsageError(f"{where}: names: key {k!r} is not a class index (0, 1, ...)")
            items.append((i, v))
    else:
        raise UsageError(f"{where}: names: must be a list of class names or a mapping index: name")
    names: dict[int, str] = {}
    for i, v in sorted(items):
        name = str(v).strip() if v is not None else ""
        if not name:
            raise UsageError(f"{where}: names: class {i} has no name")
        names[i] = name
    if not names:
        raise UsageError(f"{where}: names: is empty")
    seen: dict[str, int] = {}
    for i, n in names.items():
        if n in seen:
            raise UsageError(f"{where}: names: {n!r} is the name of classes {seen[n]} and {i}; give each class its own name")
        seen[n] = i
    return names


def _class_file(dd: Path) -> tuple[dict[int, str], str] | None:
    for p in (dd / "classes.txt", dd / "obj.names", dd / "labels" / "classes.txt"):
        if file_problem(p) is None:
            name = _rel(p, dd)
            try:
                text = read_file(p, MAX_YAML_BYTES).decode("utf-8-sig", errors="replace")
            except OSError as e:
                raise UsageError(f"{name}: cannot read: {e.strerror or e}") from None
            return _names([ln.strip() for ln in text.splitlines() if ln.strip()], name), name
    return None


def _resolve(entry: str, base: Path, yaml_dir: Path, dd: Path) -> tuple[Path | None, str]:
    """A train/val/test entry as a folder or list file inside ``dd``: (path, why not)."""
    cands = [base / entry]
    if entry.startswith("../"):  # Roboflow's "../train/images": Ultralytics retries without the ../
        cands.append(base / entry[3:])
    if yaml_dir != base:
        cands.append(yaml_dir / entry)
    why = "not found"
    for c in cands:
        if not os.path.exists(c):
            continue
        if not _inside(c, dd):
            why = f"leads outside the dataset folder ({shown(os.path.realpath(c))}); not read"
            continue
        if c.is_dir() or (c.is_file() and c.suffix.lower() == ".txt"):
            return c, ""
        why = "is neither a folder of images nor a .txt list of images"
    return None, why


def _yaml_spec(dd: Path, ypath: Path, data: dict) -> _Spec:
    yname = _rel(ypath, dd)
    notes: list[Problem] = []
    if "names" in data:
        names = _names(data["names"], yname)
    elif isinstance(data.get("nc"), int) and data["nc"] > 0:
        names = {i: f"class_{i}" for i in range(data["nc"])}
        notes.append(Problem(yname, f"no names:, only nc: {data['nc']}; classes named class_0..class_{data['nc'] - 1} "
                             "(as Ultralytics does)", FIXED))
    else:
        found = _class_file(dd)
        if found is None:
            raise UsageError(f"{yname}: no names: (the class names, e.g. names: [cat, dog]) and no classes.txt")
        names = found[0]
    if isinstance(data.get("nc"), int) and "names" in data and data["nc"] != len(names):
        notes.append(Problem(yname, f"nc: {data['nc']} but names: lists {len(names)} classes; names: used", FIXED))
    kpt = data.get("kpt_shape")
    kpt_values = kpt[0] * kpt[1] if (isinstance(kpt, list) and len(kpt) == 2
                                     and all(isinstance(v, int) and v > 0 for v in kpt)) else 0

    yaml_dir = ypath.parent
    base = yaml_dir
    raw_path = data.get("path")
    if isinstance(raw_path, str) and raw_path.strip() and raw_path.strip() != ".":
        p = Path(raw_path.strip())
        cand = p if p.is_absolute() else yaml_dir / p
        if _inside(cand, dd) and cand.is_dir():
            base = cand
        else:
            where = "does not exist" if not os.path.exists(cand) else \
                f"leads outside the dataset folder ({shown(os.path.realpath(cand))})"
            notes.append(Problem(yname, f"path: {raw_path} {where}; not used (od reads nothing outside DATA_DIR): "
                                 f"train/val/test looked up from {_rel(yaml_dir, dd) if yaml_dir != dd else 'its folder'}",
                                 FIXED))

    given: list[tuple[str, Path]] = []
    keys = dict(data)
    if "val" not in keys and "validation" in keys:
        keys["val"] = keys["validation"]
    for split in SPLIT_KEYS:
        v = keys.get(split)
        if v is None or v == "":
            continue
        entries = [v] if isinstance(v, str) else v if isinstance(v, list) else None
        if entries is None or not all(isinstance(e, str) for e in entries):
            raise UsageError(f"{yname}: {split}: must be a folder, a .txt list of images, or a list of them")
        for e in entries:
            path, why = _resolve(e.strip(), base, yaml_dir, dd)
            if path is None:
                notes.append(Problem(yname, f"{split}: {e} {why}; that part of the dataset is not read", SKIPPED_IMAGE))
            else:
                given.append((split, path))
    if not any(k in keys for k in SPLIT_KEYS):  # names only: the bare folders hold the images
        return _folders_spec(dd, (names, yname), notes, kpt_values)
    if not given:
        raise UsageError(f"{yname}: none of its train/val/test folders is inside {dd} "
                         f"({'; '.join(n.problem for n in notes if n.action == SKIPPED_IMAGE)})")
    # The same folder as two splits (val: images/train, a common shortcut) is no split: hash split.
    by_real: dict[str, list[str]] = {}
    for split, path in given:
        by_real.setdefault(os.path.realpath(path), []).append(split)
    sources: list[tuple[str, Path]] = []
    done: set[str] = set()
    for split, path in given:
        real = os.path.realpath(path)
        if real in done:
            continue
        done.add(real)
        splits = sorted(set(by_real[real]), key=SPLIT_KEYS.index)
        if len(splits) > 1:
            notes.append(Problem(yname, f"{' and '.join(splits)} name the same images ({_rel(path, dd)}): not a split; "
                                 "od splits them by hash (--val-fraction)", FIXED))
            sources.append(("", path))
        else:
            sources.append((split, path))
    desc = ", ".join(f"{s or 'hash'}: {_rel(p, dd)}" for s, p in sources)
    return _Spec(names, yname, tuple(sources), tuple(notes), kpt_values,
                 f"YOLO {yname} ({desc}; {len(names)} classes)", f"YOLO {yname}", base)


def _folders_spec(dd: Path, names_given=None, notes=(), kpt_values: int = 0) -> _Spec:
    images, labels = dd / "images", dd / "labels"
    if not (images.is_dir() and labels.is_dir()):
        what = names_given[1] if names_given else str(dd)
        raise UsageError(f"{what}: no train:/val: folders, and no images/ beside labels/ in {dd}")
    found = names_given or _class_file(dd)
    if found is None:
        raise UsageError(f"{dd}: YOLO images/ and labels/ found but no class names: add a data.yaml "
                         "(names: [cat, dog]) or a classes.txt (one name per line, class 0 first)")
    names, names_from = found
    subs = sorted(p for p in images.iterdir() if p.is_dir() and p.name.lower() in SPLIT_FOLDERS)
    sources = [(SPLIT_FOLDERS[p.name.lower()], p) for p in subs] + [("", images)]
    split_text = ", ".join(f"{p.name}/" for p in subs)
    desc = f"YOLO images/ + labels/{f' ({split_text})' if subs else ''}, classes from {names_from}"
    return _Spec(names, names_from, tuple(sources), tuple(notes), kpt_values, desc, "YOLO folders", dd)


def _spec(dd: Path) -> _Spec | None:
    found = _yaml_file(dd)
    if found is not None:
        return _yaml_spec(dd, *found)
    if (dd / "images").is_dir() and (dd / "labels").is_dir():
        return _folders_spec(dd)
    return None


def find_yolo(data_dir: Path) -> Layout | None:
    """The YOLO Layout of ``data_dir`` (a data.yaml, or images/ + labels/), or None.

    Raises UsageError when it half-matches (a data.yaml without names or usable splits,
    images/ + labels/ without class names)."""
    dd = Path(data_dir)
    spec = _spec(dd)
    if spec is None:
        return None
    images = dd / "images"
    all_under = images.is_dir() and all(p.is_dir() and _inside(p, images) for _, p in spec.sources)
    labels = dd / "labels"
    return Layout("yolo", dd, labels if labels.is_dir() else dd, images if all_under else dd,
                  description=spec.description, sources=spec.sources)


# --------------------------------------------------------------------------- reading


def _num(tok: str) -> float | None:
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _lines(ns: list[int]) -> str:
    head = ", ".join(str(n) for n in ns[:10]) + (f" and {len(ns) - 10} more" if len(ns) > 10 else "")
    return f"line{'s' if len(ns) > 1 else ''} {head}"


def _range_text(names: dict[int, str]) -> str:
    keys = sorted(names)
    return f"0..{keys[-1]}" if keys == list(range(len(keys))) else ", ".join(map(str, keys))


def parse_label_file(
    path: str | os.PathLike, name: str, names: dict[int, str], width: int, height: int,
    names_from: str = "data.yaml", kpt_values: int = 0,
) -> tuple[list[Box] | None, list[Problem]]:
    """Boxes in pixels of a ``width`` x ``height`` image (None: the file cannot be read) and problems.

    Rows: ``class cx cy w h``; with a 6th value (a score, Ultralytics save_conf) or keypoints
    (``kpt_shape``) the extra values are ignored; ``class x1 y1 x2 y2 x3 y3 ...`` (a segmentation
    polygon, >= 3 points) becomes its bounding box. Values within TOLERANCE of 0..1 are kept (the
    shard writer clips the box to the image with a note); further out the box is dropped (pixel
    coordinates where fractions belong). ``w``/``h`` <= 0, a class index that is not an integer or
    has no name, and anything that is not a finite number drop the row's box.
    """
    problems: list[Problem] = []
    try:
        data = read_file(path, MAX_LABEL_BYTES + 1)
    except OSError as e:
        return None, [Problem(name, f"cannot read label file: {e.strerror or e}; image skipped", SKIPPED_IMAGE)]
    if len(data) > MAX_LABEL_BYTES:
        return None, [Problem(name, f"label file larger than {MAX_LABEL_BYTES} bytes; image skipped", SKIPPED_IMAGE)]
    boxes: list[Box] = []
    polygons: list[int] = []
    scores: list[int] = []
    keypoints: list[int] = []
    for n, line in enumerate(data.decode("utf-8-sig", errors="replace").splitlines(), start=1):
        toks = line.split()
        if not toks:
            continue
        where = f"{name} line {n}"

        def drop(why: str) -> None:
            problems.append(Problem(where, f"{why}; box dropped", DROPPED_BOX))

        c = _num(toks[0])
        if c is None or c != int(c):
            drop(f"class index {toks[0]!r} is not an integer")
            continue
        c = int(c)
        if c not in names:
            drop(f"class index {c} is out of range ({names_from} names classes {_range_text(names)})")
            continue
        vals = [_num(t) for t in toks[1:]]
        bad = next((t for t, v in zip(toks[1:], vals) if v is None), None)
        if bad is not None:
            drop(f"coordinate {bad!r} is not a finite number")
            continue
        k = len(vals)
        if k in (4, 5) or (kpt_values and k == 4 + kpt_values):
            cx, cy, bw, bh = vals[:4]
            if bw <= 0 or bh <= 0:
                drop(f"width x height {bw:g} x {bh:g} is not positive")
                continue
            if not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in (cx, cy, bw, bh)):
                drop(f"values {cx:g} {cy:g} {bw:g} {bh:g} are not fractions of the image size (0..1; pixels?)")
                continue
            x0, x1, y0, y1 = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2
            if k == 5:
                scores.append(n)
            elif k > 5:
                keypoints.append(n)
        elif k >= 6 and k % 2 == 0:
            xs, ys = vals[0::2], vals[1::2]
            if not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in vals):
                drop("polygon points are not fractions of the image size (0..1; pixels?)")
                continue
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            if x1 <= x0 or y1 <= y0:
                drop("segmentation polygon has no area")
                continue
            polygons.append(n)
        else:
            drop(f"{len(toks)} values; expected 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 x3 y3 ...')")
            continue
        boxes.append(Box(x0 * width, y0 * height, x1 * width, y1 * height, names[c], origin=f"line {n}"))
    if polygons:
        problems.append(Problem(name, f"segmentation polygons on {_lines(polygons)} reduced to their bounding boxes",
                                FIXED))
    if scores:
        problems.append(Problem(name, f"a 6th value (a score, as Ultralytics save_conf writes) on {_lines(scores)} "
                                "ignored", FIXED))
    if keypoints:
        problems.append(Problem(name, f"keypoints on {_lines(keypoints)} ignored (od trains boxes)", FIXED))
    return boxes, problems


def display_size(path: str | os.PathLike) -> tuple[int, int] | str:
    """(width, height) of the image as viewers (and OpenCV, so Ultralytics) show it: the header's
    size, transposed for EXIF orientations 5-8. Only the header is read. Or why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from od.data.images import _ROTATED_90, ORIENTATION_TAG, _pillow

    try:  # Pillow's pixel limit off for the header: the shard writer applies od's own, with a clear message
        with open_regular(path) as f, warnings.catch_warnings(), _pillow("MAX_IMAGE_PIXELS", None):
            warnings.simplefilter("ignore")
            im = Image.open(f)
            w, h = im.size
            orientation = None
            if im.format != "PNG" or "exif" in im.info:  # PNG: getexif() would decode the pixels to look further
                try:
                    orientation = im.getexif().get(ORIENTATION_TAG)
                except Exception:  # a broken EXIF block: the shard writer says so
                    orientation = None
    except UnidentifiedImageError:
        return "cannot read the image's size: not an image (or a format Pillow cannot read)"
    except OSError as e:
        return f"cannot read the image's size: {e.strerror or e}"
    except Exception as e:  # noqa: BLE001 - a corrupt header can make Pillow raise anything
        return f"cannot read the image's size ({type(e).__name__}: {e})"
    return (h, w) if orientation in _ROTATED_90 else (w, h)


def _list_images(list_file: Path, dd: Path, base: Path, labels: LabelSet) -> list[tuple[Path, str]]:
    """(image path, line as written) of a train.txt list; './x' is beside the list (Ultralytics),
    other relative lines beside the list, else from the dataset's base folder."""
    name = _rel(list_file, dd)
    try:
        data = read_file(list_file, MAX_LIST_BYTES + 1)
    except OSError as e:
        labels.add(Problem(name, f"cannot read list of images: {e.strerror or e}; not read", SKIPPED_IMAGE))
        return []
    out: list[tuple[Path, str]] = []
    for n, line in enumerate(data[:MAX_LIST_BYTES].decode("utf-8-sig", errors="replace").splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        p = Path(s)
        if not p.is_absolute():
            p = list_file.parent / s
            if not os.path.exists(p) and os.path.exists(base / s):
                p = base / s
        out.append((p, s))
    return out


def read_yolo(layout: Layout, roots: Roots) -> LabelSet:
    """Every image of a YOLO layout with its label file read (the YOLO reader of ``od.data.formats``)."""
    dd = layout.root
    spec = _spec(dd)
    labels = LabelSet(split_source=spec.split_source)
    for p in spec.notes:
        labels.add(p)
    images_root = layout.images_dir or dd

    # Every image of every source: the split folders first, then a hash-split source that may hold them.
    found: list[tuple[str, Path, str]] = []  # (split, image, filename as written)
    seen: dict[str, str] = {}  # real path -> split it is used in
    reported: set[str] = set()  # refused paths already reported (a hash-split source can hold a split folder)
    label_dirs: list[Path] = []
    for split, src in sorted(spec.sources, key=lambda s: s[0] == ""):
        if src.is_dir():
            label_dirs.append(_label_dir(src, dd))
            listing: list[tuple[Path, str]] = []
            for path, problem in walk_files(src, roots, lambda p: _rel(p, dd), IMAGE_SUFFIXES):
                if problem is not None:
                    if path not in reported:
                        reported.add(path)
                        labels.num_files += 1
                        labels.add(problem)
                    continue
                listing.append((Path(path), os.path.basename(path)))
        else:
            listing = _list_images(src, dd, spec.base, labels)
        for path, written in listing:
            real = os.path.realpath(path)
            if real in seen:
                if split and seen[real] != split:
                    labels.add(Problem(_rel(path, dd), f"listed in {seen[real]} and {split}; used in {seen[real]}",
                                       FIXED))
                continue
            seen[real] = split
            found.append((split, path, written, real))

    used_labels: dict[str, str] = {}  # real label path -> report name of the image using it
    for split, img, written, real_img in found:
        labels.num_files += 1
        img_name = _rel(img, dd)
        why = file_problem(img)
        why = (why if why == "not found" else f"{why}; not read") if why else roots.refuse(img, real_img)
        if why:
            labels.add(Problem(img_name, f"image {why}", SKIPPED_IMAGE))
            continue
        lbl = label_path(img, dd)
        lbl_name = _rel(lbl, dd)
        real_lbl = os.path.realpath(lbl)
        if real_lbl in used_labels:
            labels.add(Problem(img_name, f"shares its label file {lbl_name} with {used_labels[real_lbl]} (the same name "
                               "with another suffix); skipped", SKIPPED_IMAGE))
            continue
        used_labels[real_lbl] = img_name
        size = display_size(img)
        if isinstance(size, str):
            labels.add(Problem(img_name, f"{size}; its boxes cannot be placed; skipped", SKIPPED_IMAGE))
            continue
        w, h = size
        missing = file_problem(lbl) == "not found" and not os.path.islink(lbl)
        if missing:
            name, boxes, problems = img_name, [], [Problem(img_name, f"no label file {lbl_name}: used as a negative "
                                                  "(background) image, as Ultralytics treats it", FIXED)]
        else:
            name = lbl_name
            outside = roots.refuse(lbl, real_lbl)
            if outside:
                boxes, problems = None, [Problem(name, f"label file {outside}; image skipped", SKIPPED_IMAGE)]
            else:
                boxes, problems = parse_label_file(lbl, name, spec.names, w, h, spec.names_from, spec.kpt_values)
        for p in problems:
            labels.add(p)
        if boxes is None:
            continue
        try:
            key = PurePosixPath(Path(os.path.relpath(img, images_root)).as_posix()).with_suffix("").as_posix()
        except ValueError:
            key = Path(img_name).with_suffix("").as_posix()
        ann = Annotation(os.fspath(lbl), os.fspath(img), written, w, h, tuple(boxes), tuple(problems))
        labels.entries.append(Entry(name, key, ann, os.path.abspath(img)))
        if split:
            labels.splits[key] = split

    # Label files no image points at.
    used_real = set(used_labels)
    source_reals = {os.path.realpath(s) for _, s in spec.sources}
    checked: set[str] = set()
    for d in label_dirs:
        if not d.is_dir() or os.path.realpath(d) in checked:
            continue
        checked.add(os.path.realpath(d))
        for path, problem in walk_files(d, roots, lambda p: _rel(p, dd), (".txt",)):
            base_name = os.path.basename(path)
            if base_name.lower() in _NOT_LABELS:
                continue
            real = os.path.realpath(path)
            if real in source_reals:
                continue
            if problem is not None:
                continue  # a label file no image uses: nothing is lost by not reading it
            if real in used_real or path in reported:
                continue
            reported.add(path)
            labels.num_files += 1
            stem = Path(base_name).stem
            where = _rel(_image_dir(Path(path).parent), dd)
            labels.add(Problem(_rel(path, dd), f"label file without an image (no {stem}.* in {where}/); skipped",
                               SKIPPED_IMAGE))
    labels.entries.sort(key=lambda e: e.key)
    return labels


# --------------------------------------------------------------------------- writing


def _f(v: float) -> str:
    return f"{v:.{DECIMALS}f}"


def format_yolo(
    boxes: Sequence[Box], width: int, height: int, class_index: dict[str, int],
    scores: Sequence[float] | None = None,
) -> str:
    """Label file text: ``class cx cy w h`` per box (fractions, 6 decimals), ``+ score`` with ``scores``.

    Boxes are clipped to the image first (Ultralytics refuses values over 1); boxes with no area
    left are not written. Raises KeyError for a class not in ``class_index``."""
    rows: list[str] = []
    for i, b in enumerate(boxes):
        x0, x1 = min(max(b.xmin, 0.0), width), min(max(b.xmax, 0.0), width)
        y0, y1 = min(max(b.ymin, 0.0), height), min(max(b.ymax, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            continue
        row = (f"{class_index[b.name]} {_f((x0 + x1) / 2 / width)} {_f((y0 + y1) / 2 / height)} "
               f"{_f((x1 - x0) / width)} {_f((y1 - y0) / height)}")
        if scores is not None:
            row += f" {_f(scores[i])}"
        rows.append(row)
    return "".join(r + "\n" for r in rows)


def _q(s: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is one)."""
    import json

    return json.dumps(s, ensure_ascii=False)


def format_data_yaml(classes: Sequence[str], splits: dict[str, str]) -> str:
    """data.yaml: ``path: .`` (the yaml's folder), the splits given (``{split: folder}``), names in order."""
    lines = ["# YOLO dataset written by od: labels/<split>/<image>.txt hold 'class cx cy w h' (fractions of the",
             "# image size); data.yaml names the classes (index: name) and the image folder of each split",
             "path: ."]
    lines += [f"{k}: {_q(splits[k])}" for k in SPLIT_KEYS if k in splits]
    lines.append(f"nc: {len(classes)}")
    lines.append("names:")
    lines += [f"  {i}: {_q(n)}" for i, n in enumerate(classes)]
    return "\n".join(lines) + "\n"


def format_classes_txt(classes: Sequence[str]) -> str:
    """classes.txt (Label Studio, darknet): one name per line, class 0 first."""
    return "".join(f"{n}\n" for n in classes)


def _safe_rel(name: str) -> PurePosixPath:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return PurePosixPath(*parts) if parts else PurePosixPath("image.jpg")


def write_yolo(images: Sequence[LabelledImage], classes: Sequence[str], out: Path, copy_image: CopyImage) -> list[Path]:
    """The Ultralytics layout under ``out``: ``images/<split>/<image_name>``, ``labels/<split>/<stem>.txt``
    (an empty txt for a negative), ``data.yaml`` (``path: .``, the splits present, ``names`` as
    ``{index: name}`` in ``classes`` order) and ``classes.txt``.

    Rounding: cx cy w h with 6 decimals, so each written edge is within 1e-6 of the image size of
    the source box (0.001 px for a 1000 px side) after clipping to the image. Two images whose
    names differ only by suffix (a.jpg, a.png) would share a label file: the second is written as
    ``a-png.png``. Only the splits that hold images are in data.yaml (Ultralytics wants a val:;
    add one when training there on a train-only set). Raises KeyError for a box whose class is
    not in ``classes``.
    """
    out = Path(out)
    index = {n: i for i, n in enumerate(classes)}
    written: list[Path] = []
    used: set[Path] = set()
    splits: dict[str, str] = {}
    for im in sorted(images, key=lambda i: (SPLIT_KEYS.index(i.split) if i.split in SPLIT_KEYS else 9, i.image_name)):
        split = im.split if im.split in SPLIT_KEYS else "train"
        rel = _safe_rel(im.image_name)
        dest = out / "images" / split / rel
        lbl = label_path(dest, out)
        if lbl in used:
            rel = rel.with_name(f"{rel.stem}-{rel.suffix.lstrip('.').lower()}{rel.suffix}")
            dest = out / "images" / split / rel
            lbl = label_path(dest, out)
        used.add(lbl)
        splits[split] = f"images/{split}"
        copy_image(im.image_path, dest)
        atomic_write_text(lbl, format_yolo(im.boxes, im.width, im.height, index))
        written += [dest, lbl]
    for name, text in (("data.yaml", format_data_yaml(classes, splits)), ("classes.txt", format_classes_txt(classes))):
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written
