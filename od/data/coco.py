"""COCO instances JSON: finding the files, reading them to ``Entry`` rows, and writing them.

A COCO dataset is one JSON per split (``annotations/instances_train2017.json``, CVAT's
``annotations/instances_default.json``, Label Studio's ``result.json``, Roboflow's
``train/_annotations.coco.json``) plus a folder of images. The JSON comes from a tool or a
colleague, so nothing in it is trusted: every image, category and annotation is checked on
its own, and what is wrong with one becomes a ``Problem`` naming the file and the id while
the rest converts. ``file_name`` is only ever looked up inside the dataset. Pixel checks
(decoding, the real size, boxes outside the image) are left to the shard writer.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Annotation, Box, Detection, Problem
from od.data.formats import CopyImage, Entry, LabelledImage, LabelSet
from od.data.layout import ANNOTATION_DIRS, IMAGE_DIRS, Layout
from od.data.plan import _rel
from od.data.voc import _unsafe_filename, image_problem
from od.data.walk import Roots, name_problem
from od.io.files import NotRegularFileError, atomic_write_text, open_regular, read_file, shown

MAX_JSON_BYTES = 2 * 1024**3  # COCO train2017 is 0.45 GB; anything past this is not read whole
PEEK_BYTES = 256 * 1024  # read from each end of a JSON to tell a COCO file from another JSON
ROBOFLOW_DIRS = ("train", "valid", "val", "test")  # DATA/<split>/_annotations.coco.json
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "": 3}

_IMAGES_KEY = re.compile(rb'"images"\s*:\s*\[')
_OTHER_KEYS = re.compile(rb'"(annotations|categories)"\s*:\s*\[')
# A split word in a file or folder name, not inside another word ("latest" is not "test").
_SPLIT_RE = re.compile(r"(?<![a-z])(trainval|train|minival|validation|valid|val|testdev|test)(?![a-z])")
_SPLIT_OF_WORD = {"trainval": "train", "train": "train", "minival": "val", "validation": "val", "valid": "val",
                  "val": "val", "testdev": "test", "test": "test"}


# --------------------------------------------------------------------------- finding


def split_of(name: str) -> str:
    """The split a file name gives (``instances_val2017.json`` -> val), or "" (none: hash split)."""
    m = _SPLIT_RE.search(name.lower())
    return _SPLIT_OF_WORD[m.group(1)] if m else ""


def _peek(path: Path) -> bool | None:
    """Whether ``path`` looks like a COCO file (an ``"images"`` list and ``"annotations"`` or
    ``"categories"`` in its first or last ``PEEK_BYTES``); None when it cannot be read."""
    try:
        with open_regular(path) as f:
            head = f.read(PEEK_BYTES)
            size = os.fstat(f.fileno()).st_size
            if size > 2 * PEEK_BYTES:
                f.seek(size - PEEK_BYTES)
                tail = f.read(PEEK_BYTES)
            else:
                head, tail = head + f.read(), b""
    except OSError:
        return None
    text = head + b"\n" + tail
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return False
    return bool(_IMAGES_KEY.search(text) and _OTHER_KEYS.search(text))


def _json_files(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.name.lower().endswith(".json") and not e.name.startswith("."))
    except OSError:
        return []


def _pick(files: list[Path], root: Path) -> list[Path]:
    """The COCO files among ``files``: those that peek like COCO, plus (beside them) the ones that
    cannot be read, so the reader reports them. With ``instances_*.json`` present, every one of those
    and nothing else (a COCO download's folder also holds captions_* and person_keypoints_* for the
    same images)."""
    roots = Roots.of(root)
    looks: list[Path] = []
    unreadable: list[Path] = []
    for p in files:
        if roots.refuse(p) or name_problem(p.name):
            unreadable.append(p)  # never peeked: outside the dataset, or a name that is not text
            continue
        ok = _peek(p)
        if ok:
            looks.append(p)
        elif ok is None:
            unreadable.append(p)
    if not looks:
        return []
    if any(p.name.lower().startswith("instances_") for p in looks):  # broken ones too: the reader says why
        return sorted(p for p in files if p.name.lower().startswith("instances_"))
    return sorted(looks + unreadable)


def find_coco(data_dir: Path) -> Layout | None:
    """The COCO Layout of ``data_dir`` (cheap: each JSON is only peeked at), or None.

    Looks in DATA/annotations/ (or Annotations/, ...), then DATA/, then Roboflow's
    DATA/{train,valid,test}/; the first of these holding COCO files is used."""
    dd = Path(data_dir)
    groups: list[list[Path]] = []
    for n in ANNOTATION_DIRS:
        if (dd / n).is_dir():
            groups.append(_json_files(dd / n))
            break
    groups.append(_json_files(dd))
    groups.append([p for n in ROBOFLOW_DIRS if (dd / n).is_dir() for p in _json_files(dd / n)])
    for files in groups:
        found = _pick(files, dd)
        if found:
            break
    else:
        return None
    sources = sorted(((split_of(_rel(p, dd)), p) for p in found), key=lambda s: (SPLIT_ORDER[s[0]], str(s[1])))
    images_dir = next((dd / n for n in IMAGE_DIRS if (dd / n).is_dir()), None)
    names = ", ".join(f"{_rel(p, dd)}" + (f" ({s})" if s else "") for s, p in sources)
    dirs = list(dict.fromkeys(_image_dirs(dd, images_dir, p, s)[0] for s, p in sources))  # the likeliest
    where = ", ".join(_rel(d, dd) + "/" if os.path.abspath(d) != os.path.abspath(dd) else "DATA_DIR/" for d in dirs)
    return Layout("coco", dd, found[0].parent, images_dir, description=f"COCO JSON {names}; images in {where}",
                  sources=tuple(sources))


# --------------------------------------------------------------------------- reading


@dataclass
class _Image:
    """One ``images`` entry that resolved to a usable image file."""

    id: object
    where: str  # "annotations/x.json (image 5)"
    file_name: str
    path: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


def _id(v) -> int | str | None:
    """A COCO id: an int (also 3.0), or a non-empty string; None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip():
        return v
    return None


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _load(path: Path, roots: Roots) -> dict | str:
    """The parsed top-level object of a COCO file, or why it cannot be used."""
    outside = roots.refuse(path)
    if outside:
        return f"JSON {outside}"
    try:
        data = read_file(path, MAX_JSON_BYTES + 1)
    except NotRegularFileError as e:
        return f"{e.strerror}; not read"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    if len(data) > MAX_JSON_BYTES:
        return f"larger than {MAX_JSON_BYTES} bytes; not read"
    if not data.strip():
        return "file is empty; not read"
    try:
        obj = json.loads(data)
    except RecursionError:
        return "not valid JSON: nested too deeply; not read"
    except ValueError as e:  # JSONDecodeError (line and column), UnicodeDecodeError
        return f"not valid JSON: {e}; not read"
    if not isinstance(obj, dict):
        return f"not a COCO file: the top level is a {type(obj).__name__}, expected an object with \"images\"; not read"
    if not isinstance(obj.get("images"), list):
        return "not a COCO file: no \"images\" list; not read"
    for k in ("annotations", "categories"):
        if k in obj and not isinstance(obj[k], list):
            return f"\"{k}\" is a {type(obj[k]).__name__}, expected a list; not read"
    return obj


