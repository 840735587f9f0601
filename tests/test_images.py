"""od.images: the real image decides; EXIF; byte-for-byte fast path; conversions; bad files."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
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


def test_fast_path_decodes_once_at_one_eighth_scale(tmp_path, monkeypatch):
    """The copied file is checked by one DCT-scaled decode (all its data read), nothing more."""
    p = _save(_gradient(), tmp_path / "a.jpg", "JPEG")
    from PIL import JpegImagePlugin

    calls = []
    real_draft, real_load = JpegImagePlugin.JpegImageFile.draft, JpegImagePlugin.JpegImageFile.load
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: calls.append(("draft", size)) or real_draft(self, mode, size))
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load",
                        lambda self: calls.append(("load", self.size)) or real_load(self))
    prep = prepare_image(p, None, "a.jpg")
    assert prep.fast_path and prep.data == p.read_bytes()
    assert calls == [("draft", (8, 6)), ("load", (8, 6))]


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
    assert not prep.fast_path  # re-encoded without EXIF rather than patched in place
    [pr] = prep.problems
    assert pr.action == FIXED and "raw pixels" in pr.problem and "dropped the orientation tag" in pr.problem


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
    assert prep.data == p.read_bytes() and prep.fast_path  # stored as is: every reader treats the value as 1
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
        else:  # copied or re-encoded, what is stored decodes in full (no LOAD_TRUNCATED_IMAGES)
            assert prep.fast_path == (prep.data == bytes(data))
            assert _decode(prep.data).size == (prep.width, prep.height)


# --------------------------------------------------------------------------- decode check, pixel limit, truncation

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon" / "images"


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _claiming(data: bytes, w: int, h: int) -> bytes:
    """``data`` with its SOF0 header patched to claim ``w`` x ``h`` (the scan data stays as it was)."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", h, w) + data[i + 9 :]


