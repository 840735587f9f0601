"""od.io.schema: the files steps hand each other are written and read by the same code."""

from __future__ import annotations

import json
import os

import pytest

from od.io import schema


def test_model_json_round_trip_and_the_one_classes_shape(tmp_path):
    schema.write_model_json(tmp_path / schema.MODEL_FILE, {
        "classes": schema.classes_list([(1, "cat"), (2, "dog")]),
        "checkpoint": {"path": "runs/x/ckpt-5", "kind": "best", "step": 5},
    })
    info = schema.read_model_json(tmp_path)
    assert info["format"] == schema.MODEL_FORMAT and info["format_version"] == schema.MODEL_VERSION
    assert schema.model_classes(info) == {1: "cat", 2: "dog"}
    assert schema.read_model_json(tmp_path / "nothing-here") is None


@pytest.mark.parametrize("classes", [{"1": "cat"}, ["cat", "dog"], [{"id": "1", "name": "cat"}]])
def test_model_json_with_another_classes_shape_is_refused(tmp_path, classes):
    (tmp_path / schema.MODEL_FILE).write_text(json.dumps({"format": "od-export", "classes": classes}))
    with pytest.raises(schema.SchemaError, match="classes"):
        schema.read_model_json(tmp_path)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "other"}', "[" * 100000])
def test_broken_model_json_is_one_clear_error(tmp_path, text):
    (tmp_path / schema.MODEL_FILE).write_text(text)
    with pytest.raises(schema.SchemaError, match=str(tmp_path / schema.MODEL_FILE)):
        schema.read_model_json(tmp_path)


def test_model_json_that_is_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / schema.MODEL_FILE)
    with pytest.raises(schema.SchemaError, match="cannot read"):
        schema.read_model_json(tmp_path)


def test_metrics_round_trip_and_summary(tmp_path):
    path = tmp_path / schema.METRICS_FILE
    schema.write_metrics(path, {"AP50": 0.9, "step": 40, "per_class": [{"id": 1, "name": "cat", "AP50": 0.9, "pr": [1]}],
                                "confusion": [[1]]})
    m = schema.read_metrics(path)
    assert m["version"] == schema.METRICS_VERSION
    assert schema.metrics_summary(m) == {"AP50": 0.9, "step": 40, "per_class": [{"id": 1, "name": "cat", "AP50": 0.9}]}
    path.write_text(json.dumps({"AP50": 0.9}))  # no version: not od.evaluate's
    with pytest.raises(schema.SchemaError, match="version"):
        schema.read_metrics(path)


def test_report_shape_is_checked():
    good = {"splits": {"train": {"files": [schema.shard_name("train", 0, 1)], "num_images": 3}}, "label_map": "x"}
    assert schema.report_shards(schema.parse_report(json.dumps(good), "r.json")) == {"train-00000-of-00001.tfrecord"}
    for bad in ({"splits": []}, {"splits": {"train": {"files": ["../../etc/passwd"]}}},
                {"splits": {"dev": {}}}, {"splits": {}, "label_map": 5}, {"splits": {}, "classes": [1]}):
        with pytest.raises(schema.SchemaError, match="r.json"):
            schema.parse_report(json.dumps(bad), "r.json")


def test_split_files_finds_shards_and_says_what_is_there(tmp_path):
    (tmp_path / schema.shard_name("val", 0, 2)).write_bytes(b"x")
    (tmp_path / schema.shard_name("val", 1, 2)).write_bytes(b"x")
    (tmp_path / "old.record").write_bytes(b"x")
    assert [os.path.basename(f) for f in schema.split_files(tmp_path, "val")] == [
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    with pytest.raises(schema.SchemaError, match="found .*old.record"):
        schema.split_files(tmp_path, "test")
    assert schema.split_files(tmp_path / "old.record", "val") == [str(tmp_path / "old.record")]
    (tmp_path / "empty.record").write_bytes(b"")
    with pytest.raises(schema.SchemaError, match="empty record"):
        schema.split_files(tmp_path / "empty.record", "val")