def _image_dirs(root: Path, images_dir: Path | None, json_path: Path, split: str) -> list[str]:
    """Where the images of ``json_path`` may be, most specific first: images/train2017/,
    train2017/ (the folder the file names), images/, beside the JSON, the dataset root."""
    token = json_path.stem.rsplit("_", 1)[-1]
    cands = [root / n / token for n in IMAGE_DIRS] + [root / token]
    if split:
        cands += [root / n / split for n in IMAGE_DIRS]
    cands += ([images_dir] if images_dir else []) + [json_path.parent, root]
    out: list[str] = []
    for d in cands:
        s = os.fspath(d)
        if s not in out and d.is_dir():
            out.append(s)
    return out


def _resolve(file_name: str, dirs: list[str], roots: Roots, root: Path) -> tuple[str | None, str]:
    """(image path, a note when only its base name was found) or (None, why not found)."""
    clean = file_name.replace("\\", "/")
    unsafe = _unsafe_filename(file_name)
    refused = ""
    tries = [] if unsafe else [clean]
    base = PurePosixPath(clean).name
    if base and base != clean and base not in (".", ".."):
        tries.append(base)
    for rel in tries:
        for d in dirs:
            cand = os.path.join(d, rel)
            why = image_problem(cand, roots)
            if why is None:
                if rel == clean:
                    return cand, ""
                what = f"{unsafe} (never read outside the dataset)" if unsafe else "not found"
                return cand, f"file_name {file_name!r} {what}; using {_rel(cand, root)} (its base name)"
            if why != "not found" and not refused:
                refused = f"{_rel(cand, root)}: {why}"
    if refused:
        return None, f"image {refused}"
    if unsafe:
        return None, f"file_name {file_name!r} {unsafe}; not read (never outside the dataset)"
    where = ", ".join(_rel(d, root).rstrip("/") + "/" if os.path.abspath(d) != os.path.abspath(root)
                      else "the dataset folder" for d in dirs)
    return None, f"image not found: file_name {file_name!r} in {where}"


