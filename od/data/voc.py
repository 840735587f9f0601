"""Pascal VOC XML: hardened parsing to ``Annotation``, box rules, and LabelImg-style writing.

Annotation files come from anywhere (downloads, colleagues, scrapers), so the parser
is locked down: no DTD, no entity expansion, no network, and a file with a DOCTYPE or
ENTITY declaration is refused before lxml ever sees it (XXE, billion laughs). The
``<filename>`` inside an XML is treated as untrusted too: it is only ever looked up
inside the dataset. Nothing here raises for bad input; every finding is a ``Problem``.
"""

from __future__ import annotations

import errno
import functools
import math
from math import isfinite
import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

from lxml import etree

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Annotation, Box, Problem
from od.io.files import atomic_write_bytes, canonical_path, read_file

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
    """VOC numbers: ints, floats ("12.5"), or junk (None)."""
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _size_value(el: etree._Element | None) -> int:
    """A <size> number as a positive int, else 0 (``int(_num(...))``, usually in one ``float``)."""
    if el is None or el.text is None:
        return 0
    try:
        v: float | None = float(el.text)  # float() drops the surrounding whitespace itself...
    except ValueError:  # ...except the few str.strip() also drops: decide exactly as _num does
        v = _num(el.text.strip())
        if v is None:
            return 0
    return int(v) if 0 < v < math.inf else 0  # nan fails both comparisons


def _stripped(el: etree._Element | None) -> str | None:
    """An element's text without surrounding whitespace (None when the element or its text is absent)."""
    if el is None:
        return None
    t = el.text
    return None if t is None else t.strip()


_TRUE_FLAGS = ("1", "true", "yes")
_FLAGS = {"0": False, "1": True, None: False}  # what LabelImg writes: no need to normalise


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in _TRUE_FLAGS


def _unsafe_filename(name: str) -> str | None:
    """Why ``name`` must not be joined to the images folder, or None when it is safe."""
    if not ("/" in name or "\\" in name or ":" in name or "\x00" in name):
        # A single path component with no drive letter: never absolute (the usual case,
        # decided without building three pure paths).
        return "contains '..'" if name == ".." else None
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "is an absolute path"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    parts = re.split(r"[\\/]+", name)
    if any(p == ".." for p in parts):
        return "contains '..'"
    if "\x00" in name:
        return "contains a NUL character"
    return None


