"""The OD API ``tf.train.Example`` schema for detection: encode and decode.

Encoding and decoding do not import TensorFlow. ``tf.train.Example`` is an
ordinary protobuf message, so we build the very same message type
(``tensorflow.Example`` with the field numbers of ``tensorflow/core/example/
{feature,example}.proto``) from a runtime descriptor with the ``protobuf``
package alone. The wire bytes are what TensorFlow produces (tests parse them
with ``tf.train.Example`` and Model Garden's ``TfExampleDecoder``), but a
``records`` worker process no longer pays the ~3-4 s ``import tensorflow``:
``from tensorflow.core.example import example_pb2`` runs ``tensorflow/__init__``
and imports all of TensorFlow (measured: 4.5 s, ~4300 modules), while this
module's message class is ready in a few milliseconds.

Serialisation uses ``deterministic=True`` (map keys sorted), so the same input
gives byte-identical records in any process, whatever the insertion order.

Reading/writing TFRecord *files* is TF-free too when ``google_crc32c`` (C
implementation) is installed: the framing is trivial, only the crc32c checksums
need native speed. Without it, TensorFlow's reader/writer is imported lazily.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from od.types import Box

# Keys (OD API names; area/is_crowd for Model Garden's decoder and COCO evaluator).
K_ENCODED = "image/encoded"
K_FORMAT = "image/format"
K_HEIGHT = "image/height"
K_WIDTH = "image/width"
K_FILENAME = "image/filename"
K_SOURCE_ID = "image/source_id"
K_SHA256 = "image/key/sha256"
K_XMIN = "image/object/bbox/xmin"
K_YMIN = "image/object/bbox/ymin"
K_XMAX = "image/object/bbox/xmax"
K_YMAX = "image/object/bbox/ymax"
K_TEXT = "image/object/class/text"
K_LABEL = "image/object/class/label"
K_DIFFICULT = "image/object/difficult"
K_TRUNCATED = "image/object/truncated"
K_VIEW = "image/object/view"
K_AREA = "image/object/area"
K_IS_CROWD = "image/object/is_crowd"

_SOURCE_ID_MOD = 2**31 - 1  # ids in [1, 2**31 - 1): safe through Model Garden's int32/float paths


class ExampleError(ValueError):
    """A serialized record that is not a usable detection Example."""


@functools.lru_cache(maxsize=None)
def _example_class():
    """``tensorflow.Example`` message class from a runtime descriptor (private pool, no TF)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="od/tf_example.proto", package="tensorflow", syntax="proto3"
    )

    def add_list(name: str, ftype: int) -> None:
        m = fdp.message_type.add(name=name)
        m.field.add(name="value", number=1, type=ftype, label=F.LABEL_REPEATED)  # proto3: packed

    add_list("BytesList", F.TYPE_BYTES)
    add_list("FloatList", F.TYPE_FLOAT)
    add_list("Int64List", F.TYPE_INT64)

    feat = fdp.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for num, (fname, tname) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")), start=1
    ):
        feat.field.add(
            name=fname, number=num, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
            type_name=f".tensorflow.{tname}", oneof_index=0,
        )

    feats = fdp.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tensorflow.Feature"
    )
    feats.field.add(
        name="feature", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
        type_name=".tensorflow.Features.FeatureEntry",
    )

    ex = fdp.message_type.add(name="Example")
    ex.field.add(
        name="features", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tensorflow.Features"
    )

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    desc = pool.FindMessageTypeByName("tensorflow.Example")
    get = getattr(message_factory, "GetMessageClass", None)
    if get is None:  # protobuf < 4.22
        return message_factory.MessageFactory(pool).GetPrototype(desc)
    return get(desc)


def source_id_for(key: str) -> int:
    """Stable integer id for an image key (e.g. its path relative to the dataset).

    First 8 bytes of sha256, folded into [1, 2**31 - 1). Not guaranteed unique:
    the caller checks uniqueness within its dataset.
    """
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h % (_SOURCE_ID_MOD - 1) + 1


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8")


