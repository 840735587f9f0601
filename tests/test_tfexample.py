"""Example schema: our TF-free encoding read back by TensorFlow, Model Garden and our decoder."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from od.io.example import DecodedExample, ExampleError, decode_example, encode_example, source_id_for
from od.io.tfrecord import iter_records, write_records
from od.core import Box

SHARED = Path(__file__).resolve().parents[2] / "shared"
RACCOON_RECORD = SHARED / "datasets" / "raccoon" / "test.record"


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


BOXES = [
    Box(8, 6, 40, 30, name="circle", difficult=True, pose="Left"),
    Box(0.5, 0, 64, 48, name="squäre", truncated=True),
]


def _encode(boxes=BOXES, ids=(1, 3), **kw) -> bytes:
    args = dict(
        image_bytes=_jpeg(), image_format="JPEG", width=64, height=48, filename="imgs/a 1.jpg",
        source_id=source_id_for("imgs/a 1.jpg"), boxes=boxes, class_ids=list(ids),
    )
    args.update(kw)
    return encode_example(**args)


def test_round_trip() -> None:
    s = _encode()
    d = decode_example(s)
    assert isinstance(d, DecodedExample)
    assert d.filename == "imgs/a 1.jpg"
    assert d.source_id == str(source_id_for("imgs/a 1.jpg")) and d.source_id.isdigit()
    assert (d.width, d.height, d.image_format) == (64, 48, "jpeg")
    assert d.image_bytes == _jpeg()
    np.testing.assert_allclose(
        d.boxes_yxyx, [[6 / 48, 8 / 64, 30 / 48, 40 / 64], [0, 0.5 / 64, 1, 1]], rtol=1e-6
    )
    assert d.boxes_yxyx.dtype == np.float32 and d.class_ids.dtype == np.int64
    assert d.class_ids.tolist() == [1, 3]
    assert d.class_texts == ["circle", "squäre"]
    assert d.difficult.tolist() == [True, False] and d.truncated.tolist() == [False, True]
    np.testing.assert_allclose(d.area, [32 * 24, 63.5 * 48])
    assert d.is_crowd.tolist() == [False, False]
    px = d.boxes_px()
    assert px[0].name == "circle" and px[0].difficult
    assert px[0].xmin == pytest.approx(8, abs=1e-4) and px[1].ymax == pytest.approx(48, abs=1e-4)


def test_negative_example_and_determinism() -> None:
    s = _encode(boxes=[], ids=[])
    d = decode_example(s)
    assert d.num_boxes == 0 and d.boxes_yxyx.shape == (0, 4) and d.class_ids.shape == (0,)
    assert _encode() == _encode()  # byte-identical


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2 boxes but 1"):
        _encode(ids=[1])
    with pytest.raises(ValueError):
        _encode(width=0)
    with pytest.raises(ExampleError):
        decode_example(b"\xff\xff\xff garbage")


def test_source_id_for() -> None:
    a = source_id_for("JPEGImages/000001.jpg")
    assert a == source_id_for("JPEGImages/000001.jpg") and 0 < a < 2**31
    ids = {source_id_for(f"img_{i}.jpg") for i in range(2000)}
    assert len(ids) == 2000


def test_encode_does_not_import_tensorflow() -> None:
    code = (
        "import sys\nfrom od.io.example import encode_example, decode_example\nfrom od.core import Box\n"
        "s = encode_example(image_bytes=b'x', image_format='jpeg', width=2, height=2, filename='f',"
        " source_id=1, boxes=[Box(0,0,1,1,name='a')], class_ids=[1])\n"
        "decode_example(s)\nprint('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tensorflow_and_model_garden_read_it(tmp_path: Path) -> None:
    import tensorflow as tf
    from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder

    s = _encode()
    # The bytes are a genuine tf.train.Example, and re-serialising gives the same bytes.
    ex = tf.train.Example.FromString(s)
    assert ex.SerializeToString(deterministic=True) == s
    feats = ex.features.feature
    assert feats["image/object/class/text"].bytes_list.value == ["circle".encode(), "squäre".encode()]
    assert feats["image/object/view"].bytes_list.value == [b"Left", b"Unspecified"]
    assert len(feats["image/key/sha256"].bytes_list.value[0]) == 64

    # Through a TFRecord file, as training reads it.
    path = tmp_path / "x.tfrecord"
    assert write_records(path, [s, _encode(boxes=[], ids=[])]) == 2
    recs = list(iter_records([path]))
    assert recs[0] == s and len(recs) == 2

    out = TfExampleDecoder().decode(tf.constant(s))
    np.testing.assert_allclose(
        out["groundtruth_boxes"].numpy(), [[6 / 48, 8 / 64, 30 / 48, 40 / 64], [0, 0.5 / 64, 1, 1]], rtol=1e-6
    )
    assert out["groundtruth_classes"].numpy().tolist() == [1, 3]
    np.testing.assert_allclose(out["groundtruth_area"].numpy(), [768, 3048])
    assert out["groundtruth_is_crowd"].numpy().tolist() == [False, False]
    assert out["image"].shape == (48, 64, 3)
    assert (int(out["height"]), int(out["width"])) == (48, 64)
    # Model Garden's eval parser turns source_id into a number; it must be a numeric string.
    sid = tf.strings.to_number(out["source_id"], tf.int64)
    assert int(sid) == source_id_for("imgs/a 1.jpg")

    neg = TfExampleDecoder().decode(tf.constant(_encode(boxes=[], ids=[])))
    assert neg["groundtruth_boxes"].shape == (0, 4)


def test_tfrecord_framing_matches_tensorflow(tmp_path: Path) -> None:
    import tensorflow as tf

    recs = [_encode(), b"", b"x" * 1000]
    ours = tmp_path / "ours.tfrecord"
    write_records(ours, recs)
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as w:
        for r in recs:
            w.write(r)
    assert ours.read_bytes() == theirs.read_bytes()
    assert [bytes(r) for r in tf.data.TFRecordDataset(str(ours)).as_numpy_iterator()] == recs
    assert list(iter_records([ours, theirs])) == recs * 2

    # Damage is detected (checksums), after the good records before it.
    data = bytearray(ours.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    got = []
    with pytest.raises(Exception, match="(?i)corrupt|checksum|data ?loss"):
        for r in iter_records(bad):
            got.append(r)
    assert got == recs[:2]
    data = ours.read_bytes()
    (tmp_path / "short.tfrecord").write_bytes(data[: len(data) - 3])
    with pytest.raises(Exception, match="truncated"):
        list(iter_records(tmp_path / "short.tfrecord"))


def test_old_od_api_record() -> None:
    if not RACCOON_RECORD.exists():
        pytest.skip(f"{RACCOON_RECORD} not present")
    import tensorflow as tf

    recs = list(iter_records(RACCOON_RECORD))
    assert len(recs) == 40
    for rec in recs:
        d = decode_example(rec)
        ref = tf.train.Example.FromString(rec).features.feature
        assert d.filename.startswith("raccoon-") and d.filename.endswith(".jpg")
        assert d.source_id == d.filename  # the old tools stored the name: not numeric
        assert d.width == ref["image/width"].int64_list.value[0] and d.height > 0
        assert d.image_format == "jpg"
        assert d.num_boxes >= 1 and d.class_ids.tolist() == [1] * d.num_boxes
        assert d.class_texts == ["raccoon"] * d.num_boxes
        np.testing.assert_array_equal(d.boxes_yxyx[:, 1], np.float32(ref["image/object/bbox/xmin"].float_list.value))
        np.testing.assert_array_equal(d.boxes_yxyx[:, 2], np.float32(ref["image/object/bbox/ymax"].float_list.value))
        assert d.area is None and d.is_crowd is None
        assert not d.difficult.any() and not d.truncated.any()
        with Image.open(io.BytesIO(d.image_bytes)) as im:
            assert im.size == (d.width, d.height)
    first = decode_example(recs[0])
    assert first.filename == "raccoon-129.jpg" and first.boxes_yxyx.shape == (1, 4)
    np.testing.assert_allclose(first.boxes_yxyx[0], [0.07619048, 0.22222222, 0.87619048, 0.69170576], rtol=1e-6)


# --------------------------------------------------------------------------- protobuf + the image entry framed by hand


def _encode_with_protobuf(*, image_bytes, image_format, width, height, filename, source_id, boxes, class_ids) -> bytes:
    """The reference: the same Example built as a protobuf message and serialised deterministically."""
    import hashlib

    import od.io.example as tfe

    ex = tfe._example_class()()
    f = ex.features.feature
    b_ = tfe._b
    f[tfe.K_ENCODED].bytes_list.value.append(image_bytes)
    f[tfe.K_FORMAT].bytes_list.value.append(b_(image_format.lower()))
    f[tfe.K_HEIGHT].int64_list.value.append(int(height))
    f[tfe.K_WIDTH].int64_list.value.append(int(width))
    f[tfe.K_FILENAME].bytes_list.value.append(b_(filename))
    f[tfe.K_SOURCE_ID].bytes_list.value.append(str(int(source_id)).encode("ascii"))
    f[tfe.K_SHA256].bytes_list.value.append(hashlib.sha256(image_bytes).hexdigest().encode("ascii"))
    w, h = float(width), float(height)
    f[tfe.K_XMIN].float_list.value.extend([b.xmin / w for b in boxes])
    f[tfe.K_YMIN].float_list.value.extend([b.ymin / h for b in boxes])
    f[tfe.K_XMAX].float_list.value.extend([b.xmax / w for b in boxes])
    f[tfe.K_YMAX].float_list.value.extend([b.ymax / h for b in boxes])
    f[tfe.K_TEXT].bytes_list.value.extend([b_(b.name) for b in boxes])
    f[tfe.K_LABEL].int64_list.value.extend([int(c) for c in class_ids])
    f[tfe.K_DIFFICULT].int64_list.value.extend([int(bool(b.difficult)) for b in boxes])
    f[tfe.K_TRUNCATED].int64_list.value.extend([int(bool(b.truncated)) for b in boxes])
    f[tfe.K_VIEW].bytes_list.value.extend([b_(b.pose or "Unspecified") for b in boxes])
    f[tfe.K_AREA].float_list.value.extend([float(b.area) for b in boxes])
    f[tfe.K_IS_CROWD].int64_list.value.extend([0] * len(boxes))
    return ex.SerializeToString(deterministic=True)


def _random_cases(n: int):
    import random

    rng = random.Random(7)
    names = ["a", "squäre", "x" * 200, "", "raccoon", "日本"]
    for _ in range(n):
        nb = rng.choice([0, 1, 2, 3, 20, 130])  # 130: lists longer than a one-byte length
        W = rng.choice([1, 64, 127, 128, 16384, 2**31])
        H = rng.choice([1, 48, 128, 5000, 2**40])
        boxes = [
            Box(rng.uniform(-10, W), rng.uniform(0, H), rng.uniform(0, 2 * W), rng.choice([rng.uniform(0, H), 5, 0]),
                name=rng.choice(names), difficult=rng.random() < 0.3, truncated=rng.random() < 0.3,
                pose=rng.choice(["Left", "", "Unspecified", "ü" * 100]))
            for _ in range(nb)
        ]
        yield dict(
            image_bytes=rng.randbytes(rng.choice([0, 1, 125, 128, 16384, 300_000])),
            image_format=rng.choice(["JPEG", "png"]), width=W, height=H,
            filename=rng.choice(names) + ".jpg", source_id=rng.choice([0, 1, 2**31 - 2, 2**53]),
            boxes=boxes, class_ids=[rng.choice([0, 1, 127, 128, 300, 2**40, -1, -(2**63)]) for _ in range(nb)],
        )


def test_encoding_is_protobufs_serialisation_of_the_whole_example() -> None:
    from od.io.example import encode_example_parts

    for kw in _random_cases(400):
        ref = _encode_with_protobuf(**kw)
        assert encode_example(**kw) == ref
        prefix, image, suffix = encode_example_parts(**kw)
        assert image is kw["image_bytes"]  # the image is not copied
        assert prefix + image + suffix == ref
    assert _encode() == _encode_with_protobuf(
        image_bytes=_jpeg(), image_format="JPEG", width=64, height=48, filename="imgs/a 1.jpg",
        source_id=source_id_for("imgs/a 1.jpg"), boxes=BOXES, class_ids=[1, 3],
    )


def test_encoding_parses_as_tf_example_and_parts_write_like_tensorflow(tmp_path: Path) -> None:
    import tensorflow as tf

    from od.io.example import encode_example_parts
    from od.io.tfrecord import RecordWriter

    cases = list(_random_cases(40))
    for kw in cases:
        s = encode_example(**kw)
        ex = tf.train.Example.FromString(s)
        assert ex.SerializeToString(deterministic=True) == s
        feats = ex.features.feature
        assert feats["image/encoded"].bytes_list.value[0] == kw["image_bytes"]
        assert list(feats["image/object/class/label"].int64_list.value) == kw["class_ids"]
    # Parts (head, image, rest) through RecordWriter == whole records through TF's writer.
    ours = tmp_path / "ours.tfrecord"
    with RecordWriter(ours) as w:
        for kw in cases:
            w.write(encode_example_parts(**kw))
        w.write(b"")
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as tw:
        for kw in cases:
            tw.write(encode_example(**kw))
        tw.write(b"")
    assert ours.read_bytes() == theirs.read_bytes()
    assert w.count == len(cases) + 1
