"""od.images: the real image decides; EXIF; byte-for-byte fast path; conversions; bad files."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from od.data.images import ImageError, open_image_rgb, prepare_image
from od.core import FIXED, SKIPPED_IMAGE


def _save(im: Image.Image, path: Path, fmt: str, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def _exif(orientation: int) -> bytes:
    """A minimal EXIF block holding only the orientation (LONG when it does not fit a SHORT)."""
    if orientation <= 0xFFFF:
        entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    else:
        entry = struct.pack("<HHII", 0x0112, 4, 1, orientation)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    im.load()
    return im


def _gradient(w=64, h=48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0).repeat(3, 2)
    x[..., 1] = 128
    return Image.fromarray(x, "RGB")


def test_rgb_jpeg_copied_byte_for_byte(tmp_path):
    p = _save(_gradient(), tmp_path / "a.jpg", "JPEG", quality=80)
    prep = prepare_image(p, (64, 48), "a.jpg")
    assert prep.data == p.read_bytes()
    assert prep.fast_path and (prep.width, prep.height) == (64, 48) and prep.problems == ()


def test_fast_path_does_not_decode_pixels(tmp_path, monkeypatch):
    p = _save(_gradient(), tmp_path / "a.jpg", "JPEG")

    def boom(self, *a, **k):
        raise AssertionError("pixels decoded on the fast path")

    monkeypatch.setattr(Image.Image, "load", boom)
    from PIL import JpegImagePlugin

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", boom, raising=False)
    prep = prepare_image(p, None, "a.jpg")
    assert prep.fast_path and prep.data == p.read_bytes()


def test_size_mismatch_reported_real_size_used(tmp_path):
    p = _save(_gradient(), tmp_path / "a.jpg", "JPEG")
    prep = prepare_image(p, (640, 480), "ann/a.xml")
    assert (prep.width, prep.height) == (64, 48) and prep.fast_path
    [pr] = prep.problems
    assert pr.action == FIXED and "640x480" in pr.problem and "64x48" in pr.problem and pr.file == "ann/a.xml"


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda: _gradient().convert("L"), "JPEG:grayscale"),
        (lambda: _gradient().convert("CMYK"), "JPEG:CMYK"),
        (lambda: _gradient(), "PNG:PNG"),
        (lambda: _gradient().convert("RGBA"), "PNG:RGBA"),
        (lambda: _gradient().convert("P"), "GIF:palette"),
        (lambda: _gradient(), "BMP:BMP"),
        (lambda: _gradient(), "WEBP:WEBP"),
        (lambda: _gradient(), "TIFF:TIFF"),
        (lambda: _gradient().convert("LA"), "PNG:grayscale+alpha"),
    ],
)
def test_conversions_to_rgb_jpeg(tmp_path, make, kind):
    fmt, word = kind.split(":")
    p = _save(make(), tmp_path / f"x.{fmt.lower()}", fmt)
    prep = prepare_image(p, (64, 48), "x")
    assert not prep.fast_path and prep.data is not None
    im = _decode(prep.data)
    assert im.mode == "RGB" and im.size == (64, 48) == (prep.width, prep.height)
    assert any(pr.action == FIXED and "converted to RGB JPEG" in pr.problem and word in pr.problem
               for pr in prep.problems)
    # pixels survive the conversion (left dark, right bright, like the source gradient)
    g = np.asarray(im.convert("L"), dtype=float)
    assert g[:, :8].mean() + 40 < g[:, -8:].mean()


def test_rgba_alpha_composited_on_white(tmp_path):
    im = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    p = _save(im, tmp_path / "t.png", "PNG")
    rgb = _decode(prepare_image(p, None, "t").data)
    assert np.asarray(rgb).min() > 240  # transparent -> white, not the hidden red


def test_16bit_gray_png_scaled_not_clipped(tmp_path):
    arr = np.zeros((20, 40), dtype=np.uint16)
    arr[:, 20:] = 65535
    arr[:, 10:20] = 32768
    p = tmp_path / "d.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    prep = prepare_image(p, None, "d")
    g = np.asarray(_decode(prep.data).convert("L"), dtype=int)
    assert g[:, :8].max() < 10 and abs(int(g[:, 12:18].mean()) - 128) < 6 and g[:, 24:].min() > 245
    assert "16-bit" in prep.problems[0].problem


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        ("TRUNCATED", "truncated"),
    ],
)
def test_bad_files_skipped_with_reason(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    if content == "TRUNCATED":
        full = io.BytesIO()
        Image.effect_noise((200, 150), 60).convert("RGB").save(full, "JPEG")
        content = full.getvalue()[: len(full.getvalue()) // 2]
    if content is not None:
        p.write_bytes(content)
    prep = prepare_image(p, None, "imgs/bad.jpg")
    assert prep.data is None
    [pr] = prep.problems
    assert pr.action == SKIPPED_IMAGE and reason in pr.problem and pr.file == "imgs/bad.jpg"
    with pytest.raises(ImageError, match="bad.jpg"):
        open_image_rgb(p)


def _patched(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    """Grey image with a pure red patch exactly where ``box`` is (xmin, ymin, xmax, ymax)."""
    im = Image.new("RGB", (w, h), (90, 90, 90))
    im.paste((255, 0, 0), box)
    return im


def _red_inside(im: Image.Image, box) -> bool:
    a = np.asarray(im, dtype=int)
    x0, y0, x1, y1 = box
    inside = a[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    red = (inside[..., 0] > 200) & (inside[..., 1] < 60) & (inside[..., 2] < 60)
    outside = a.copy()
    outside[y0:y1, x0:x1] = 0
    stray = (outside[..., 0] > 200) & (outside[..., 1] < 60)
    return bool(red.mean() > 0.95 and stray.mean() < 0.01)


def test_exif6_xml_in_rotated_frame_rotates_pixels(tmp_path):
    box = (10, 5, 40, 20)
    shown = _patched(96, 64, box)  # what the labelling tool showed (and the XML size)
    raw = shown.transpose(Image.Transpose.ROTATE_90)  # stored sideways; EXIF 6 turns it back
    p = _save(raw, tmp_path / "r.jpg", "JPEG", quality=95, exif=_exif(6))
    prep = prepare_image(p, (96, 64), "r.xml")
    assert (prep.width, prep.height) == (96, 64) and not prep.fast_path
    out = _decode(prep.data)
    assert out.size == (96, 64) and out.getexif().get(0x0112) in (None, 1)
    assert _red_inside(out, box)
    assert "rotated" in prep.problems[0].problem and prep.problems[0].action == FIXED


def test_exif6_xml_in_raw_frame_keeps_pixels_drops_tag(tmp_path):
    box = (10, 5, 40, 20)
    raw = _patched(96, 64, box)  # the tool ignored EXIF: boxes are on the raw pixels
    p = _save(raw, tmp_path / "r.jpg", "JPEG", quality=95, exif=_exif(6))
    prep = prepare_image(p, (96, 64), "r.xml")
    assert (prep.width, prep.height) == (96, 64)
    out = _decode(prep.data)
    assert out.getexif().get(0x0112) in (None, 1)  # no viewer will rotate it now
    assert _red_inside(out, box)
    orig = p.read_bytes()
    assert len(prep.data) == len(orig) and sum(a != b for a, b in zip(prep.data, orig)) <= 2  # lossless patch
    assert "raw pixels" in prep.problems[0].problem


def test_exif_without_xml_size_applies_rotation(tmp_path):
    raw = _patched(96, 64, (0, 0, 10, 10))
    p = _save(raw, tmp_path / "r.jpg", "JPEG", exif=_exif(6))
    prep = prepare_image(p, None, "r")
    assert (prep.width, prep.height) == (64, 96) and "no <size>" in prep.problems[0].problem


@pytest.mark.parametrize("value", [0, 9, 65537])
def test_invalid_orientation_treated_as_1(tmp_path, value):
    p = _save(_gradient(), tmp_path / "o.jpg", "JPEG", exif=_exif(value))
    prep = prepare_image(p, (64, 48), "o")
    assert (prep.width, prep.height) == (64, 48)
    assert any(f"invalid EXIF orientation {value}" in pr.problem and pr.action == FIXED for pr in prep.problems)
    assert np.abs(np.asarray(_decode(prep.data), int) - np.asarray(Image.open(p), int)).max() == 0
    assert open_image_rgb(p).size == (64, 48)


def test_open_image_rgb_applies_orientation_and_converts(tmp_path):
    p = _save(_gradient().convert("L"), tmp_path / "g.jpg", "JPEG", exif=_exif(6))
    im = open_image_rgb(p)
    assert im.mode == "RGB" and im.size == (48, 64)
    p2 = _save(_gradient().convert("RGBA"), tmp_path / "a.png", "PNG")
    assert open_image_rgb(p2).mode == "RGB"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_files_never_raise(tmp_path):
    """Random byte damage (headers included) is reported, never an exception out of prepare_image."""
    rng = np.random.default_rng(0)
    sources = []
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("TIFF", "RGB"), ("WEBP", "RGB")):
        buf = io.BytesIO()
        _gradient().convert(mode).save(buf, fmt, **({"exif": _exif(6)} if fmt == "JPEG" else {}))
        sources.append(buf.getvalue())
    p = tmp_path / "f.bin"
    for k in range(150):
        data = bytearray(sources[k % len(sources)])
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(0, min(len(data), 300) if k % 2 else len(data)))
            data[i] = int(rng.integers(0, 256))
        if k % 7 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        p.write_bytes(bytes(data))
        prep = prepare_image(p, (64, 48), "f.bin")
        if prep.data is None:
            assert prep.problems[-1].action == SKIPPED_IMAGE
        elif len(prep.data) == len(data) and sum(a != b for a, b in zip(prep.data, data)) <= 4:
            pass  # header + EOI intact: copied (orientation maybe patched), pixels not decoded by design
        else:  # anything decoded was re-encoded into a clean JPEG
            assert _decode(prep.data).size == (prep.width, prep.height)
