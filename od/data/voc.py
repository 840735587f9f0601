"""Pascal VOC XML: hardened parsing to ``Annotation``, box rules, and LabelImg-style writing.

Annotation files come from anywhere (downloads, colleagues, scrapers), so the parser
is locked down: no DTD, no entity expansion, no network, and a file with a DOCTYPE or
ENTITY declaration is refused before lxml ever sees it (XXE, billion laughs). The
``<filename>`` inside an XML is treated as untrusted too: it is only ever looked up
inside the dataset. Nothing here raises for bad input; every finding is a ``Problem``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

from lxml import etree

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Annotation, Box, Problem
from od.data.walk import Roots
from od.io.files import atomic_write_bytes, file_problem, read_file

# Image suffixes tried when <filename> is missing/wrong (fallback: image with the XML's stem).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_XML_BYTES = 8 * 1024 * 1024  # a VOC file is a few KB; anything this big is not one

# DOCTYPE/ENTITY in ASCII-compatible encodings and in UTF-16 (either byte order).
_DECL_RE = re.compile(rb"<!\s*(doctype|entity)", re.IGNORECASE)
_DECL_RE_16 = re.compile(
    rb"<\x00!\x00(\s\x00)*([dD]\x00[oO]\x00[cC]\x00|[eE]\x00[nN]\x00[tT]\x00)"
    rb"|\x00<\x00!(\x00\s)*\x00([dD]\x00[oO]\x00[cC]|[eE]\x00[nN]\x00[tT])"
)


@functools.lru_cache(maxsize=1)
def _parser() -> etree.XMLParser:
    """One locked-down parser per process (lxml parsers are reusable, not thread-safe)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _num(text: str | None) -> float | None:
    """VOC numbers: ints, floats ("12.5"), or junk/inf/nan (None)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text(el: etree._Element | None) -> str | None:
    """An element's text without surrounding whitespace (None when the element or its text is absent)."""
    return None if el is None or el.text is None else el.text.strip()


def _size_value(el: etree._Element | None) -> int:
    """A <size> number as a positive int, else 0."""
    v = _num(_text(el))
    return int(v) if v is not None and v > 0 else 0


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes")


def _unsafe_filename(name: str) -> str | None:
    """Why ``name`` must not be joined to the images folder, or None when it is safe."""
    if "\x00" in name:
        return "contains a NUL character"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "is an absolute path"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if any(p == ".." for p in re.split(r"[\\/]+", name)):
        return "contains '..'"
    return None


def image_problem(path: str, roots: Roots) -> str | None:
    """Why the image at ``path`` cannot be used (missing, not a regular file, outside), or None."""
    why = file_problem(path)
    if why:
        return why if why == "not found" else f"{why}; not read"
    return roots.refuse(path)


def find_image_by_stem(folder: str | os.PathLike, stem: str, roots: Roots | None = None) -> Path | None:
    """The usable image in ``folder`` named ``stem`` + a known suffix (any case), or None."""
    for suf in IMAGE_SUFFIXES:
        for s in (suf, suf.upper()):
            p = os.path.join(folder, f"{stem}{s}")
            if (roots is None and os.path.isfile(p)) or (roots is not None and image_problem(p, roots) is None):
                return Path(p)
    return None


def parse_voc(
    xml_path: str | os.PathLike,
    dataset_root: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    roots: Roots | None = None,
) -> Annotation:
    """Read one VOC XML; never raises for bad input (problems go into ``Annotation.problems``).

    ``images_dir`` is where ``<filename>`` is looked up (default: the XML's folder). The XML
    and its image are only read when their real paths lie inside ``roots`` (default: the
    dataset root).
    """
    name = os.fspath(xml_path)
    try:
        return _parse_voc(name, images_dir, roots or Roots.of(dataset_root))
    except Exception as e:  # last resort: one odd file must not stop a batch
        return _skipped(name, f"unreadable XML ({type(e).__name__}: {e})")


def _first(el: etree._Element, tag: str) -> etree._Element | None:
    """The first child ``tag`` (VOC files repeat or reorder tags; the first one counts)."""
    return el.find(tag)


