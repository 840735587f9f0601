"""The OD API ``tf.train.Example`` schema for detection: encode and decode, without TensorFlow.

``from tensorflow.core.example import example_pb2`` runs ``tensorflow/__init__`` (4.5 s,
~4300 modules), so the message type (``tensorflow.Example`` with the field numbers of
``tensorflow/core/example/{feature,example}.proto``) is built from a runtime descriptor
with the ``protobuf`` package alone. Encoding is protobuf's deterministic serialisation
(map keys sorted), so the same input gives byte-identical records in any process; only
the image's own entry is framed by hand, so that a multi-MB image is never copied (tests
compare with protobuf, ``tf.train.Example`` and Model Garden's ``TfExampleDecoder``).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from od.core import Box

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

# Classification (Model Garden's classification_input.Decoder reads image/encoded + image/class/label).
K_CLASS_LABEL = "image/class/label"  # 0-based: label map id - 1, the line of labels.txt
K_CLASS_TEXT = "image/class/text"

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
    return _source_id_of_digest(hashlib.sha256(key.encode("utf-8")).digest())


def _source_id_of_digest(digest: bytes) -> int:
    """``source_id_for`` given the key's sha256 digest (callers that need it anyway hash once)."""
    return int.from_bytes(digest[:8], "big") % (_SOURCE_ID_MOD - 1) + 1


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8")


# --------------------------------------------------------------------------- encoding
#
# protobuf builds and serialises every small feature. Only the image/encoded entry is
# framed here: putting a multi-MB image into a message copies it in, and serialising copies
# it out again (measured: converting 1.2 MB photos took 3x as long). image/encoded sorts
# first among the keys and deterministic serialisation writes map entries in key order, so
# the whole message is: the Example's header, the image's entry, the entries protobuf wrote.
# Tests check the result against protobuf serialising it all.

_ENCODED_KEY = b"\x0a\x0d" + K_ENCODED.encode("ascii") + b"\x12"  # entry: key field, then the value's tag
assert K_ENCODED == min(v for k, v in dict(globals()).items() if k.startswith("K_") and "/class/" not in v)


def _varint(n: int) -> bytes:
    """protobuf's varint of a non-negative integer (a length)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_example_parts(
    *,
    image_bytes: bytes,
    image_format: str,
    width: int,
    height: int,
    filename: str,
    source_id: int,
    boxes: Sequence[Box],
    class_ids: Sequence[int],
    sha256_hex: bytes | None = None,
) -> tuple[bytes, bytes, bytes]:
    """``(head, image_bytes, rest)`` whose concatenation is ``encode_example(...)``.

    Lets a writer put the image on disk from the buffer it was read into, never copied.
    ``sha256_hex`` (hex digest as ASCII bytes) saves hashing the image again.
    """
    if len(boxes) != len(class_ids):
        raise ValueError(f"{filename}: {len(boxes)} boxes but {len(class_ids)} class ids")
    if width <= 0 or height <= 0:
        raise ValueError(f"{filename}: image size {width}x{height} is not positive")
    if isinstance(source_id, bool) or int(source_id) < 0:
        raise ValueError(f"{filename}: source_id must be a non-negative integer, got {source_id!r}")
    if sha256_hex is None:
        sha256_hex = hashlib.sha256(image_bytes).hexdigest().encode("ascii")
    ex = _example_class()()
    f = ex.features.feature
    w, h = float(width), float(height)
    for key, values in (
        (K_FILENAME, [_b(filename)]), (K_FORMAT, [_b(image_format.lower())]), (K_SHA256, [sha256_hex]),
        (K_SOURCE_ID, [str(int(source_id)).encode("ascii")]),
        (K_TEXT, [_b(b.name) for b in boxes]), (K_VIEW, [_b(b.pose or "Unspecified") for b in boxes]),
    ):
        f[key].bytes_list.value.extend(values)
    for key, values in (
        (K_XMIN, [b.xmin / w for b in boxes]), (K_YMIN, [b.ymin / h for b in boxes]),
        (K_XMAX, [b.xmax / w for b in boxes]), (K_YMAX, [b.ymax / h for b in boxes]),
        (K_AREA, [float(b.area) for b in boxes]),
    ):
        f[key].float_list.value.extend(values)
    for key, values in (
        (K_HEIGHT, [int(height)]), (K_WIDTH, [int(width)]), (K_LABEL, [int(c) for c in class_ids]),
        (K_DIFFICULT, [int(bool(b.difficult)) for b in boxes]),
        (K_TRUNCATED, [int(bool(b.truncated)) for b in boxes]), (K_IS_CROWD, [int(bool(b.is_crowd)) for b in boxes]),
    ):
        f[key].int64_list.value.extend(values)
    rest = ex.SerializeToString(deterministic=True)  # 0x0a, length, the map entries in key order
    start = 2
    while rest[start - 1] & 0x80:
        start += 1
    rest = rest[start:]
    n = len(image_bytes)
    value = b"\x0a" + _varint(n)  # BytesList.value
    feature = b"\x0a" + _varint(len(value) + n)  # Feature.bytes_list
    key = _ENCODED_KEY + _varint(len(feature) + len(value) + n)  # the entry's key and value tag
    entry = b"\x0a" + _varint(len(key) + len(feature) + len(value) + n)  # Features.feature: the image's entry
    features = len(entry) + len(key) + len(feature) + len(value) + n + len(rest)
    return b"".join((b"\x0a", _varint(features), entry, key, feature, value)), image_bytes, rest


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
    exactly (no clipping here: ``records`` decides what to do with bad boxes). The bytes
    are protobuf's deterministic serialisation (map keys sorted).
    """
    return b"".join(
        encode_example_parts(
            image_bytes=image_bytes, image_format=image_format, width=width, height=height, filename=filename,
            source_id=source_id, boxes=boxes, class_ids=class_ids,
        )
    )


