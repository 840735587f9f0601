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
import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

from lxml import etree

from od.types import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Annotation, Box, Problem
from od.util import atomic_write_bytes

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


def _kids(el: etree._Element | None) -> dict[str, etree._Element]:
    """First child element per tag (one pass; much cheaper than repeated ``find``)."""
    out: dict[str, etree._Element] = {}
    if el is not None:
        for c in el:
            t = c.tag
            if isinstance(t, str) and t not in out:
                out[t] = c
    return out


def _text(kids: dict[str, etree._Element], tag: str) -> str | None:
    child = kids.get(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _num(text: str | None) -> float | None:
    """VOC numbers: ints, floats ("12.5"), or junk (None)."""
    if text is None or text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes")


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


@functools.lru_cache(maxsize=4096)
def _real_dir(path: str) -> str:
    """Resolved folder (cached: every XML of a dataset shares a handful of folders)."""
    return os.path.realpath(path)


def _inside(path: Path, roots: Sequence[str]) -> bool:
    """True when ``path``, symlinks followed, lies inside one of the resolved ``roots``."""
    rp = os.path.realpath(path)
    return any(rp == r or rp.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


@functools.lru_cache(maxsize=4096)
def _norm_dir(path: str) -> str:
    """``str(Path(path))`` (cached: the images folder is the same for a whole dataset)."""
    return str(Path(path))


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
        return _parse_voc(_norm_path(xml_path), dataset_root, images_dir)
    except Exception as e:  # last resort: one odd file must not stop a batch
        name = str(xml_path)
        return Annotation(name, None, "", 0, 0, (), (Problem(name, f"unreadable XML ({type(e).__name__}: {e})",
                                                              SKIPPED_IMAGE),))


def _read_capped(path: str, limit: int) -> bytes:
    """The first ``limit`` bytes of ``path`` (all of it when smaller), like ``f.read(limit)``.

    Sized from ``fstat`` with raw ``os`` calls: ``f.read(8 MB)`` allocates 8 MB for every
    few-KB annotation, and a buffered file object costs more than the read itself.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        want = min(os.fstat(fd).st_size, limit)
        chunks = []
        got = 0
        while got < limit:
            # size + 1 bytes first (so one more read sees EOF), then more if the file grew
            b = os.read(fd, min(limit - got, want - got + 1 if got <= want else 1 << 20))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _norm_path(path: str | os.PathLike) -> str:
    """``str(Path(path))``, without building a Path when ``path`` is already in that form."""
    if (
        os.name == "posix" and isinstance(path, str) and path and path != "." and "//" not in path
        and "/./" not in path and not path.startswith("./") and not path.endswith(("/", "/."))
    ):
        return path
    return str(Path(path))


def _parse_voc(name: str, dataset_root: str | os.PathLike, images_dir: str | os.PathLike | None) -> Annotation:
    xml_path = name
    problems: list[Problem] = []

    def skipped(why: str, filename: str = "") -> Annotation:
        return Annotation(name, None, filename, 0, 0, (), (*problems, Problem(name, why, SKIPPED_IMAGE)))

    try:
        data = _read_capped(xml_path, MAX_XML_BYTES + 1)
        if len(data) > MAX_XML_BYTES:
            return skipped(f"XML is larger than {MAX_XML_BYTES} bytes, too large for a VOC annotation")
    except OSError as e:
        return skipped(f"cannot read XML: {e.strerror or e}")
    if not data.strip():
        return skipped("XML file is empty")
    # "<!" must occur for an ASCII-family declaration, NUL bytes for a UTF-16 one: memchr-speed
    # pre-checks spare the regexes on ordinary files (same verdicts).
    if (b"<!" in data and _DECL_RE.search(data)) or (b"\x00" in data and _DECL_RE_16.search(data)):
        return skipped("XML has a DOCTYPE or ENTITY declaration (refused: XXE / entity-expansion risk)")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        return skipped(f"malformed XML: {getattr(e, 'msg', None) or e}")
    except (ValueError, etree.LxmlError) as e:
        return skipped(f"unreadable XML: {e}")
    if root.getroottree().docinfo.doctype:
        return skipped("XML has a DOCTYPE declaration (refused)")
    if not isinstance(root.tag, str) or root.tag != "annotation":
        return skipped(f"not a Pascal VOC annotation (root element <{root.tag}>, expected <annotation>)")

    top = _kids(root)
    filename = _text(top, "filename") or ""
    folder_s = _norm_dir(os.fspath(images_dir)) if images_dir is not None else (os.path.dirname(name) or ".")
    roots = [_real_dir(os.fspath(dataset_root)), _real_dir(folder_s)]

    image_path: Path | None = None
    shown = repr(filename) if filename else "(empty)"
    why_not = "not found"  # why <filename> itself was not used
    if filename:
        unsafe = _unsafe_filename(filename)
        if unsafe:
            why_not = f"{unsafe}; not read (never outside the dataset)"
        else:
            rel = filename.replace("\\", "/")
            if "/" not in rel and rel not in (".", ".."):
                # == str(Path(folder) / rel), without the Path
                cand: str | Path = os.path.join(folder_s, rel) if folder_s != "." else rel
            else:
                cand = Path(folder_s) / rel
            # A plain name in a resolved folder is inside unless it is itself a symlink.
            is_file, is_link = _file_and_link(cand)
            plain = "/" not in rel and not is_link
            if is_file and (plain or _inside(cand, roots)):
                image_path = cand
            elif is_file:
                why_not = "resolves outside the dataset; not read"
    if image_path is None:
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
            return skipped(
                f"image not found: <filename> {shown} {why_not}, and no image named {stem}.* in {where}",
                filename,
            )

    sz = _kids(top.get("size"))
    w = _num(_text(sz, "width"))
    h = _num(_text(sz, "height"))
    width = int(w) if w and w > 0 else 0
    height = int(h) if h and h > 0 else 0

    boxes: list[Box] = []
    objects = [c for c in root if c.tag == "object"]
    for i, obj_el in enumerate(objects, start=1):
        obj = _kids(obj_el)
        cls = _text(obj, "name")
        if not cls:
            problems.append(Problem(name, f"object {i} has no <name>", DROPPED_BOX))
            continue
        bb_el = obj.get("bndbox")
        bb = _kids(bb_el)
        if bb_el is None:
            problems.append(Problem(name, f"object {i} ({cls}) has no <bndbox>", DROPPED_BOX))
            continue
        coords = [_num(_text(bb, k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            raw = {k: _text(bb, k) for k in ("xmin", "ymin", "xmax", "ymax")}
            problems.append(Problem(name, f"object {i} ({cls}) has missing or non-numeric coordinates {raw}", DROPPED_BOX))
            continue
        xmin, ymin, xmax, ymax = coords  # type: ignore[misc]
        boxes.append(
            Box(
                xmin, ymin, xmax, ymax,
                name=cls,
                difficult=_flag(_text(obj, "difficult")),
                truncated=_flag(_text(obj, "truncated")),
                pose=_text(obj, "pose") or "Unspecified",
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