def _skipped(name: str, why: str, filename: str = "") -> Annotation:
    """The Annotation of an XML whose image cannot be used."""
    return Annotation(name, None, filename, 0, 0, (), (Problem(name, why, SKIPPED_IMAGE),))


def _read_xml(name: str, roots: Roots) -> etree._Element | str:
    """The parsed root element, or why the file cannot be used."""
    outside = roots.refuse(name)
    if outside:
        return f"XML {outside}"
    try:
        data = read_file(name, MAX_XML_BYTES + 1)
    except OSError as e:
        return f"cannot read XML: {e.strerror or e}"
    if len(data) > MAX_XML_BYTES:
        return f"XML is larger than {MAX_XML_BYTES} bytes, too large for a VOC annotation"
    if not data.strip():
        return "XML file is empty"
    if _DECL_RE.search(data) or _DECL_RE_16.search(data):
        return "XML has a DOCTYPE or ENTITY declaration (refused: XXE / entity-expansion risk)"
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        return f"malformed XML: {getattr(e, 'msg', None) or e}"
    except (ValueError, etree.LxmlError) as e:
        return f"unreadable XML: {e}"
    if root.getroottree().docinfo.doctype:
        return "XML has a DOCTYPE declaration (refused)"
    if not isinstance(root.tag, str) or root.tag != "annotation":
        return f"not a Pascal VOC annotation (root element <{root.tag}>, expected <annotation>)"
    return root


def _find_image(name: str, filename: str, folder: str, roots: Roots) -> tuple[str | None, list[Problem], str]:
    """(image path or None, problems, why <filename> was not used) for one XML."""
    why_not = "not found"
    if filename:
        unsafe = _unsafe_filename(filename)
        if unsafe:
            why_not = f"{unsafe}; not read (never outside the dataset)"
        else:
            cand = os.path.join(folder, filename.replace("\\", "/"))
            why_not = image_problem(cand, roots) or ""
            if not why_not:
                return cand, [], ""
    label = repr(filename) if filename else "(empty)"
    stem = Path(name).stem
    fallback = find_image_by_stem(folder, stem, roots)
    if fallback is not None:
        fix = f"<filename> {label} {why_not}; using {fallback.name} (same name as the XML)"
        return str(fallback), [Problem(name, fix, FIXED)], ""
    try:
        where = Path(os.path.realpath(folder)).relative_to(roots.inside[0]).as_posix() + "/"
    except (ValueError, IndexError):
        where = folder
    where = "the dataset folder" if where == "./" else where
    return None, [], f"image not found: <filename> {label} {why_not}, and no image named {stem}.* in {where}"


