"""TFRecord files: read and write the framing (length, masked crc32c), without TensorFlow.

A record is ``u64 length, masked crc32c of the length, data, masked crc32c of the data``
(little-endian); the checksums come from ``google_crc32c``. The files are the bytes
``tf.io.TFRecordWriter`` writes and ``tf.data.TFRecordDataset`` reads (tests compare).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

import google_crc32c

from od.io.files import open_regular

_U64 = struct.Struct("<Q").pack
_U32 = struct.Struct("<I").pack


class TFRecordError(OSError):
    """A TFRecord file that is truncated or corrupt (bad length or data checksum)."""


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_file_records(path: str | os.PathLike) -> Iterator[bytes]:
    """Records of one (uncompressed) TFRecord file, in order, checksums verified.

    A truncated or corrupt file raises TFRecordError after the good records before
    the damage were yielded; anything but a regular file raises NotRegularFileError at once.
    """
    path = os.fspath(path)
    with _open(path) as f:
        index = 0
        while header := f.read(12):
            where = f"{path}: record {index}"
            if len(header) < 12:
                raise TFRecordError(f"{where}: truncated record header")
            length, length_crc = struct.unpack("<QI", header)
            if _mask(google_crc32c.value(header[:8])) != length_crc:
                raise TFRecordError(f"{where}: corrupt record length (checksum mismatch); not a TFRecord file?")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{where}: truncated record ({len(data)} of {length} bytes)")
            if _mask(google_crc32c.value(data)) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{where}: corrupt record data (checksum mismatch)")
            yield data
            index += 1


def _open(path: str):
    """Local files: regular files only (never blocks); ``gs://`` and other URLs through TensorFlow's gfile."""
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open_regular(path)


def count_records(paths: Iterable[str | os.PathLike]) -> int:
    """Records in the files, counting up to the first damaged byte of a damaged file."""
    n = 0
    for p in paths:
        try:
            for _ in iter_file_records(p):
                n += 1
        except TFRecordError:
            continue
    return n


def iter_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[bytes]:
    """Every record of every file, file by file (OD API ``.record`` files and od shards alike)."""
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        yield from iter_file_records(p)


class RecordWriter:
    """Writes an uncompressed TFRecord file to ``path`` (a plain buffered file, 1 MB buffer).

    A record is ``bytes`` or a sequence of ``bytes`` parts written one after the other
    (``encode_example_parts``: the image is not joined with its headers). Writes ``path``
    directly: callers wanting atomic files write a temp name and rename.
    """

    def __init__(self, path: str | os.PathLike):
        self._f = open(path, "wb", buffering=1 << 20)  # small images are copied into it, big ones go straight out
        self.count = 0

    def write(self, record: bytes | Iterable[bytes]) -> None:
        parts = (record,) if isinstance(record, bytes) else tuple(record)
        crc = 0
        for p in parts:
            crc = google_crc32c.extend(crc, p)
        header = _U64(sum(map(len, parts)))
        self._f.write(header + _U32(_mask(google_crc32c.value(header))))
        for p in parts:
            self._f.write(p)
        self._f.write(_U32(_mask(crc)))
        self.count += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_records(path: str | os.PathLike, serialized: Iterable) -> int:
    """Write an uncompressed TFRecord file (items as for ``RecordWriter.write``); returns the count."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with RecordWriter(path) as w:
        for rec in serialized:
            w.write(rec)
        return w.count
