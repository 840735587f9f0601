"""Builders of hostile inputs for tests/test_promises.py.

Nothing here imports od: every helper works on plain files, bytes and the standard library
(plus Pillow, numpy and google_crc32c, which od depends on anyway), so these builders keep
working however od's modules are moved around.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- VOC datasets (also used by test_records)


def img(path: Path, size=(80, 60), color=(40, 120, 200), fmt="JPEG", mode="RGB", patch=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    if patch is not None:
        im.paste((255, 0, 0), patch)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, fmt, **save)
    return path


def xml_text(filename: str, size=(80, 60), objects=()) -> str:
    objs = "".join(
        f"<object><name>{o[0]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(o[5]) if len(o) > 5 else 0}</difficult><bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin>"
        f"<xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>"
        for o in objects
    )
    sz = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><folder>x</folder><filename>{filename}</filename>{sz}{objs}</annotation>"


def xml(path: Path, filename: str, size=(80, 60), objects=(), raw: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw if raw is not None else xml_text(filename, size, objects))
    return path


def goods(folder: Path, n: int = 2, cls: str = "cat", prefix: str = "good", xml_folder: Path | None = None,
          size=(80, 60), fmt: str = "JPEG") -> list[str]:
    """``n`` valid images (+ their XML, one box of ``cls`` each) in ``folder``; returns the image names."""
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    names = []
    for i in range(n):
        name = f"{prefix}{i}.{ext}"
        img(folder / name, size, color=(40 + i % 200, 120, 200), fmt=fmt)
        xml((xml_folder or folder) / f"{prefix}{i}.xml", name, size, [(cls, 5, 5, size[0] // 2, size[1] // 2)])
        names.append(name)
    return names


# --------------------------------------------------------------------------- JPEG surgery


def jpeg_bytes(size=(16, 16), color=(90, 160, 30), **save) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "JPEG", **save)
    return b.getvalue()


def textured_jpeg(size=(256, 256), seed: int = 0, quality: int = 90) -> bytes:
    """Baseline (not progressive) JPEG of random noise blocks: a real entropy-coded scan."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    a = np.kron(blocks, np.ones((16, 16, 1), np.uint8))[:h, :w].astype(np.int16)
    a += rng.integers(-40, 41, (h, w, 3), dtype=np.int16)
    b = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(b, "JPEG", quality=quality, progressive=False)
    return b.getvalue()


def _segments(data: bytes):
    """``(offset, marker)`` of each marker segment before the first scan (SOS included)."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    i = 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF, f"lost marker sync at {i}"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        yield i, marker
        if marker == 0xDA:
            return
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length


def forge_sof(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its SOF0 frame header claiming ``width`` x ``height`` (scan untouched)."""
    for off, marker in _segments(data):
        if marker == 0xC0:
            b = bytearray(data)
            b[off + 5 : off + 7] = struct.pack(">H", height)
            b[off + 7 : off + 9] = struct.pack(">H", width)
            return bytes(b)
    raise AssertionError("no SOF0 segment")


def strip_scan(data: bytes) -> bytes:
    """Every header up to (not including) the SOS marker, then EOI: a JPEG with no image data."""
    for off, marker in _segments(data):
        if marker == 0xDA:
            return data[:off] + b"\xff\xd9"
    raise AssertionError("no SOS segment")


# --------------------------------------------------------------------------- odd files


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def bytes_named_file(folder: Path, name: bytes, content: bytes) -> bytes:
    """Create ``folder/name`` where ``name`` need not be valid UTF-8; returns the bytes path."""
    p = os.fsencode(folder) + b"/" + name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    return p


def snapshot(root: Path) -> dict | None:
    """Every entry under ``root`` (hidden ones too): relpath -> bytes / ('dir',) / ('link', target)."""
    if not os.path.lexists(root):
        return None
    snap: dict = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            snap[os.path.relpath(p, root)] = ("link", os.readlink(p)) if os.path.islink(p) else ("dir",)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                snap[os.path.relpath(p, root)] = ("link", os.readlink(p))
            else:
                with open(p, "rb") as fh:
                    snap[os.path.relpath(p, root)] = fh.read()
    return snap


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- failure injection


def _under(path, root: str) -> bool:
    try:
        if isinstance(path, int):
            path = os.readlink(f"/proc/self/fd/{path}")
        rp = os.path.realpath(os.fsdecode(path))
    except (OSError, TypeError, ValueError):
        return False
    return rp == root or rp.startswith(root + os.sep)


def _writing(mode: str) -> bool:
    return any(c in mode for c in "wax+")


class _FailingWrites:
    """A file object whose writes raise ``exc``; everything else goes to the real file."""

    def __init__(self, real, exc_factory):
        self._real = real
        self._exc = exc_factory

    def write(self, *a, **k):
        raise self._exc()

    def writelines(self, *a, **k):
        raise self._exc()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()
        return False

    def __iter__(self):
        return iter(self._real)