def _size(v, what: str, where: str, labels: LabelSet) -> int:
    """A declared width/height: a positive int, else 0 (the image's real size decides) with a note."""
    if v is None:
        return 0
    n = _number(v)
    if n is None or n <= 0 or not n.is_integer():
        labels.add(Problem(where, f"{what} {v!r} is not a positive whole number; the image's own size is used",
                           FIXED))
        return 0
    return int(n)


def _box_of(a: dict, where: str, labels: LabelSet) -> tuple[float, float, float, float] | None:
    """``bbox`` [x, y, w, h] as (xmin, ymin, xmax, ymax); from the polygon when there is no bbox."""
    bbox = a.get("bbox")
    if bbox is None or bbox == []:
        seg = a.get("segmentation")
        pts = [_number(v) for poly in seg for v in poly] if isinstance(seg, list) and seg and all(
            isinstance(p, list) for p in seg) else []
        if pts and None not in pts and len(pts) >= 6:
            xs, ys = pts[0::2], pts[1::2]
            labels.add(Problem(where, "has no bbox; box taken from its polygon", FIXED))
            return min(xs), min(ys), max(xs), max(ys)
        what = "RLE segmentation only" if isinstance(seg, dict) else "and no polygon"
        labels.add(Problem(where, f"has no bbox ({what}); box dropped", DROPPED_BOX))
        return None
    vals = [_number(v) for v in bbox] if isinstance(bbox, list) else []
    if len(vals) != 4 or None in vals:
        labels.add(Problem(where, f"bbox {bbox!r} is not 4 finite numbers [x, y, width, height]; box dropped",
                           DROPPED_BOX))
        return None
    x, y, w, h = vals
    if w <= 0 or h <= 0:
        labels.add(Problem(where, f"bbox {bbox!r} has width or height <= 0; box dropped", DROPPED_BOX))
        return None
    return x, y, x + w, y + h


def _categories(cats: list, name: str, labels: LabelSet) -> dict:
    """category id -> class name; bad, repeated ids and shared names reported."""
    names: dict = {}
    by_name: dict[str, object] = {}
    for i, c in enumerate(cats):
        cid = _id(c.get("id")) if isinstance(c, dict) else None
        where = f"{name} (category {cid})" if cid is not None else f"{name} (categories[{i}])"
        if cid is None:
            labels.add(Problem(where, "has no usable id; its boxes are dropped", DROPPED_BOX))
            continue
        cname = c.get("name")
        if not isinstance(cname, str) or not cname.strip():
            labels.add(Problem(where, f"has no name ({cname!r}); its boxes are dropped", DROPPED_BOX))
            names.setdefault(cid, None)
            continue
        cname = cname.strip()
        if cid in names:
            if names[cid] != cname:
                labels.add(Problem(where, f"id {cid} is listed twice ({names[cid]!r} and {cname!r}); "
                                   f"its boxes are read as {names[cid]!r}", FIXED))
            continue
        if cname in by_name:
            labels.add(Problem(where, f"name {cname!r} is also category {by_name[cname]}; the boxes of both "
                               f"are read as class {cname!r}", FIXED))
        by_name.setdefault(cname, cid)
        names[cid] = cname
    return names