def encode_example(
    *,
    image_bytes: bytes,
    image_format: str,
    width: int,
    height: int,
    filename: str,
    source_id: int,
    boxes: Sequence[Box],
    class_ids: Sequence[int],
) -> bytes:
    """Serialized ``tf.train.Example`` with the OD API keys plus ``area`` (pixels) and ``is_crowd``.

    Boxes are in pixels of the stored image; they are normalised by ``width``/``height``
    exactly (no clipping here: ``records`` decides what to do with bad boxes).
    """
    if len(boxes) != len(class_ids):
        raise ValueError(f"{filename}: {len(boxes)} boxes but {len(class_ids)} class ids")
    if width <= 0 or height <= 0:
        raise ValueError(f"{filename}: image size {width}x{height} is not positive")
    if isinstance(source_id, bool) or int(source_id) < 0:
        raise ValueError(f"{filename}: source_id must be a non-negative integer, got {source_id!r}")

    ex = _example_class()()
    f = ex.features.feature
    f[K_ENCODED].bytes_list.value.append(image_bytes)
    f[K_FORMAT].bytes_list.value.append(_b(image_format.lower()))
    f[K_HEIGHT].int64_list.value.append(int(height))
    f[K_WIDTH].int64_list.value.append(int(width))
    f[K_FILENAME].bytes_list.value.append(_b(filename))
    f[K_SOURCE_ID].bytes_list.value.append(str(int(source_id)).encode("ascii"))
    f[K_SHA256].bytes_list.value.append(hashlib.sha256(image_bytes).hexdigest().encode("ascii"))

    w, h = float(width), float(height)
    # Always present (possibly empty) so VarLen parsers see the keys on negatives too.
    f[K_XMIN].float_list.value.extend([b.xmin / w for b in boxes])
    f[K_YMIN].float_list.value.extend([b.ymin / h for b in boxes])
    f[K_XMAX].float_list.value.extend([b.xmax / w for b in boxes])
    f[K_YMAX].float_list.value.extend([b.ymax / h for b in boxes])
    f[K_TEXT].bytes_list.value.extend([_b(b.name) for b in boxes])
    f[K_LABEL].int64_list.value.extend([int(c) for c in class_ids])
    f[K_DIFFICULT].int64_list.value.extend([int(bool(b.difficult)) for b in boxes])
    f[K_TRUNCATED].int64_list.value.extend([int(bool(b.truncated)) for b in boxes])
    f[K_VIEW].bytes_list.value.extend([_b(b.pose or "Unspecified") for b in boxes])
    f[K_AREA].float_list.value.extend([float(b.area) for b in boxes])
    f[K_IS_CROWD].int64_list.value.extend([0] * len(boxes))
    return ex.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class DecodedExample:
    """One detection Example read back; boxes normalised ``(ymin, xmin, ymax, xmax)``."""

    filename: str
    source_id: str
    width: int  # -1 when the record has no image/width
    height: int  # -1 when the record has no image/height
    image_format: str
    image_bytes: bytes
    boxes_yxyx: np.ndarray  # [N, 4] float32
    class_ids: np.ndarray  # [N] int64; 0 where the record had no labels
    class_texts: list[str]  # [N]; "" where the record had no texts
    difficult: np.ndarray  # [N] bool
    truncated: np.ndarray  # [N] bool
    area: np.ndarray | None = None  # [N] float32 pixels, None when absent
    is_crowd: np.ndarray | None = None  # [N] bool, None when absent
    keys: frozenset[str] = field(default_factory=frozenset)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes_yxyx.shape[0])

    def boxes_px(self, width: int | None = None, height: int | None = None) -> list[Box]:
        """Boxes in pixels (of ``width``x``height``, default the record's size) with names."""
        w = self.width if width is None else width
        h = self.height if height is None else height
        return [
            Box.from_normalized_yxyx(
                self.boxes_yxyx[i], w, h,
                name=self.class_texts[i], difficult=bool(self.difficult[i]), truncated=bool(self.truncated[i]),
            )
            for i in range(self.num_boxes)
        ]