def inject_disk_full(monkeypatch, root: Path) -> None:
    """Make every write of bytes to a file under ``root`` fail with ENOSPC, whatever path od takes.

    Covers raw fds (``os.write``, ``os.writev``, ``os.pwrite``, ``os.copy_file_range``,
    ``os.sendfile``, the fd found via /proc/self/fd) and buffered files (``open``/``io.open``/
    ``Path.open``/``os.fdopen`` in a writing mode return an object whose ``write`` raises).
    Files can still be created and renamed: a full disk usually lets you create an empty file.
    Not covered: writes done inside C extensions (e.g. TensorFlow's own file system layer).
    """
    r = os.path.realpath(root)

    def enospc():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fd_guard(real, fd_arg=0):
        def f(*a, **k):
            if _under(a[fd_arg], r):
                raise enospc()
            return real(*a, **k)
        return f

    for name, arg in (("write", 0), ("writev", 0), ("pwrite", 0), ("pwritev", 0), ("copy_file_range", 1),
                      ("sendfile", 0)):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, fd_guard(getattr(os, name), arg))

    real_open = builtins.open

    def guarded_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        if _writing(mode) and _under(fh.fileno() if isinstance(file, int) else file, r):
            return _FailingWrites(fh, enospc)
        return fh

    real_fdopen = os.fdopen

    def guarded_fdopen(fd, mode="r", *a, **k):
        fh = real_fdopen(fd, mode, *a, **k)
        if _writing(mode) and _under(fd, r):
            return _FailingWrites(fh, enospc)
        return fh

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "fdopen", guarded_fdopen)


def inject_permission_denied(monkeypatch, root: Path) -> None:
    """Creating or opening anything under ``root`` raises PermissionError(EACCES) (root ignores chmod).

    Patches ``os.open`` (which ``tempfile.mkstemp`` and od's raw writers use), ``open``/``io.open``
    and ``os.mkdir``.
    """
    r = os.path.realpath(root)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir

    def os_open(path, flags, *a, **k):
        if not isinstance(path, int) and _under(path, r) and os.path.realpath(os.fsdecode(path)) != r:
            raise denied(path)
        return real_os_open(path, flags, *a, **k)

    def open_(file, mode="r", *a, **k):
        if not isinstance(file, int) and _under(file, r):
            raise denied(file)
        return real_open(file, mode, *a, **k)

    def mkdir(path, *a, **k):
        if _under(path, r) and os.path.realpath(os.fsdecode(path)) != r:
            raise denied(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def fail_nth_call(monkeypatch, module, name: str, n: int, exc_factory) -> dict:
    """``module.name`` raises ``exc_factory()`` on its ``n``-th call (1-based); returns the call counter."""
    real = getattr(module, name)
    calls = {"n": 0}

    def f(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc_factory()
        return real(*a, **k)

    monkeypatch.setattr(module, name, f)
    return calls


# --------------------------------------------------------------------------- hand-built tf.train.Example + TFRecord


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _feature(values) -> bytes:
    if not isinstance(values, (list, tuple)):
        values = [values]
    if all(isinstance(v, (bytes, str)) for v in values) and values:
        vals = [v.encode() if isinstance(v, str) else v for v in values]
        return _ld(1, b"".join(_ld(1, v) for v in vals))  # bytes_list
    if any(isinstance(v, float) for v in values):
        return _ld(2, _ld(1, b"".join(struct.pack("<f", v) for v in values)))  # float_list, packed
    return _ld(3, _ld(1, b"".join(_varint(int(v)) for v in values)))  # int64_list, packed


def example_bytes(features: dict) -> bytes:
    """A serialized ``tf.train.Example`` (keys sorted, as TF's deterministic serialisation)."""
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, _feature(v))) for k, v in sorted(features.items()))
    return _ld(1, entries)


def detection_example(image: bytes, width: int, height: int, filename: str = "x.jpg") -> bytes:
    """OD API detection Example with one box; width/height written as given (0 and negatives too)."""
    return example_bytes({
        "image/encoded": image,
        "image/format": b"jpeg",
        "image/width": width,
        "image/height": height,
        "image/filename": filename,
        "image/source_id": b"1",
        "image/object/bbox/xmin": [0.1],
        "image/object/bbox/ymin": [0.1],
        "image/object/bbox/xmax": [0.5],
        "image/object/bbox/ymax": [0.5],
        "image/object/class/text": [b"cat"],
        "image/object/class/label": [1],
    })


def write_tfrecord(path: Path, records) -> Path:
    import google_crc32c

    def masked(data: bytes) -> bytes:
        c = google_crc32c.value(data)
        return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        for r in records:
            head = struct.pack("<Q", len(r))
            f.write(head + masked(head) + r + masked(r))
    return path
