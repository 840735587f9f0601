"""The OD API ``tf.train.Example`` schema for detection: encode and decode.

Encoding and decoding do not import TensorFlow (``from tensorflow.core.example
import example_pb2`` runs ``tensorflow/__init__``: measured 4.5 s, ~4300 modules).
Decoding parses with the very same message type (``tensorflow.Example`` with the
field numbers of ``tensorflow/core/example/{feature,example}.proto``) built from a
runtime descriptor with the ``protobuf`` package alone. Encoding writes the protobuf
wire format by hand: the bytes are exactly protobuf's deterministic serialisation
(map keys sorted), so the same input gives byte-identical records in any process, but
a multi-MB image is never copied into a message and out again (tests compare with
protobuf, ``tf.train.Example`` and Model Garden's ``TfExampleDecoder``).

Reading/writing TFRecord *files* is TF-free too when ``google_crc32c`` (C
implementation) is installed: the framing is trivial, only the crc32c checksums
need native speed. Without it, TensorFlow's reader/writer is imported lazily.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from array import array
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


# --------------------------------------------------------------------------- wire format
#
# ``encode_example`` writes the protobuf wire format by hand: building a upb message
# copies every byte string into it and serialising copies them again (for a 1.5 MB
# photo that was ~10 ms of the ~13 ms per image). The layout is what protobuf's
# deterministic serialisation emits for ``Example{Features{map<string, Feature>}}``:
# map entries sorted by key, each entry ``key`` (field 1) then ``value`` (field 2), the
# Feature's oneof always present (an empty list is an empty sub-message), floats and
# int64s packed. Tests compare it byte for byte with protobuf and ``tf.train.Example``.

_BYTE = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    """Unsigned LEB128 (negative int64 as its 64-bit two's complement, like protobuf)."""
    if 0 <= n < 128:
        return _BYTE[n]
    if 0 < n < 0x200000:  # lengths of up to 2 MB: no loop
        if n < 0x4000:
            return bytes((n & 0x7F | 0x80, n >> 7))
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _entry_head(key: str) -> bytes:
    """FeatureEntry bytes up to (and including) the value's tag: ``key`` field, value tag."""
    k = key.encode("ascii")
    return b"\x0a" + _varint(len(k)) + k + b"\x12"


def _one_bytes_feature(v: bytes) -> bytes:
    n = len(v)
    if n < 126:
        return b"\x0a%c\x0a%c%b" % (n + 2, n, v)
    inner = b"\x0a" + _varint(n) + v
    return b"\x0a" + _varint(len(inner)) + inner


if sys.byteorder == "little":
    def _packed_floats(values) -> bytes:
        return array("f", values).tobytes()
else:  # pragma: no cover - big-endian hosts
    def _packed_floats(values) -> bytes:
        a = array("f", values)
        a.byteswap()
        return a.tobytes()


def _int64_feature(values) -> bytes:
    if not values:
        return b"\x1a\x00"
    if min(values) >= 0 and max(values) < 128:
        packed = bytes(values)
    else:
        packed = b"".join([_varint(v) for v in values])
    body = b"\x0a" + _varint(len(packed)) + packed
    return b"\x1a" + _varint(len(body)) + body


def _entry_pieces(head: bytes, feature: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """One map entry of ``Features.feature`` (tag, length, key + value tag, value length, value)."""
    lf = len(feature)
    vf = _BYTE[lf] if lf < 128 else _varint(lf)
    ne = len(head) + len(vf) + lf
    return b"\x0a", _BYTE[ne] if ne < 128 else _varint(ne), head, vf, feature


# Map keys in protobuf's deterministic order (bytewise). image/encoded sorts first, which
# lets the big image bytes sit between a small prefix and the rest of the message.
_ORDER = (
    K_ENCODED, K_FILENAME, K_FORMAT, K_HEIGHT, K_SHA256, K_AREA, K_XMAX, K_XMIN, K_YMAX, K_YMIN, K_LABEL,
    K_TEXT, K_DIFFICULT, K_IS_CROWD, K_TRUNCATED, K_VIEW, K_SOURCE_ID, K_WIDTH,
)
assert list(_ORDER) == sorted(_ORDER, key=lambda k: k.encode("utf-8")) and len(set(_ORDER)) == 18
(_H_ENCODED, _H_FILENAME, _H_FORMAT, _H_HEIGHT, _H_SHA256, _H_AREA, _H_XMAX, _H_XMIN, _H_YMAX, _H_YMIN, _H_LABEL,
 _H_TEXT, _H_DIFFICULT, _H_IS_CROWD, _H_TRUNCATED, _H_VIEW, _H_SOURCE_ID, _H_WIDTH) = (_entry_head(k) for k in _ORDER)
# The per-object entries of a negative (box-less) Example never change.
_EMPTY_OBJECTS = b"".join(
    b"".join(_entry_pieces(head, empty)) for head, empty in (
        (_H_AREA, b"\x12\x00"), (_H_XMAX, b"\x12\x00"), (_H_XMIN, b"\x12\x00"), (_H_YMAX, b"\x12\x00"),
        (_H_YMIN, b"\x12\x00"), (_H_LABEL, b"\x1a\x00"), (_H_TEXT, b"\x0a\x00"), (_H_DIFFICULT, b"\x1a\x00"),
        (_H_IS_CROWD, b"\x1a\x00"), (_H_TRUNCATED, b"\x1a\x00"), (_H_VIEW, b"\x0a\x00"),
    )
)


@functools.lru_cache(maxsize=1024)
def _packed_heads(n: int) -> tuple[bytes, ...]:
    """Entry bytes before the packed values of the per-object keys, for ``n`` boxes.

    Floats take 4 bytes each and 0/1 flags (and labels below 128) one, so all the framing
    of these entries depends on ``n`` alone: computed once per box count. Order: area,
    xmax, xmin, ymax, ymin, label, difficult, is_crowd (whole entry: all zeros), truncated.
    """

    def head(key_head: bytes, list_tag: bytes, packed_len: int) -> bytes:
        lp = _varint(packed_len)
        feat_head = list_tag + _varint(1 + len(lp) + packed_len) + b"\x0a" + lp
        lf = len(feat_head) + packed_len
        vf = _varint(lf)
        return b"\x0a" + _varint(len(key_head) + len(vf) + lf) + key_head + vf + feat_head

    floats = tuple(head(k, b"\x12", 4 * n) for k in (_H_AREA, _H_XMAX, _H_XMIN, _H_YMAX, _H_YMIN))
    label, difficult, truncated = (head(k, b"\x1a", n) for k in (_H_LABEL, _H_DIFFICULT, _H_TRUNCATED))
    return (*floats, label, difficult, head(_H_IS_CROWD, b"\x1a", n) + bytes(n), truncated)


_PIECES: dict = {}  # str/bytes -> its BytesList value bytes (class names and poses repeat)


def _value_piece(v) -> bytes:
    """One BytesList value: tag, length, UTF-8 bytes (remembered for the first few thousand values)."""
    b = _b(v)
    piece = b"\x0a" + _varint(len(b)) + b
    if len(_PIECES) < 4096:
        _PIECES[v] = piece
    return piece


def _entry(out: list, head: bytes, feat: bytes) -> None:
    """Append one map entry (see ``_entry_pieces``) to ``out``."""
    lf = len(feat)
    ne = len(head) + 1 + lf
    if ne < 128:
        out.append(b"\x0a%c%b%c" % (ne, head, lf))
        out.append(feat)
    else:
        out += _entry_pieces(head, feat)


def _bytes_entry(head: bytes, v: bytes) -> bytes:
    """The map entry of a BytesList feature holding the one value ``v``."""
    n = len(v)
    ne = len(head) + n + 5
    if ne < 128:  # every length fits one byte
        return b"\x0a%c%b%c\x0a%c\x0a%c%b" % (ne, head, n + 4, n + 2, n, v)
    return b"".join(_entry_pieces(head, _one_bytes_feature(v)))


def _int_entry(head: bytes, v: int) -> bytes:
    """The map entry of an Int64List feature holding the one value ``v``."""
    p = _varint(v)
    n = len(p)
    return b"\x0a%c%b%c\x1a%c\x0a%c%b" % (len(head) + n + 5, head, n + 4, n + 2, n, p)


def _common_objects(out: list, boxes: Sequence[Box], class_ids: Sequence[int], w: float, h: float) -> None:
    """Append the 11 per-object entries, computed in one pass over the boxes.

    Floats and small ints are packed (protobuf's encoding for repeated scalars); the
    framing of the fixed-size entries depends on the box count alone (``_packed_heads``).
    """
    n = len(boxes)
    areas, xmaxs, xmins, ymaxs, ymins, flags, trunc, texts, views = [], [], [], [], [], [], [], [], []
    piece = _PIECES.get
    for b in boxes:
        x0, y0, x1, y1 = b.xmin, b.ymin, b.xmax, b.ymax
        # Box.area, inline (a subclass may define its own)
        areas.append(float(max(0.0, x1 - x0) * max(0.0, y1 - y0) if type(b) is Box else b.area))
        xmaxs.append(x1 / w)
        xmins.append(x0 / w)
        ymaxs.append(y1 / h)
        ymins.append(y0 / h)
        flags.append(1 if b.difficult else 0)
        trunc.append(1 if b.truncated else 0)
        name, pose = b.name, b.pose or "Unspecified"
        texts.append(piece(name) or _value_piece(name))
        views.append(piece(pose) or _value_piece(pose))
    labels = [int(c) for c in class_ids]
    packed = _packed_floats(areas + xmaxs + xmins + ymaxs + ymins)
    heads = _packed_heads(n)
    m = 4 * n
    out += (heads[0], packed[:m], heads[1], packed[m : 2 * m], heads[2], packed[2 * m : 3 * m],
            heads[3], packed[3 * m : 4 * m], heads[4], packed[4 * m :])
    if min(labels) >= 0 and max(labels) < 128:
        out += (heads[5], bytes(labels))
    else:
        _entry(out, _H_LABEL, _int64_feature(labels))
    body = b"".join(texts)
    _entry(out, _H_TEXT, b"\x0a" + _varint(len(body)) + body)
    out += (heads[6], bytes(flags), heads[7], heads[8], bytes(trunc))
    body = b"".join(views)
    _entry(out, _H_VIEW, b"\x0a" + _varint(len(body)) + body)


def _suffix(fname: bytes, fmt: bytes, height, sha256_hex, boxes, class_ids, sid: bytes, width) -> bytes:
    """Every map entry after image/encoded, in key order."""
    out = [
        _bytes_entry(_H_FILENAME, fname), _bytes_entry(_H_FORMAT, fmt), _int_entry(_H_HEIGHT, int(height)),
        _bytes_entry(_H_SHA256, sha256_hex),
    ]
    if boxes:
        _common_objects(out, boxes, class_ids, float(width), float(height))
    else:
        out.append(_EMPTY_OBJECTS)
    out.append(_bytes_entry(_H_SOURCE_ID, sid))
    out.append(_int_entry(_H_WIDTH, int(width)))
    return b"".join(out)


def encode_example_parts(
    *,
    image_bytes,
    image_format: str,
    width: int,
    height: int,
    filename: str,
    source_id: int,
    boxes: Sequence[Box],
    class_ids: Sequence[int],
    sha256_hex: bytes | None = None,
) -> tuple[bytes, object, bytes]:
    """``(prefix, image_bytes, suffix)`` whose concatenation is ``encode_example(...)``.

    Lets a writer put the (possibly multi-MB) image on disk straight from the buffer
    it was read into, with no concatenated copy. ``image_bytes`` may be any bytes-like
    object; ``sha256_hex`` (hex digest as ASCII bytes) saves hashing it again.
    """
    if len(boxes) != len(class_ids):
        raise ValueError(f"{filename}: {len(boxes)} boxes but {len(class_ids)} class ids")
    if width <= 0 or height <= 0:
        raise ValueError(f"{filename}: image size {width}x{height} is not positive")
    if isinstance(source_id, bool) or int(source_id) < 0:
        raise ValueError(f"{filename}: source_id must be a non-negative integer, got {source_id!r}")
    if sha256_hex is None:
        sha256_hex = hashlib.sha256(image_bytes).hexdigest().encode("ascii")

    fname, fmt = _b(filename), _b(image_format.lower())
    sid = str(int(source_id)).encode("ascii")
    suffix = _suffix(fname, fmt, height, sha256_hex, boxes, class_ids, sid, width)

    n_img = len(image_bytes) if type(image_bytes) is bytes else memoryview(image_bytes).nbytes
    v_img = _varint(n_img)
    n_list = 1 + len(v_img) + n_img  # BytesList{value: image}
    v_list = _varint(n_list)
    n_feat = 1 + len(v_list) + n_list  # Feature{bytes_list}
    v_feat = _varint(n_feat)
    n_entry = len(_H_ENCODED) + len(v_feat) + n_feat
    v_entry = _varint(n_entry)
    n_features = 1 + len(v_entry) + n_entry + len(suffix)
    prefix = b"".join(
        (b"\x0a", _varint(n_features), b"\x0a", v_entry, _H_ENCODED, v_feat, b"\x0a", v_list, b"\x0a", v_img)
    )
    return prefix, image_bytes, suffix


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
