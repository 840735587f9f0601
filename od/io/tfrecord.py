"""TFRecord files: read and write the framing (length, masked crc32c), TF-free with google_crc32c."""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

class TFRecordError(OSError):
    """A TFRecord file that is truncated or corrupt (bad length or data checksum)."""


@functools.lru_cache(maxsize=None)
def _crc32c_value():
    """``google_crc32c.value`` when installed (C speed), else None (then TensorFlow does the I/O)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "c") != "c":
        return None  # the pure-Python fallback is far slower than importing TF once
    return google_crc32c.value


def _masked_crc(crc_value, data: bytes) -> int:
    return _mask(crc_value(data))


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def _iter_py(path: str, crc_value) -> Iterator[bytes]:
    """The TFRecord framing (u64 length, masked crc32c of it, data, masked crc32c of data)."""
    with open(path, "rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            where = f"{path}: record {index}"
            if len(header) < 12:
                raise TFRecordError(f"{where}: truncated record header")
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc(crc_value, header[:8]) != length_crc:
                raise TFRecordError(f"{where}: corrupt record length (checksum mismatch); not a TFRecord file?")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{where}: truncated record ({len(data)} of {length} bytes)")
            if _masked_crc(crc_value, data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{where}: corrupt record data (checksum mismatch)")
            yield data
            index += 1


def iter_file_records(path: str | os.PathLike) -> Iterator[bytes]:
    """Records of one (uncompressed) TFRecord file, in order, checksums verified.

    Without TensorFlow when ``google_crc32c`` is installed, else with ``tf.data``.
    A truncated or corrupt file raises (TFRecordError, or TF's DataLossError) after
    the good records before the damage were yielded.
    """
    crc_value = _crc32c_value()
    if crc_value is not None:
        yield from _iter_py(os.fspath(path), crc_value)
        return
    tf = _quiet_tf()
    for rec in tf.data.TFRecordDataset(os.fspath(path)).as_numpy_iterator():
        yield bytes(rec)


def iter_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[bytes]:
    """Every record of every file, file by file (OD API ``.record`` files and od shards alike)."""
    for p in _as_paths(paths):
        yield from iter_file_records(p)


class RecordWriter:
    """Writes an uncompressed TFRecord file (the bytes ``tf.io.TFRecordWriter`` writes).

    A record is ``bytes`` or a sequence of bytes-like parts (``encode_example_parts``):
    the data checksum is chained over the parts (each byte is checksummed once) and the
    parts go to the kernel with ``os.writev`` in batches of about ``buffer_size`` bytes,
    so a large image is never copied into a Python-side buffer or joined with its
    headers. Needs ``google_crc32c`` (C); ``write_records`` falls back to TensorFlow.
    Writes ``path`` directly: callers wanting atomic files write a temp name and rename.
    """

    def __init__(self, path: str | os.PathLike, buffer_size: int = 1 << 20, direct_size: int = 256 << 10):
        import google_crc32c

        self._value = google_crc32c.value
        self._extend = google_crc32c.extend
        self._fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
        self._buffer_size = buffer_size
        self._direct_size = direct_size
        self._pending: list = []
        self._pending_bytes = 0
        self.count = 0

    def write(self, record) -> None:
        if isinstance(record, (bytes, bytearray, memoryview)):
            parts = (record,)
            crc = self._value(record)
            n = len(record)
            size = memoryview(record).nbytes if type(record) is memoryview else n
        else:
            parts = record
            crc, n = 0, 0
            extend = self._extend
            for p in parts:
                crc = extend(crc, p)
                n += len(p) if type(p) is bytes else memoryview(p).nbytes
            size = n
        header = _U64(n)
        pending = self._pending
        pending.append(header + _U32(_mask(self._value(header))))
        pending.extend(parts)
        pending.append(_U32(_mask(crc)))
        self._pending_bytes += size + 16
        self.count += 1
        # Small records are batched; a large one goes out at once so that its buffer can be
        # freed (and its memory reused for the next image) as soon as the caller drops it.
        if self._pending_bytes >= self._buffer_size or n >= self._direct_size or len(pending) >= 512:
            self.flush()

    def flush(self) -> None:
        total = self._pending_bytes  # exactly the bytes in the buffers
        bufs = [b for b in self._pending if len(b)]
        self._pending = []
        self._pending_bytes = 0
        while bufs:
            done = os.writev(self._fd, bufs[:1024])  # IOV_MAX
            if done == total:  # the usual case: all of it
                return
            total -= done
            while bufs and done >= memoryview(bufs[0]).nbytes:  # partial writes are rare but legal
                done -= memoryview(bufs.pop(0)).nbytes
            if done:
                bufs[0] = memoryview(bufs[0])[done:]

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # do not block on flushing a file that is being abandoned
            self._pending = []
        self.close()


_U64 = struct.Struct("<Q").pack
_U32 = struct.Struct("<I").pack


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _TFRecordWriter:
    """``tf.io.TFRecordWriter`` behind ``RecordWriter``'s interface (no ``google_crc32c``)."""

    def __init__(self, path: str | os.PathLike):
        self._w = _quiet_tf().io.TFRecordWriter(os.fspath(path))
        self.count = 0

    def write(self, record) -> None:
        self._w.write(record if isinstance(record, bytes) else b"".join(bytes(p) for p in record))
        self.count += 1

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> "_TFRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_record_writer(path: str | os.PathLike) -> "RecordWriter | _TFRecordWriter":
    """A TFRecord writer for ``path``: ``RecordWriter`` with ``google_crc32c``, else TensorFlow's."""
    return RecordWriter(path) if _crc32c_value() is not None else _TFRecordWriter(path)


def write_records(path: str | os.PathLike, serialized: Iterable) -> int:
    """Write an uncompressed TFRecord file (the bytes ``tf.io.TFRecordWriter`` writes); returns the count.

    Items are ``bytes`` or sequences of parts (see ``RecordWriter``). Writes ``path``
    directly: callers wanting atomic files write a temp name and rename.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open_record_writer(path) as w:
        for rec in serialized:
            w.write(rec)
        return w.count