def _read_file(split: str, path: Path, layout: Layout, roots: Roots, labels: LabelSet,
               seen: dict[str, str]) -> list[_Image]:
    """One COCO file's usable images with their boxes; every finding added to ``labels``."""
    root = layout.root
    name = _rel(path, root)
    data = _load(path, roots)
    if isinstance(data, str):
        labels.add(Problem(name, data, SKIPPED_IMAGE))
        return []
    images, anns = data["images"], data.get("annotations", [])
    labels.num_files += len(images)
    cats = data.get("categories")
    if cats is None and anns:
        labels.add(Problem(name, f"no \"categories\" list: its {len(anns)} annotations have no class; "
                           "boxes dropped (images read as negatives)", DROPPED_BOX))
        anns = []
    names = _categories(cats or [], name, labels)
    dirs = _image_dirs(root, layout.images_dir, path, split)

    by_id: dict = {}
    skipped: dict = {}  # image id -> (where, why): reported once its annotations are counted
    index_of: dict = {}
    for i, im in enumerate(images):
        iid = _id(im.get("id")) if isinstance(im, dict) else None
        if iid is None:
            labels.add(Problem(f"{name} (images[{i}])", "has no usable id; skipped", SKIPPED_IMAGE))
            continue
        where = f"{name} (image {iid})"
        if iid in index_of:
            labels.add(Problem(where, f"id {iid} is listed twice (images[{index_of[iid]}] and images[{i}]); "
                               "the second entry is skipped", SKIPPED_IMAGE))
            continue
        index_of[iid] = i
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            skipped[iid] = (where, f"has no file_name ({fn!r})")
            continue
        found, note = _resolve(fn.strip(), dirs, roots, root)
        if found is None:
            skipped[iid] = (where, note)
            continue
        key = os.path.abspath(found)
        if key in seen:
            skipped[iid] = (where, f"file_name {fn!r} is the same image as {seen[key]}; only that entry is used")
            continue
        seen[key] = where
        if note:
            labels.add(Problem(where, note, FIXED))
        w = _size(im.get("width"), "width", where, labels)
        h = _size(im.get("height"), "height", where, labels)
        by_id[iid] = _Image(iid, where, fn, found, w, h)

    dropped_with: dict = {}
    seen_ann: dict = {}
    for i, a in enumerate(anns):
        aid = _id(a.get("id")) if isinstance(a, dict) else None
        label = f"annotation {aid}" if aid is not None else f"annotations[{i}]"
        where = f"{name} ({label})"
        if not isinstance(a, dict):
            labels.add(Problem(where, f"is a {type(a).__name__}, not an object; dropped", DROPPED_BOX))
            continue
        iid = _id(a.get("image_id"))
        if iid in skipped:
            dropped_with[iid] = dropped_with.get(iid, 0) + 1
            continue
        img = by_id.get(iid)
        if img is None:
            labels.add(Problem(where, f"image_id {a.get('image_id')!r} is not in \"images\"; box dropped", DROPPED_BOX))
            continue
        if aid is None:
            labels.add(Problem(where, f"has no usable id ({a.get('id')!r}); box kept", FIXED))
        elif aid in seen_ann:
            labels.add(Problem(where, f"id {aid} is used twice (annotations[{seen_ann[aid]}] and "
                               f"annotations[{i}]); both boxes kept", FIXED))
        else:
            seen_ann[aid] = i
        cid = _id(a.get("category_id"))
        cname = names.get(cid)
        if cname is None:
            why = "has no name" if cid in names else "is not in \"categories\""
            labels.add(Problem(where, f"category_id {a.get('category_id')!r} {why}; box dropped", DROPPED_BOX))
            continue
        coords = _box_of(a, where, labels)
        if coords is None:
            continue
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1):  # True/False compare equal to 1/0
            labels.add(Problem(where, f"iscrowd {crowd!r} is not 0 or 1; read as 0", FIXED))
            crowd = 0
        img.boxes.append(Box(*coords, cname, is_crowd=bool(crowd), origin=label))
    for iid, (where, why) in skipped.items():
        n = dropped_with.get(iid, 0)
        labels.add(Problem(where, why + (f"; skipped with its {n} annotation{'s' * (n != 1)}" if n else "; skipped"),
                           SKIPPED_IMAGE))
    return list(by_id.values())


def read_coco(layout: Layout, roots: Roots) -> LabelSet:
    """Every COCO file of ``layout`` read: one Entry per usable image (no boxes: a negative).

    Entry names are ``<file> (image <id>)``; the key is the image's path relative to the images
    folder (or the dataset root), POSIX, without its suffix. The split a file's name gives
    (``instances_val2017.json``) is kept; a file without one is split by hash."""
    labels = LabelSet()
    seen: dict[str, str] = {}  # absolute image path -> where it was first listed (one listing per image)
    images_root = os.fspath(layout.images_dir or layout.root)
    keys: set[str] = set()
    given: list[str] = []
    for split, path in layout.sources:
        imgs = _read_file(split, path, layout, roots, labels, seen)
        if split:
            given.append(f"{_rel(path, layout.root)}: {split}")
        for img in imgs:
            rel = _rel(img.path, images_root)
            key = rel.rsplit(".", 1)[0] if "." in PurePosixPath(rel).name else rel
            if key in keys:  # a.jpg and a.png: the second keeps its suffix
                key = rel
            keys.add(key)
            ann = Annotation(os.fspath(path), img.path, img.file_name, img.width, img.height, tuple(img.boxes))
            labels.entries.append(Entry(img.where, key, ann, os.path.abspath(img.path)))
            if split:
                labels.splits[key] = split
    labels.entries.sort(key=lambda e: e.key)
    if labels.splits:
        labels.split_source = "COCO files (" + ", ".join(given) + ")"
    return labels