def _textured(seed: int = 0, size: int = 256) -> Image.Image:
    """Random colour blocks plus pixel noise: every row costs bytes, so a cut loses rows at the bottom."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size // 16, size // 16, 3)).repeat(16, 0).repeat(16, 1)
    noise = rng.integers(-40, 41, (size, size, 3))
    return Image.fromarray(np.clip(blocks + noise, 0, 255).astype(np.uint8), "RGB")


def _lenient(data: bytes) -> np.ndarray:
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _cuts(data: bytes) -> list[tuple[bytes, int]]:
    """(data cut at 30..99 % of its bytes, rows that really differ from the whole file's decode)."""
    full = _lenient(data)
    out = []
    for pct in range(30, 100):
        cut = data[: len(data) * pct // 100]
        bad = np.nonzero((_lenient(cut) != full).any(axis=(1, 2)))[0]
        out.append((cut, full.shape[0] - int(bad[0]) if len(bad) else 0))
    return out


def _prep_bytes(tmp_path: Path, data: bytes, xml_size=None):
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    return prepare_image(p, xml_size, "x.jpg")


def test_header_claiming_more_than_its_data_is_skipped(tmp_path):
    """A real 16x16 JPEG whose SOF0 says 30000x30000: it used to be copied byte for byte.

    The pixel limit stops it. Under the limit such a file still gets through: its scan ends at
    the end marker, where libjpeg (Pillow's and TF's) fills the missing rows and only warns.
    """
    data = _claiming(_jpeg(Image.effect_noise((16, 16), 60).convert("RGB")), 30000, 30000)
    prep = _prep_bytes(tmp_path, data)
    assert prep.data is None and prep.problems[-1].action == SKIPPED_IMAGE
    assert "30000x30000" in prep.problems[-1].problem


def test_jpeg_without_scan_data_is_skipped(tmp_path):
    data = _jpeg(_gradient())
    data = data[: data.index(b"\xff\xda")] + b"\xff\xd9"  # headers and tables, then the end marker
    prep = _prep_bytes(tmp_path, data)
    assert prep.data is None
    [pr] = prep.problems
    assert pr.action == SKIPPED_IMAGE and "corrupt image data" in pr.problem


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_pixel_limit_applies_to_the_header_before_decoding(tmp_path, monkeypatch, fmt):
    from od.data import images

    if fmt == "JPEG":
        data = _claiming(_jpeg(_gradient()), 60000, 60000)
    else:
        buf = io.BytesIO()
        _gradient().save(buf, "PNG")
        png = buf.getvalue()
        ihdr = b"IHDR" + struct.pack(">II", 60000, 60000) + png[24:29]
        data = png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]

    def boom(self, *a, **k):
        raise AssertionError("pixels decoded for an over-limit image")

    monkeypatch.setattr(Image.Image, "load", boom)
    monkeypatch.setattr(images.ImageFile.ImageFile, "load", boom)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        prep = _prep_bytes(tmp_path, data)
        with pytest.raises(ImageError, match="over od's limit of 100 megapixels"):
            open_image_rgb(tmp_path / "x.jpg")
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # restored
    [pr] = prep.problems
    assert pr.action == SKIPPED_IMAGE
    assert pr.problem == "header claims 60000x60000 = 3600 megapixels, over od's limit of 100 megapixels"
    assert images.MAX_PIXELS == 100_000_000


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 (8-row MCUs) and 4:2:0 (16-row MCUs)
def test_truncated_jpeg_kept_when_most_rows_decode(tmp_path, subsampling):
    from PIL import ImageFile

    data = _jpeg(_textured(), quality=90, subsampling=subsampling)
    cuts = _cuts(data)
    cut, lost = next((c, n) for c, n in cuts if n / 256 <= 0.08)  # the first cut that keeps >= 92 % of rows
    prep = _prep_bytes(tmp_path, cut, (256, 256))
    assert prep.data is not None and not prep.fast_path and (prep.width, prep.height) == (256, 256)
    [pr] = prep.problems
    assert pr.action == FIXED
    m = re.match(r"truncated JPEG: the bottom (\d+) of 256 rows \((\d+)%\) were missing and are filled", pr.problem)
    assert m, pr.problem
    assert abs(int(m[1]) - lost) <= 2  # 4:2:0 blends chroma into the 2 rows above the cut
    out = _decode(prep.data)  # a whole JPEG now: decodes without LOAD_TRUNCATED_IMAGES
    good = np.asarray(Image.open(io.BytesIO(data)).convert("L"), int)[: 256 - lost - 2]
    assert np.abs(np.asarray(out.convert("L"), int)[: 256 - lost - 2] - good).mean() < 8  # same rows (re-encoded: ~4)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # restored
    assert _prep_bytes(tmp_path, cut, (256, 256)).data == prep.data  # deterministic


@pytest.mark.parametrize("subsampling", [0, 2])
def test_truncated_jpeg_skipped_when_too_many_rows_are_missing(tmp_path, subsampling):
    data = _jpeg(_textured(1), quality=90, subsampling=subsampling)
    cuts = _cuts(data)
    near = [c for c, n in cuts if 0.12 <= n / 256 <= 0.2]  # just below the 90 % line
    far = [(c, n) for c, n in cuts if 0.55 <= n / 256 <= 0.65]
    for cut, expect in ((near[-1], None), (far[0][0], (256 - far[0][1]) * 100 // 256)):
        prep = _prep_bytes(tmp_path, cut)
        assert prep.data is None
        [pr] = prep.problems
        assert pr.action == SKIPPED_IMAGE and pr.problem.startswith("truncated JPEG: only ")
        share = int(pr.problem.split("only ")[1].split("%")[0])
        assert share < 90 and (expect is None or abs(share - expect) <= 1), pr.problem


def test_truncated_progressive_jpeg_is_skipped(tmp_path):
    data = _jpeg(_textured(), quality=90, progressive=True)
    prep = _prep_bytes(tmp_path, data[: len(data) * 9 // 10])
    assert prep.data is None and "truncated progressive JPEG" in prep.problems[-1].problem


@pytest.mark.skipif(not RACCOON.is_dir(), reason="needs ../shared/datasets/raccoon (real photos)")
def test_truncated_real_photo(tmp_path):
    data = (RACCOON / "raccoon-1.jpg").read_bytes()
    w, h = Image.open(io.BytesIO(data)).size
    kept = _prep_bytes(tmp_path, data[: len(data) * 98 // 100], (w, h))
    assert kept.data is not None and (kept.width, kept.height) == (w, h)
    assert [p.action for p in kept.problems] == [FIXED] and "truncated JPEG: the bottom" in kept.problems[0].problem
    assert _decode(kept.data).size == (w, h)
    cut = _prep_bytes(tmp_path, data[: len(data) * 60 // 100], (w, h))
    assert cut.data is None and "truncated JPEG: only" in cut.problems[0].problem


@pytest.mark.timeout(30)
def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # nothing ever writes: opening it for reading the usual way would hang
    with pytest.raises(ImageError, match="not a regular file") as e:
        open_image_rgb(fifo)
    assert "pipe.jpg" in str(e.value) and "FIFO" in str(e.value)
    prep = prepare_image(fifo, None, "pipe.jpg")
    assert prep.data is None and "not a regular file" in prep.problems[0].problem
    with pytest.raises(ImageError, match="not a regular file"):
        open_image_rgb(tmp_path)