def encode_classification_example(
    *, image_bytes: bytes, image_format: str, width: int, height: int, filename: str, source_id: int,
    label: int, text: str,
) -> bytes:
    """Serialized ``tf.train.Example`` of one labelled image (``label`` 0-based), deterministic.

    Built whole by protobuf: image/class/* sort before image/encoded, so the detection
    encoder's framing (image entry first) does not apply, and one copy of a crop-sized
    image costs little.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"{filename}: image size {width}x{height} is not positive")
    if isinstance(label, bool) or int(label) < 0:
        raise ValueError(f"{filename}: class label must be a non-negative integer, got {label!r}")
    ex = _example_class()()
    f = ex.features.feature
    for key, value in ((K_ENCODED, image_bytes), (K_FORMAT, _b(image_format.lower())), (K_FILENAME, _b(filename)),
                       (K_SOURCE_ID, str(int(source_id)).encode("ascii")), (K_CLASS_TEXT, _b(text))):
        f[key].bytes_list.value.append(value)
    for key, value in ((K_CLASS_LABEL, int(label)), (K_HEIGHT, int(height)), (K_WIDTH, int(width))):
        f[key].int64_list.value.append(value)
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
                is_crowd=bool(self.is_crowd[i]) if self.is_crowd is not None else False,
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


@dataclass(frozen=True)
class DecodedLabel:
    """One classification Example read back: 0-based label (line of labels.txt) and where it came from."""

    label: int
    text: str
    filename: str
    source_id: str
    image_bytes: bytes


def decode_classification_example(serialized: bytes) -> DecodedLabel:
    """Parse one classification record; raises ExampleError when it is not one."""
    ex = _example_class()()
    try:
        ex.ParseFromString(serialized)
    except Exception as e:  # protobuf's DecodeError (type differs between backends)
        raise ExampleError(f"not a tf.train.Example: {e}") from None
    fm = ex.features.feature
    labels = _values(fm, K_CLASS_LABEL, "int64_list")
    if not labels:
        raise ExampleError(f"no {K_CLASS_LABEL} (not a classification record)")
    encoded = _values(fm, K_ENCODED, "bytes_list")
    if not encoded:
        raise ExampleError(f"no {K_ENCODED}")

    def text(key: str) -> str:
        vals = _values(fm, key, "bytes_list")
        return _text(vals[0]) if vals else ""

    return DecodedLabel(int(labels[0]), text(K_CLASS_TEXT), text(K_FILENAME), text(K_SOURCE_ID), bytes(encoded[0]))