def _values(feature_map, key: str, kind: str) -> list | None:
    if key not in feature_map:
        return None
    feat = feature_map[key]
    which = feat.WhichOneof("kind")
    if which is None:
        return []
    if which != kind:
        raise ExampleError(f"{key} is a {which}, expected a {kind}")
    return list(getattr(feat, which).value)


def _text(v: bytes) -> str:
    return v.decode("utf-8", errors="replace")


def decode_example(serialized: bytes) -> DecodedExample:
    """Parse one record; tolerant of the old OD API tools (optional keys may be missing).

    Raises ExampleError when the bytes are not an Example or the box lists disagree.
    """
    ex = _example_class()()
    try:
        ex.ParseFromString(serialized)
    except Exception as e:  # protobuf's DecodeError (type differs between backends)
        raise ExampleError(f"not a tf.train.Example: {e}") from None
    fm = ex.features.feature

    def one(key: str, kind: str, default):
        vals = _values(fm, key, kind)
        return vals[0] if vals else default

    encoded = one(K_ENCODED, "bytes_list", None)
    if encoded is None:
        raise ExampleError(f"no {K_ENCODED}")

    coords = {k: _values(fm, k, "float_list") or [] for k in (K_YMIN, K_XMIN, K_YMAX, K_XMAX)}
    n = len(coords[K_XMIN])
    lengths = {k: len(v) for k, v in coords.items()}
    if len(set(lengths.values())) != 1:
        raise ExampleError(f"box coordinate lists differ in length: {lengths}")

    def per_box(key: str, kind: str) -> list | None:
        vals = _values(fm, key, kind)
        if not vals:
            return None if vals is None or n else []
        if len(vals) != n:
            raise ExampleError(f"{key} has {len(vals)} values for {n} boxes")
        return vals

    labels = per_box(K_LABEL, "int64_list")
    texts = per_box(K_TEXT, "bytes_list")
    difficult = per_box(K_DIFFICULT, "int64_list")
    truncated = per_box(K_TRUNCATED, "int64_list")
    area = per_box(K_AREA, "float_list")
    crowd = per_box(K_IS_CROWD, "int64_list")

    boxes = np.array(
        [coords[K_YMIN], coords[K_XMIN], coords[K_YMAX], coords[K_XMAX]], dtype=np.float32
    ).T.reshape(n, 4)
    return DecodedExample(
        filename=_text(one(K_FILENAME, "bytes_list", b"")),
        source_id=_text(one(K_SOURCE_ID, "bytes_list", b"")),
        width=int(one(K_WIDTH, "int64_list", -1)),
        height=int(one(K_HEIGHT, "int64_list", -1)),
        image_format=_text(one(K_FORMAT, "bytes_list", b"")),
        image_bytes=encoded,
        boxes_yxyx=boxes,
        class_ids=np.array(labels if labels is not None else [0] * n, dtype=np.int64),
        class_texts=[_text(t) for t in texts] if texts is not None else [""] * n,
        difficult=np.array(difficult if difficult is not None else [0] * n, dtype=bool),
        truncated=np.array(truncated if truncated is not None else [0] * n, dtype=bool),
        area=None if area is None else np.array(area, dtype=np.float32),
        is_crowd=None if crowd is None else np.array(crowd, dtype=bool),
        keys=frozenset(fm.keys()),
    )


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
    crc = crc_value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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


def write_records(path: str | os.PathLike, serialized: Iterable[bytes]) -> int:
    """Write an uncompressed TFRecord file (the bytes ``tf.io.TFRecordWriter`` writes); returns the count.

    Writes ``path`` directly: callers wanting atomic files write a temp name and rename.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    crc_value = _crc32c_value()
    n = 0
    if crc_value is not None:
        with open(path, "wb") as f:
            for rec in serialized:
                header = struct.pack("<Q", len(rec))
                f.write(header)
                f.write(struct.pack("<I", _masked_crc(crc_value, header)))
                f.write(rec)
                f.write(struct.pack("<I", _masked_crc(crc_value, rec)))
                n += 1
        return n
    tf = _quiet_tf()
    with tf.io.TFRecordWriter(os.fspath(path)) as w:
        for rec in serialized:
            w.write(rec)
            n += 1
    return n