# --------------------------------------------------------------------------- writing


def _bbox(b: Box) -> list[float]:
    return [b.xmin, b.ymin, b.xmax - b.xmin, b.ymax - b.ymin]


def write_coco(images: Sequence[LabelledImage], classes: Sequence[str], out: Path,
               copy_image: CopyImage) -> list[Path]:
    """``out/annotations/instances_<split>.json`` per split and ``out/images/<image_name>``.

    Category ids are 1..N in ``classes`` order; image and annotation ids count from 1 across all
    files. ``bbox`` is ``[xmin, ymin, xmax - xmin, ymax - ymin]`` in exact float pixels, so reading
    back gives the same boxes to within float rounding (``x + w`` may differ from ``xmax`` in the
    last bit, ~1e-13 px); ``area`` is w*h, ``iscrowd`` from ``Box.is_crowd``; difficult/truncated
    have no COCO field and are not kept."""
    cat_id = {n: i for i, n in enumerate(classes, start=1)}
    categories = [{"id": i, "name": n, "supercategory": ""} for n, i in cat_id.items()]
    per_split: dict[str, dict] = {}
    written: list[Path] = []
    ann_id = 0
    for img_id, im in enumerate(images, start=1):
        unsafe = _unsafe_filename(im.image_name)
        if unsafe:
            raise ValueError(f"image name {im.image_name!r} {unsafe}")
        doc = per_split.setdefault(im.split or "default", {"images": [], "annotations": []})
        doc["images"].append({"id": img_id, "file_name": im.image_name, "width": int(im.width),
                              "height": int(im.height)})
        for b in im.boxes:
            if b.name not in cat_id:
                raise ValueError(f"{im.image_name}: class {b.name!r} is not one of the classes given")
            ann_id += 1
            bbox = _bbox(b)
            doc["annotations"].append({"id": ann_id, "image_id": img_id, "category_id": cat_id[b.name],
                                       "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": int(b.is_crowd),
                                       "segmentation": []})
        dest = out / "images" / im.image_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_image(im.image_path, dest)
        written.append(dest)
    for split in sorted(per_split, key=lambda s: (SPLIT_ORDER.get(s, 3), s)):
        doc = {"info": {"description": f"{split} split written by od"}, "licenses": [],
               "images": per_split[split]["images"], "annotations": per_split[split]["annotations"],
               "categories": categories}
        path = out / "annotations" / f"instances_{split}.json"
        atomic_write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
        written.append(path)
    return written


def format_detections(images: Sequence[tuple[str, int, int, Sequence[Detection]]], categories: Mapping[int, str],
                      info: Mapping | None = None) -> dict:
    """od.detect's detections as one COCO document (CVAT / Label Studio pre-labels, od.records).

    ``images``: (file_name, width, height, detections) in pixels of the image as decoded (EXIF
    orientation applied, as the declared width/height say). Categories are the label map's
    (its ids); a detected id the label map lacks is added under the detection's class name.
    ``bbox`` is rounded to 0.01 px; each annotation carries the detector's ``score``."""
    cats = dict(categories)
    doc_images: list[dict] = []
    doc_anns: list[dict] = []
    for img_id, (file_name, width, height, dets) in enumerate(images, start=1):
        doc_images.append({"id": img_id, "file_name": file_name, "width": int(width), "height": int(height)})
        for d in dets:
            x0, y0 = round(d.box.xmin, 2), round(d.box.ymin, 2)
            w, h = round(d.box.xmax - x0, 2), round(d.box.ymax - y0, 2)
            if w <= 0 or h <= 0:
                continue
            cats.setdefault(int(d.class_id), d.class_name)
            doc_anns.append({"id": len(doc_anns) + 1, "image_id": img_id, "category_id": int(d.class_id),
                             "bbox": [x0, y0, w, h], "area": round(w * h, 4), "iscrowd": 0, "segmentation": [],
                             "score": round(float(d.score), 6)})
    return {
        "info": dict(info or {}),
        "licenses": [],
        "images": doc_images,
        "annotations": doc_anns,
        "categories": [{"id": i, "name": shown(n), "supercategory": ""} for i, n in sorted(cats.items())],
    }
