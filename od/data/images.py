"""Open and normalise one image: real size, EXIF orientation, colour mode, JPEG bytes to store.

The stored image must show the boxes on the same pixels the labelling tool showed, and
every record must hold a plain RGB JPEG that TensorFlow decodes the same way everywhere
(TF ignores EXIF). Pillow reads every header, and every image is decoded once before it is
stored, so nothing undecodable reaches a record. The common case, an RGB JPEG without
rotation, is then stored byte for byte; its check decode is DCT-scaled (1/8 size: every scan
is still read, the inverse transform is cheaper): 0.9 ms against 1.4 ms for a full decode
on the raccoon photos (~180k pixels). Not caught: scan data that stops at an end marker
before the last row (e.g. a header patched to claim more rows); libjpeg fills the rest and
only warns, Pillow drops the warning, and TF decodes such a file the same way.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from od.core import FIXED, SKIPPED_IMAGE, Problem
from od.io.files import NotRegularFileError, canonical_path, read_file

JPEG_QUALITY = 95
MAX_PIXELS = 100_000_000  # header size limit, checked before any pixel is decoded
MIN_ROWS_DECODED = 0.9  # a truncated JPEG is kept (filled, re-encoded) when this share of rows decodes
ORIENTATION_TAG = 0x0112
_JPEG = ("JPEG", "MPO")  # MPO: a JPEG with more pictures after the first; TF decodes the first
_ROTATED_90 = {5, 6, 7, 8}  # orientations whose display swaps width and height
_KIND = {"L": "grayscale", "LA": "grayscale+alpha", "1": "1-bit", "P": "palette", "PA": "palette+alpha",
         "RGBA": "RGBA", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I;16B": "16-bit grayscale",
         "I;16L": "16-bit grayscale", "I": "32-bit integer", "F": "floating point", "YCbCr": "YCbCr",
         "LAB": "Lab", "HSV": "HSV", "RGBX": "RGBX", "La": "grayscale+alpha", "RGBa": "RGBA"}


class ImageError(Exception):
    """An image that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class PreparedImage:
    """What ``records`` stores for one image (``data`` None = skip it) and the decisions taken."""

    data: bytes | None
    width: int
    height: int
    fast_path: bool  # True: ``data`` is the file's own bytes
    problems: tuple[Problem, ...]


class _Truncated(Exception):
    """Pillow ran out of data while decoding (the file was cut short)."""


_SWITCHES = threading.RLock()


@contextlib.contextmanager
def _pillow(name: str, value):
    """Set one of Pillow's process-wide switches for a call, then restore it.

    The lock keeps threads (detect loads images in the background) from interleaving a set
    with another's restore, which could leave the switch changed for good.
    """
    module = Image if name == "MAX_IMAGE_PIXELS" else ImageFile
    with _SWITCHES:
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            yield
        finally:
            setattr(module, name, saved)


def _read(path: str | os.PathLike) -> bytes:
    """The whole file, with the failures worded for an image (FIFOs and devices refused, never waited on)."""
    p = canonical_path(path)
    try:
        data = read_file(p)
    except FileNotFoundError:
        raise ImageError(f"{p}: image file not found") from None
    except NotRegularFileError as e:
        raise ImageError(f"{p}: {e.strerror}") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read image: {e.strerror or e}") from None
    if not data:
        raise ImageError(f"{p}: image file is empty (0 bytes)")
    return data


def _open(data: bytes, path: str | os.PathLike) -> Image.Image:
    """Pillow image over ``data``: header parsed, size checked against MAX_PIXELS, no pixels decoded.

    Pillow's own bomb check is off for the header only, so that od's limit decides and the
    message can name the size; it stays on while decoding (GIF frames, TIFF tiles can grow).
    """
    try:
        with _pillow("MAX_IMAGE_PIXELS", None):
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise ImageError(f"{path}: corrupt image header ({e})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{path}: header claims {w}x{h} = {w * h / 1e6:.4g} megapixels, "
                         f"over od's limit of {MAX_PIXELS / 1e6:.4g} megapixels")
    return im


