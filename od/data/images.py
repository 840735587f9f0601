"""Open and normalise one image: real size, EXIF orientation, colour mode, JPEG bytes to store.

The stored image must show the boxes on the same pixels the labelling tool showed, and
every record must hold a plain RGB JPEG that TensorFlow decodes the same way everywhere
(TF ignores EXIF). The common case, an RGB JPEG without rotation, is copied byte for
byte without decoding its pixels, so conversion runs close to raw disk speed.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from od.core import FIXED, SKIPPED_IMAGE, Problem
from od.io.files import canonical_path, read_file

JPEG_QUALITY = 95
ORIENTATION_TAG = 0x0112
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
    fast_path: bool
    problems: tuple[Problem, ...]


def _read(path: str | os.PathLike) -> bytes:
    """The whole file, with the failures worded for an image."""
    p = canonical_path(path)
    try:
        data = read_file(p)
    except FileNotFoundError:
        raise ImageError(f"{p}: image file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{p}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read image: {e.strerror or e}") from None
    if not data:
        raise ImageError(f"{p}: image file is empty (0 bytes)")
    return data


def _open(data: bytes, path: str | os.PathLike) -> Image.Image:
    """Pillow image over ``data`` (header parsed only; pixels not decoded yet)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise ImageError(f"{path}: corrupt image header ({e})") from None


def _load_pixels(im: Image.Image, path: str | os.PathLike) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise ImageError(f"{path}: truncated or corrupt image data ({e})") from None


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
    if mode == "RGB":
        return im
    return im.convert("RGB")


def _encode_jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class _JpegHeader(NamedTuple):
    """What the JPEG markers before the first scan say (no pixels decoded)."""

    sof: int  # SOF marker (0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...)
    precision: int
    width: int
    height: int
    components: int
    orientation: int | None  # raw EXIF orientation value, None when absent
    orientation_at: tuple[int, int, str] | None  # (byte offset of the value, TIFF type, endian) for patching


# What the byte after 0xFF means to the header walk (a table: one lookup per marker).
_SEGMENT, _SOF, _APP1, _FILL, _STANDALONE, _STOP = range(6)  # kinds >= _FILL have no length
_kinds = bytearray(256)  # _SEGMENT: a length-prefixed segment to step over (tables, APPn, COM)
_kinds[0xFF] = _FILL
for _m in (*range(0xD0, 0xD8), 0x01):  # RSTn, TEM
    _kinds[_m] = _STANDALONE
for _m in (0xDA, 0xD9):  # start of scan / end of image
    _kinds[_m] = _STOP
for _m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
    _kinds[_m] = _SOF
_kinds[0xE1] = _APP1
_MARKER_KIND = bytes(_kinds)
del _kinds, _m


def _exif_orientation(data: bytes, seg: int, seg_end: int) -> tuple[int, tuple[int, int, str]] | None:
    """(value, (offset, type, endian)) of IFD0's orientation in the APP1 segment at ``seg``."""
    t = seg + 6  # TIFF header after b"Exif\0\0"
    order = data[t : t + 2]
    e = "<" if order == b"II" else ">" if order == b"MM" else None
    if e is None:
        return None
    (ifd,) = struct.unpack(e + "I", data[t + 4 : t + 8])
    (count,) = struct.unpack(e + "H", data[t + ifd : t + ifd + 2])
    for k in range(count):
        ent = t + ifd + 2 + 12 * k
        if ent + 12 > seg_end:
            return None
        tag, typ = struct.unpack(e + "HH", data[ent : ent + 4])
        if tag == ORIENTATION_TAG:
            if typ == 3:  # SHORT: first 2 bytes of the value field
                return struct.unpack(e + "H", data[ent + 8 : ent + 10])[0], (ent + 8, typ, e)
            if typ in (4, 9):  # LONG / SLONG
                return struct.unpack(e + "I", data[ent + 8 : ent + 12])[0], (ent + 8, typ, e)
            return None
    return None