def _inside(path: str | Path, roots: Sequence[str]) -> bool:
    """True when ``path``, symlinks followed, lies inside one of the resolved ``roots``."""
    rp = os.path.realpath(path)
    return any(rp == r or rp.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


@functools.lru_cache(maxsize=4096)
def _norm_dir(path: str) -> str:
    """``str(Path(path))`` (cached: the images folder is the same for a whole dataset)."""
    return str(Path(path))


@functools.lru_cache(maxsize=4096)
def _folder_facts(dataset_root: str, folder: str) -> tuple[tuple[str, str], str]:
    """((resolved dataset root, resolved ``folder``), what a plain file name is appended to).

    Cached: every XML of a dataset shares a handful of folders, and ``realpath`` costs
    more than parsing a small XML.
    """
    prefix = "" if folder == "." else os.path.join(folder, "")
    return (os.path.realpath(dataset_root), os.path.realpath(folder)), prefix


_IGNORED_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _file_and_link(path: str | Path) -> tuple[bool, bool]:
    """(``Path.is_file()``, ``os.path.islink()``) with one ``lstat`` for a regular file."""
    try:
        st = os.lstat(path)
    except OSError as e:
        if e.errno not in _IGNORED_ERRNOS:  # as Path.is_file: unexpected errors propagate
            raise
        return False, False
    except ValueError:
        return False, False
    if stat.S_ISLNK(st.st_mode):
        return Path(path).is_file(), True
    return stat.S_ISREG(st.st_mode), False


def find_image_by_stem(folder: Path, stem: str) -> Path | None:
    """The image in ``folder`` named ``stem`` + a known suffix (any case), or None."""
    for suf in IMAGE_SUFFIXES:
        for s in (suf, suf.upper()):
            p = folder / f"{stem}{s}"
            if p.is_file():
                return p
    return None


def parse_voc(
    xml_path: str | os.PathLike,
    dataset_root: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
) -> Annotation:
    """Read one VOC XML; never raises for bad input (problems go into ``Annotation.problems``).

    ``images_dir`` is where ``<filename>`` is looked up (default: the XML's folder). The
    image is only ever taken from inside ``dataset_root`` or ``images_dir``.
    """
    try:
        return _parse_voc(canonical_path(xml_path), dataset_root, images_dir)
    except Exception as e:  # last resort: one odd file must not stop a batch
        name = str(xml_path)
        return Annotation(name, None, "", 0, 0, (), (Problem(name, f"unreadable XML ({type(e).__name__}: {e})",
                                                              SKIPPED_IMAGE),))


_SIZE_TAGS = {"width": 0, "height": 1}
_OBJECT_TAGS = {"name": 0, "bndbox": 1, "difficult": 2, "truncated": 3, "pose": 4}
_BOX_TAGS = {"xmin": 0, "ymin": 1, "xmax": 2, "ymax": 3}


def _first_children(el: etree._Element, tags: dict[str, int]) -> list:
    """The first child element of each tag in ``tags`` (None where absent), in ``tags``' order.

    One pass over the children: VOC files repeat or reorder tags, and the first one counts.
    """
    found = [None] * len(tags)
    get = tags.get
    for c in el:
        i = get(c.tag)  # comments/PIs were removed by the parser; their tag is not a str anyway
        if i is not None and found[i] is None:
            found[i] = c
    return found


def _skipped(name: str, why: str, filename: str = "") -> Annotation:
    """The Annotation of an XML whose image cannot be used."""
    return Annotation(name, None, filename, 0, 0, (), (Problem(name, why, SKIPPED_IMAGE),))


def _parse_voc(name: str, dataset_root: str | os.PathLike, images_dir: str | os.PathLike | None) -> Annotation:
    try:
        data = read_file(name, MAX_XML_BYTES + 1)
    except OSError as e:
        return _skipped(name, f"cannot read XML: {e.strerror or e}")
    if len(data) > MAX_XML_BYTES:
        return _skipped(name, f"XML is larger than {MAX_XML_BYTES} bytes, too large for a VOC annotation")
    if not data or data.isspace():  # == not data.strip(), without the copy
        return _skipped(name, "XML file is empty")
    # "!" must occur for an ASCII-family declaration, NUL bytes for a UTF-16 one: memchr-speed
    # pre-checks spare the regexes on ordinary files (same verdicts).
    if (b"!" in data and b"<!" in data and _DECL_RE.search(data)) or (b"\x00" in data and _DECL_RE_16.search(data)):
        return _skipped(name, "XML has a DOCTYPE or ENTITY declaration (refused: XXE / entity-expansion risk)")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        return _skipped(name, f"malformed XML: {getattr(e, 'msg', None) or e}")
    except (ValueError, etree.LxmlError) as e:
        return _skipped(name, f"unreadable XML: {e}")
    if root.getroottree().docinfo.doctype:
        return _skipped(name, "XML has a DOCTYPE declaration (refused)")
    if not isinstance(root.tag, str) or root.tag != "annotation":
        return _skipped(name, f"not a Pascal VOC annotation (root element <{root.tag}>, expected <annotation>)")

    # One pass over the children (the first <filename>/<size> count, every <object>).
    filename_el = size_el = None
    objects = []
    for c in root:
        t = c.tag
        if t == "object":
            objects.append(c)
        elif t == "filename":
            if filename_el is None:
                filename_el = c
        elif t == "size":
            if size_el is None:
                size_el = c
    filename = _stripped(filename_el) or ""
    folder_s = _norm_dir(os.fspath(images_dir)) if images_dir is not None else (os.path.dirname(name) or ".")
    roots, prefix = _folder_facts(os.fspath(dataset_root), folder_s)

    image_path: str | Path | None = None
    problems: list[Problem] = []
    why_not = "not found"  # why <filename> itself was not used
    if filename:
        unsafe = _unsafe_filename(filename)
        if unsafe:
            why_not = f"{unsafe}; not read (never outside the dataset)"
        else:
            rel = filename.replace("\\", "/")
            plain = "/" not in rel and rel != "." and rel != ".."
            # a plain name: == str(Path(folder) / rel), without the Path
            cand: str | Path = prefix + rel if plain else Path(folder_s) / rel
            # A plain name in a resolved folder is inside unless it is itself a symlink.
            is_file, is_link = _file_and_link(cand)
            if is_file and (("/" not in rel and not is_link) or _inside(cand, roots)):
                image_path = cand
            elif is_file:
                why_not = "resolves outside the dataset; not read"
    if image_path is None:
        shown = repr(filename) if filename else "(empty)"
        folder = Path(folder_s)
        stem = Path(name).stem
        fallback = find_image_by_stem(folder, stem)
        if fallback is not None and _inside(fallback, roots):
            image_path = fallback
            problems.append(
                Problem(name, f"<filename> {shown} {why_not}; using {fallback.name} (same name as the XML)", FIXED)
            )
        else:
            try:
                where = Path(roots[1]).relative_to(roots[0]).as_posix() + "/"
            except ValueError:
                where = str(folder)
            where = "the dataset folder" if where == "./" else where
            return _skipped(
                name, f"image not found: <filename> {shown} {why_not}, and no image named {stem}.* in {where}", filename
            )

    width = height = 0
    if size_el is not None:
        w_el, h_el = _first_children(size_el, _SIZE_TAGS)
        width, height = _size_value(w_el), _size_value(h_el)

    boxes: list[Box] = []
    for i, obj_el in enumerate(objects, start=1):
        name_el, bb_el, diff_el, trunc_el, pose_el = _first_children(obj_el, _OBJECT_TAGS)
        cls = None if name_el is None else name_el.text
        if cls:
            cls = cls.strip()
        if not cls:
            problems.append(Problem(name, f"object {i} has no <name>", DROPPED_BOX))
            continue
        if bb_el is None:
            problems.append(Problem(name, f"object {i} ({cls}) has no <bndbox>", DROPPED_BOX))
            continue
        x0, y0, x1, y1 = _first_children(bb_el, _BOX_TAGS)
        try:  # the usual case: four finite numbers (float() ignores the surrounding whitespace too)
            xmin, ymin, xmax, ymax = float(x0.text), float(y0.text), float(x1.text), float(y1.text)
            ok = isfinite(xmin + ymin + xmax + ymax)  # inf/nan in any of them shows in the sum
        except (AttributeError, TypeError, ValueError):  # an absent element or text, junk text
            ok = False
        if not ok:  # decide (and word the problem) number by number
            texts = (_stripped(x0), _stripped(y0), _stripped(x1), _stripped(y1))
            xmin, ymin, xmax, ymax = coords = (_num(texts[0]), _num(texts[1]), _num(texts[2]), _num(texts[3]))
            if None in coords:
                raw = dict(zip(("xmin", "ymin", "xmax", "ymax"), texts))
                problems.append(
                    Problem(name, f"object {i} ({cls}) has missing or non-numeric coordinates {raw}", DROPPED_BOX)
                )
                continue
        difficult = None if diff_el is None else diff_el.text
        truncated = None if trunc_el is None else trunc_el.text
        pose = None if pose_el is None else pose_el.text
        boxes.append(
            Box(
                xmin, ymin, xmax, ymax, cls,
                _FLAGS[difficult] if difficult in _FLAGS else _flag(difficult),
                _FLAGS[truncated] if truncated in _FLAGS else _flag(truncated),
                (pose.strip() if pose else None) or "Unspecified",
            )
        )

    return Annotation(name, str(image_path), filename, width, height, tuple(boxes), tuple(problems))


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
        desc = f"box {i} ({b.name}) [{_fmt(b.xmin)}, {_fmt(b.ymin)}, {_fmt(b.xmax)}, {_fmt(b.ymax)}]"
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
            b = Box(cx0, cy0, cx1, cy1, name=b.name, difficult=b.difficult, truncated=b.truncated, pose=b.pose)
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
) -> bytes:
    """The XML bytes LabelImg would write for this image (tabs, integer pixel coordinates)."""
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
        # LabelImg: int() of the coordinates, minimum 1 (a 0 broke old Faster R-CNN code).
        xmin, ymin = max(1, int(b.xmin)), max(1, int(b.ymin))
        xmax, ymax = int(b.xmax), int(b.ymax)
        obj = _sub(root, "object")
        _sub(obj, "name", b.name)
        _sub(obj, "pose", b.pose or "Unspecified")
        truncated = b.truncated or ymax == int(height) or ymin == 1 or xmax == int(width) or xmin == 1
        _sub(obj, "truncated", "1" if truncated else "0")
        _sub(obj, "difficult", "1" if b.difficult else "0")
        bb = _sub(obj, "bndbox")
        for k, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            _sub(bb, k, str(v))
    # LabelImg pretty-prints with lxml and turns each two-space indent into a tab.
    return etree.tostring(root, pretty_print=True, encoding="utf-8").replace(b"  ", b"\t")


def write_voc(
    xml_path: str | os.PathLike,
    *,
    image_path: str | os.PathLike,
    width: int,
    height: int,
    boxes: Sequence[Box],
    depth: int = 3,
    folder: str | None = None,
) -> None:
    """Write a LabelImg-style VOC XML atomically (``<path>`` is ``image_path`` as given)."""
    atomic_write_bytes(
        xml_path,
        format_voc(image_path=image_path, width=width, height=height, boxes=boxes, depth=depth, folder=folder),
    )