def _parse_voc(name: str, images_dir: str | os.PathLike | None, roots: Roots) -> Annotation:
    root = _read_xml(name, roots)
    if isinstance(root, str):
        return _skipped(name, root)
    filename = _text(_first(root, "filename")) or ""
    folder = os.fspath(images_dir) if images_dir is not None else (os.path.dirname(name) or ".")
    image_path, problems, why = _find_image(name, filename, folder, roots)
    if image_path is None:
        return _skipped(name, why, filename)

    size_el = _first(root, "size")
    width = _size_value(None if size_el is None else _first(size_el, "width"))
    height = _size_value(None if size_el is None else _first(size_el, "height"))

    objects = root.findall("object")
    boxes: list[Box] = []
    for i, obj_el in enumerate(objects, start=1):
        where = f"object {i} of {len(objects)}"
        cls = _text(_first(obj_el, "name"))
        if not cls:
            problems.append(Problem(name, f"{where} has no <name>", DROPPED_BOX))
            continue
        bb_el = _first(obj_el, "bndbox")
        if bb_el is None:
            problems.append(Problem(name, f"{where} ({cls}) has no <bndbox>", DROPPED_BOX))
            continue
        texts = [_text(_first(bb_el, k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        coords = [_num(t) for t in texts]
        if None in coords:
            raw = dict(zip(("xmin", "ymin", "xmax", "ymax"), texts))
            problems.append(Problem(name, f"{where} ({cls}) has missing or non-numeric coordinates {raw}", DROPPED_BOX))
            continue
        boxes.append(
            Box(
                *coords, cls,
                difficult=_flag(_text(_first(obj_el, "difficult"))),
                truncated=_flag(_text(_first(obj_el, "truncated"))),
                pose=_text(_first(obj_el, "pose")) or "Unspecified",
                origin=where,
            )
        )
    return Annotation(name, image_path, filename, width, height, tuple(boxes), tuple(problems))


def _fmt(v: float) -> str:
    return f"{v:g}"


def apply_box_rules(
    boxes: Sequence[Box], width: int, height: int, report_name: str
) -> tuple[tuple[Box, ...], tuple[Problem, ...]]:
    """Clip boxes partly outside the image; drop reversed, zero-area and fully-outside ones.

    ``width``/``height`` are the real (stored) image size. Each decision is a Problem.
    """
    kept: list[Box] = []
    problems: list[Problem] = []
    for i, b in enumerate(boxes, start=1):
        if 0.0 <= b.xmin < b.xmax <= width and 0.0 <= b.ymin < b.ymax <= height:
            kept.append(b)  # the usual case: nothing to say, no message to format
            continue
        desc = f"{b.origin or f'box {i}'} ({b.name}) [{_fmt(b.xmin)}, {_fmt(b.ymin)}, {_fmt(b.xmax)}, {_fmt(b.ymax)}]"
        if b.xmin > b.xmax or b.ymin > b.ymax:
            problems.append(Problem(report_name, f"{desc} is reversed (xmin > xmax or ymin > ymax)", DROPPED_BOX))
            continue
        if b.xmin == b.xmax or b.ymin == b.ymax:
            problems.append(Problem(report_name, f"{desc} has zero area", DROPPED_BOX))
            continue
        cx0, cy0 = min(max(b.xmin, 0.0), width), min(max(b.ymin, 0.0), height)
        cx1, cy1 = min(max(b.xmax, 0.0), width), min(max(b.ymax, 0.0), height)
        if cx1 <= cx0 or cy1 <= cy0:
            problems.append(
                Problem(report_name, f"{desc} is entirely outside the {width}x{height} image", DROPPED_BOX)
            )
            continue
        if (cx0, cy0, cx1, cy1) != (b.xmin, b.ymin, b.xmax, b.ymax):
            problems.append(
                Problem(
                    report_name,
                    f"{desc} extends outside the {width}x{height} image; clipped to "
                    f"[{_fmt(cx0)}, {_fmt(cy0)}, {_fmt(cx1)}, {_fmt(cy1)}]",
                    FIXED,
                )
            )
            b = dataclasses.replace(b, xmin=cx0, ymin=cy0, xmax=cx1, ymax=cy1)
        kept.append(b)
    return tuple(kept), tuple(problems)


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def format_voc(
    *,
    image_path: str | os.PathLike,
    width: int,
    height: int,
    boxes: Sequence[Box],
    depth: int = 3,
    folder: str | None = None,
    exact: bool = False,
) -> bytes:
    """The XML bytes LabelImg would write for this image (tabs, integer pixel coordinates).

    ``exact``: the coordinates as given (to 0.01 px, integers stay integers) and the flags as
    given, instead of LabelImg's ``int()``, minimum 1 and edge-inferred ``truncated``: a
    converted dataset must read back as the boxes it was made from."""
    image_path = Path(image_path)
    root = etree.Element("annotation")
    _sub(root, "folder", folder if folder is not None else image_path.parent.name)
    _sub(root, "filename", image_path.name)
    _sub(root, "path", str(image_path))
    src = _sub(root, "source")
    _sub(src, "database", "Unknown")
    size = _sub(root, "size")
    _sub(size, "width", str(int(width)))
    _sub(size, "height", str(int(height)))
    _sub(size, "depth", str(int(depth)))
    _sub(root, "segmented", "0")
    for b in boxes:
        if exact:
            coords = tuple(_exact(v) for v in (b.xmin, b.ymin, b.xmax, b.ymax))
            truncated = b.truncated
        else:
            # LabelImg: int() of the coordinates, minimum 1 (a 0 broke old Faster R-CNN code).
            xmin, ymin = max(1, int(b.xmin)), max(1, int(b.ymin))
            xmax, ymax = int(b.xmax), int(b.ymax)
            coords = tuple(str(v) for v in (xmin, ymin, xmax, ymax))
            truncated = b.truncated or ymax == int(height) or ymin == 1 or xmax == int(width) or xmin == 1
        obj = _sub(root, "object")
        _sub(obj, "name", b.name)
        _sub(obj, "pose", b.pose or "Unspecified")
        _sub(obj, "truncated", "1" if truncated else "0")
        _sub(obj, "difficult", "1" if b.difficult else "0")
        bb = _sub(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), coords):
            _sub(bb, k, v)
    # LabelImg pretty-prints with lxml and turns each two-space indent into a tab.
    return etree.tostring(root, pretty_print=True, encoding="utf-8").replace(b"  ", b"\t")


def _exact(v: float) -> str:
    """A coordinate to 0.01 px, without trailing zeros ("12", "12.5", "12.25")."""
    text = f"{round(float(v), 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def write_voc(
    xml_path: str | os.PathLike,
    *,
    image_path: str | os.PathLike,
    width: int,
    height: int,
    boxes: Sequence[Box],
    depth: int = 3,
    folder: str | None = None,
    exact: bool = False,
) -> None:
    """Write a LabelImg-style VOC XML atomically (``<path>`` is ``image_path`` as given)."""
    atomic_write_bytes(
        xml_path,
        format_voc(image_path=image_path, width=width, height=height, boxes=boxes, depth=depth, folder=folder,
                   exact=exact),
    )


# --------------------------------------------------------------------------- a whole dataset (od.convert)

VOC_SPLITS = ("train", "val", "test")


def _xml_names(images) -> dict[str, str]:
    """image_name -> its XML's path under Annotations/ (without ``.xml``): the image's path without
    its suffix, or the whole name when two images differ only by suffix (``a.jpg``, ``a.png``)."""
    taken: set[str] = set()
    names: dict[str, str] = {}
    for name in sorted(im.image_name for im in images):
        stem = PurePosixPath(name).with_suffix("").as_posix()
        key = stem if stem not in taken else name
        taken.add(key)
        names[name] = key
    return names


def write_voc_dataset(images, classes: Sequence[str], out: Path, copy_image) -> list[Path]:
    """A VOCdevkit year folder under ``out`` that ``od.records`` reads back as these boxes and splits.

    ``Annotations/<image path without suffix>.xml`` (sub-folders of ``image_name`` mirrored),
    ``JPEGImages/<image_name>`` (placed by ``copy_image``), ``ImageSets/Main/{train,val,test}.txt``
    (one XML key per line). Rounding: coordinates to 0.01 px (integers stay integers; not
    LabelImg's ``int()``), ``difficult``/``truncated``/``pose`` kept. VOC has no crowd flag: a COCO
    ``iscrowd`` box is written as ``difficult`` (what VOC calls a region not to count), and no
    class list: a class without boxes is not in the output. ``classes`` is not used.
    """
    out = Path(out)
    keys = _xml_names(images)
    lists: dict[str, list[str]] = {s: [] for s in VOC_SPLITS}
    written: list[Path] = []
    for im in sorted(images, key=lambda i: i.image_name):
        key = keys[im.image_name]
        rel = PurePosixPath(im.image_name)
        boxes = [dataclasses.replace(b, difficult=True) if b.is_crowd else b for b in im.boxes]
        xml_path = out / "Annotations" / f"{key}.xml"
        write_voc(xml_path, image_path=f"JPEGImages/{im.image_name}", width=im.width, height=im.height,
                  boxes=boxes, folder=rel.parent.name or "JPEGImages", exact=True)
        written.append(xml_path)
        copy_image(im.image_path, out / "JPEGImages" / rel)
        lists.setdefault(im.split, []).append(key)
    for split, names in lists.items():
        path = out / "ImageSets" / "Main" / f"{split}.txt"
        atomic_write_bytes(path, "".join(f"{n}\n" for n in sorted(names)).encode("utf-8"))
        written.append(path)
    return written