def _jpeg_header(data: bytes) -> _JpegHeader | None:
    """Walk the JPEG markers up to the first scan; None when this is not a JPEG we can read so."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    sof = None
    orient: tuple[int, tuple[int, int, str]] | None = None
    kinds = _MARKER_KIND
    try:
        while i + 4 <= n:
            if data[i] != 0xFF:
                return None
            kind = kinds[data[i + 1]]
            if kind >= _FILL:
                if kind == _STOP:
                    break
                i += 1 if kind == _FILL else 2
                continue
            seg_end = i + 2 + (data[i + 2] << 8 | data[i + 3])
            if seg_end < i + 4 or seg_end > n:  # length < 2, or past the end
                return None
            if kind == _SOF:
                if sof is None:
                    prec, h, w, comps = struct.unpack(">BHHB", data[i + 4 : i + 10])
                    sof = (data[i + 1], prec, w, h, comps)
            elif kind == _APP1 and orient is None and data[i + 4 : i + 10] == b"Exif\x00\x00":
                orient = _exif_orientation(data, i + 4, seg_end)
            i = seg_end
    except struct.error:
        return None
    if sof is None:
        return None
    m, prec, w, h, comps = sof
    return _JpegHeader(m, prec, w, h, comps, orient[0] if orient else None, orient[1] if orient else None)


def _set_jpeg_orientation_1(data: bytes) -> bytes | None:
    """Copy of ``data`` with the EXIF orientation set to 1, pixels untouched (None if not found).

    Patches the IFD0 entry in place (same length), so the JPEG stays byte-identical otherwise.
    """
    hdr = _jpeg_header(data)
    if hdr is None or hdr.orientation_at is None:
        return None
    at, typ, e = hdr.orientation_at
    out = bytearray(data)
    if typ == 3:
        out[at : at + 2] = struct.pack(e + "H", 1)
    else:
        out[at : at + 4] = struct.pack(e + "I", 1)
    return bytes(out)


def _fast_jpeg(data: bytes) -> _JpegHeader | None:
    """The header when ``data`` can be stored as is: complete 8-bit 3-channel Huffman JPEG, no rotation.

    A pure-Python walk over a few markers (microseconds); anything unusual returns None
    and takes the Pillow path, which decides properly.
    """
    hdr = _jpeg_header(data)
    if (
        hdr is None
        or hdr.sof not in (0xC0, 0xC1, 0xC2)
        or hdr.precision != 8
        or hdr.components != 3
        or hdr.width <= 0
        or hdr.height <= 0
        or hdr.orientation not in (None, 1)
        or not _jpeg_complete(data)
    ):
        return None
    return hdr


def _jpeg_complete(data: bytes) -> bool:
    """Cheap truncation check: a whole JPEG ends with the EOI marker (padding allowed)."""
    return data.endswith(b"\xff\xd9") or data.rstrip(b"\x00\r\n \t")[-2:] == b"\xff\xd9"


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
        xs = _xml_size(xml_size)
        fast = _fast_jpeg(data)
        if fast is not None:  # the common case: store the file as it is
            w, h = fast.width, fast.height
            if xs is not None and xs != (w, h):
                problems.append(Problem(
                    report_name, f"XML <size> {xs[0]}x{xs[1]} differs from the real image {w}x{h}; using the real size",
                    FIXED,
                ))
            return PreparedImage(data, w, h, True, tuple(problems))
        return _prepare_with_pillow(data, path, xs, report_name, problems)
    except ImageError as e:
        msg = str(e)
        prefix = f"{path}: "
        problems.append(Problem(report_name, msg[len(prefix):] if msg.startswith(prefix) else msg, SKIPPED_IMAGE))
    except MemoryError:
        problems.append(Problem(report_name, "image too large to convert (out of memory)", SKIPPED_IMAGE))
    except Exception as e:  # a crafted/corrupt file can make Pillow raise anything: skip it, keep the batch
        problems.append(Problem(report_name, f"unreadable image ({type(e).__name__}: {e})", SKIPPED_IMAGE))
    return PreparedImage(None, 0, 0, False, tuple(problems))


def _prepare_with_pillow(
    data: bytes, path: str | os.PathLike, xs: tuple[int, ...] | None, report_name: str, problems: list[Problem]
) -> PreparedImage:
    """``prepare_image`` for everything but a plain JPEG: Pillow decides (notes go into ``problems``)."""

    def note(msg: str, action: str = FIXED) -> None:
        problems.append(Problem(report_name, msg, action))

    im = _open(data, path)
    raw_w, raw_h = im.size
    if raw_w <= 0 or raw_h <= 0:
        raise ImageError(f"{path}: image has no pixels ({raw_w}x{raw_h})")
    fmt = im.format or "unknown"
    orientation, raw_orient = _orientation(im)
    if raw_orient is not None and raw_orient != orientation:
        note(f"invalid EXIF orientation {raw_orient!r} treated as 1 (no rotation)")

    rotate = False
    if orientation != 1:
        disp = (raw_h, raw_w) if orientation in _ROTATED_90 else (raw_w, raw_h)
        if xs is not None and xs == disp and xs != (raw_w, raw_h):
            rotate = True
            note(f"EXIF orientation {orientation}: XML size {xs[0]}x{xs[1]} matches the rotated image; "
                 "pixels rotated and re-encoded")
        elif xs is not None and xs == (raw_w, raw_h) and xs != disp:
            note(f"EXIF orientation {orientation}: XML size {xs[0]}x{xs[1]} matches the raw pixels; "
                 "kept them and dropped the orientation tag")
        else:
            rotate = True
            why = ("the XML has no <size>" if xs is None else
                   f"XML size {xs[0]}x{xs[1]} fits both frames" if xs == disp else
                   f"XML size {xs[0]}x{xs[1]} matches neither {raw_w}x{raw_h} nor {disp[0]}x{disp[1]}")
            note(f"EXIF orientation {orientation}: {why}; assumed the boxes were drawn on the image "
                 "as viewers show it (rotated); pixels rotated and re-encoded")

    plain_jpeg = fmt == "JPEG" and im.mode == "RGB"
    uncommon = False
    if plain_jpeg:
        hdr = _jpeg_header(data)
        if hdr is None or hdr.sof not in (0xC0, 0xC1, 0xC2) or hdr.precision != 8:
            # e.g. arithmetic-coded or 12-bit: not every decoder (TF's included) reads these
            what = f"SOF 0x{hdr.sof:02X}, {hdr.precision}-bit" if hdr else "unusual markers"
            note(f"JPEG with an uncommon encoding ({what}) re-encoded as a baseline JPEG")
            plain_jpeg = False
            uncommon = True
    if plain_jpeg and not rotate:
        stored = data
        fast = True
        if not _jpeg_complete(data):
            _load_pixels(im, path)  # raises for a truncated file; trailing junk is fine
            fast = False
        if raw_orient is not None and raw_orient != 1:
            patched = _set_jpeg_orientation_1(data)
            if patched is None:  # tag not where we can patch it: re-encode the pixels instead
                _load_pixels(im, path)
                stored = _encode_jpeg(im)
            else:
                stored = patched
            fast = False
        width, height = raw_w, raw_h
    else:
        _load_pixels(im, path)
        if getattr(im, "n_frames", 1) > 1:
            note(f"{fmt} has {im.n_frames} frames; the first one is used")
        src_mode = im.mode
        if rotate:
            im = ImageOps.exif_transpose(im)
        rgb = _to_rgb(im)
        if not plain_jpeg and not uncommon:
            kind = _KIND.get(src_mode, src_mode)
            what = f"{kind} {fmt}" if src_mode != "RGB" else fmt
            note(f"{what} image (mode {src_mode}) converted to RGB JPEG (quality {JPEG_QUALITY})")
        stored = _encode_jpeg(rgb)
        width, height = rgb.size
        fast = False

    if xs is not None and xs != (width, height) and orientation == 1:
        note(f"XML <size> {xs[0]}x{xs[1]} differs from the real image {width}x{height}; using the real size")
    return PreparedImage(stored, width, height, fast, tuple(problems))


def open_image_rgb(path: str | os.PathLike) -> Image.Image:
    """Any supported image as 8-bit RGB, EXIF orientation applied (as viewers show it).

    Invalid orientation values are treated as 1. Raises ImageError naming the file for
    missing, empty, truncated or non-image files.
    """
    data = _read(path)
    im = _open(data, path)
    _load_pixels(im, path)
    orientation, _ = _orientation(im)
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    return _to_rgb(im)