def _load(im: Image.Image, path: str | os.PathLike) -> None:
    """Decode the pixels; raises _Truncated when the data ends early, ImageError for other damage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: image too large ({e})") from None
    except OSError as e:
        if str(e).startswith("image file is truncated"):
            raise _Truncated(str(e)) from None
        raise ImageError(f"{path}: corrupt image data ({e})") from None
    except (SyntaxError, ValueError, struct.error, EOFError) as e:
        raise ImageError(f"{path}: truncated or corrupt image data ({e})") from None


def _missing_rows(a: np.ndarray) -> int:
    """Bottom rows of a truncated baseline JPEG that libjpeg filled instead of decoding.

    libjpeg fills the blocks after the cut with flat copies of the last decoded block, so
    the filled rows are entirely the image's last pixel; the partly decoded MCU row above
    them (real blocks on the left, fill on the right) ends in that pixel and counts too,
    up to 16 rows. On the 200 raccoon photos cut at 99.9/98/90/60/30 % of their bytes this
    matched the first row that differs from the whole file's decode to within one MCU row
    (median error 0 rows; 4:2:0 files: 2 rows, chroma blending above the cut). Real rows of
    exactly that colour just above the cut count as missing too: errors lean towards "missing".
    """
    a = a.reshape(a.shape[0], a.shape[1], -1)
    fill = a[-1, -1]
    flat = (a == fill).all(axis=(1, 2))[::-1]
    n = len(flat) if flat.all() else int(np.argmin(flat))
    ends = (a[: a.shape[0] - n, -1] == fill).all(axis=1)[::-1]
    k = len(ends) if ends.all() else int(np.argmin(ends))
    return n + min(k, 16)


def _load_truncated(data: bytes, im: Image.Image, path: str | os.PathLike) -> tuple[Image.Image, str]:
    """A JPEG cut short: (decoded image, note) when at least MIN_ROWS_DECODED of its rows decode.

    Only baseline JPEGs lose whole rows at the bottom, which can be counted. A progressive
    JPEG cut short decodes to a full-size image that lacks its later scans everywhere (on the
    raccoon photos cut at 60 %: 32 dB PSNR, some all black), and no row count says how much
    is lost, so it is skipped; so are other formats.
    """
    if im.format not in _JPEG:
        raise ImageError(f"{path}: truncated {im.format} image (the file ends before its pixel data does)")
    if im.info.get("progressive"):
        raise ImageError(f"{path}: truncated progressive JPEG (its later scans are missing across "
                         "the whole image, and how much is lost cannot be measured)")
    with _pillow("LOAD_TRUNCATED_IMAGES", True):
        im = _open(data, path)
        _load(im, path)
    h = im.height
    missing = _missing_rows(np.asarray(im))
    if h - missing < MIN_ROWS_DECODED * h:
        raise ImageError(f"{path}: truncated JPEG: only {100 * (h - missing) // h}% of its rows decode "
                         f"(od keeps it from {MIN_ROWS_DECODED:.0%})")
    return im, (f"truncated JPEG: the bottom {missing} of {h} rows ({math.ceil(100 * missing / h)}%) "
                f"were missing and are filled with a flat colour; re-encoded (quality {JPEG_QUALITY})")


def _orientation(im: Image.Image) -> tuple[int, object]:
    """(usable orientation 1..8, raw tag value); invalid or absent -> 1."""
    try:
        raw = im.getexif().get(ORIENTATION_TAG)
    except Exception:  # a broken EXIF block must not lose the image; Pillow raises many types here
        return 1, "unreadable"
    if raw is None:
        return 1, None
    if isinstance(raw, int) and 1 <= raw <= 8:
        return raw, raw
    return 1, raw


def _rotate_decision(orientation: int, raw_size: tuple[int, int], xs: tuple[int, ...] | None) -> tuple[bool, str]:
    """(rotate the pixels?, note) for an EXIF rotation: the XML size says which frame the boxes are in."""
    raw_w, raw_h = raw_size
    disp = (raw_h, raw_w) if orientation in _ROTATED_90 else (raw_w, raw_h)
    head = f"EXIF orientation {orientation}"
    if xs is not None and xs == disp and xs != raw_size:
        return True, f"{head}: XML size {xs[0]}x{xs[1]} matches the rotated image; pixels rotated and re-encoded"
    if xs is not None and xs == raw_size and xs != disp:
        return False, (f"{head}: XML size {xs[0]}x{xs[1]} matches the raw pixels; kept them and dropped "
                       "the orientation tag (re-encoded)")
    why = ("the XML has no <size>" if xs is None else
           f"XML size {xs[0]}x{xs[1]} fits both frames" if xs == disp else
           f"XML size {xs[0]}x{xs[1]} matches neither {raw_w}x{raw_h} nor {disp[0]}x{disp[1]}")
    return True, (f"{head}: {why}; assumed the boxes were drawn on the image as viewers show it "
                  "(rotated); pixels rotated and re-encoded")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (alpha composited on white, 16-bit scaled, not clipped)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _encode_jpeg(im: Image.Image) -> bytes:
    """Baseline JPEG, no EXIF (so no viewer rotates it again); the same pixels give the same bytes."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _xml_size(xml_size) -> tuple[int, ...] | None:
    """The XML's size as ints, None when it has none (absent or a zero)."""
    return tuple(int(v) for v in xml_size) if xml_size and all(xml_size) else None


def prepare_image(
    path: str | os.PathLike, xml_size: tuple[int, int] | None, report_name: str
) -> PreparedImage:
    """Apply the image rules to one file; never raises for bad input.

    ``xml_size`` is the XML's (width, height) or None/(0, 0) when it has none; it only
    decides which frame the boxes were drawn in when EXIF rotates the image. The
    returned width/height are those of the stored JPEG.
    """
    problems: list[Problem] = []
    try:
        data = _read(path)
        return _prepare(data, path, _xml_size(xml_size), report_name, problems)
    except ImageError as e:
        problems.append(Problem(report_name, str(e).removeprefix(f"{path}: "), SKIPPED_IMAGE))
    except MemoryError:
        problems.append(Problem(report_name, "image too large to convert (out of memory)", SKIPPED_IMAGE))
    except Exception as e:  # a crafted/corrupt file can make Pillow raise anything: skip it, keep the batch
        problems.append(Problem(report_name, f"unreadable image ({type(e).__name__}: {e})", SKIPPED_IMAGE))
    return PreparedImage(None, 0, 0, False, tuple(problems))


def _prepare(
    data: bytes, path: str | os.PathLike, xs: tuple[int, ...] | None, report_name: str, problems: list[Problem]
) -> PreparedImage:
    """``prepare_image`` once the bytes are read: decide, decode once, store (notes go into ``problems``)."""

    def note(msg: str) -> None:
        problems.append(Problem(report_name, msg, FIXED))

    im = _open(data, path)
    raw_size = im.size
    fmt = im.format or "unknown"
    orientation, raw_orient = _orientation(im)
    if raw_orient is not None and raw_orient != orientation:
        # stored as is when nothing else changes: TF ignores EXIF and viewers ignore invalid values
        note(f"invalid EXIF orientation {raw_orient!r} treated as 1 (no rotation)")
    rotate = False
    if orientation != 1:
        rotate, msg = _rotate_decision(orientation, raw_size, xs)
        note(msg)
    copy = fmt in _JPEG and im.mode == "RGB" and orientation == 1
    try:
        if copy:  # pixels only checked: a 1/8-scale decode reads all the data for less work
            im.draft("RGB", (max(1, raw_size[0] // 8), max(1, raw_size[1] // 8)))
        _load(im, path)
    except _Truncated:
        im, msg = _load_truncated(data, im, path)
        note(msg)
        copy = False

    if copy:
        stored, (width, height) = data, raw_size
    else:
        if getattr(im, "n_frames", 1) > 1:
            note(f"{fmt} has {im.n_frames} frames; the first one is used")
        src_mode = im.mode
        if rotate:
            im = ImageOps.exif_transpose(im)
        rgb = _to_rgb(im)
        if src_mode != "RGB" or fmt not in _JPEG:
            kind = _KIND.get(src_mode, src_mode)
            what = f"{kind} {fmt}" if src_mode != "RGB" else fmt
            note(f"{what} image (mode {src_mode}) converted to RGB JPEG (quality {JPEG_QUALITY})")
        stored = _encode_jpeg(rgb)
        width, height = rgb.size
    if xs is not None and xs != (width, height) and orientation == 1:
        note(f"XML <size> {xs[0]}x{xs[1]} differs from the real image {width}x{height}; using the real size")
    return PreparedImage(stored, width, height, copy, tuple(problems))


def open_image_rgb(path: str | os.PathLike) -> Image.Image:
    """Any supported image as 8-bit RGB, EXIF orientation applied (as viewers show it).

    Invalid orientation values are treated as 1. Raises ImageError naming the file for
    missing, empty, truncated, over-limit or non-image files, and for anything that is not a
    regular file (read without blocking: a FIFO never hangs detect).
    """
    data = _read(path)
    im = _open(data, path)
    try:
        _load(im, path)
    except _Truncated as e:
        raise ImageError(f"{path}: truncated image data ({e})") from None
    orientation, _ = _orientation(im)
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    return _to_rgb(im)
