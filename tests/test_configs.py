"""od.model config building (templates, --set, record values, render, model dir) and the od.configs CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from od import configs
from od.model.errors import ConfigError
from od.model.model_dir import HEADER_FILE, PIPELINE_FILE, config_yaml, header_yaml, load_model_dir
from od.model.render import render
from od.model.templates import available_templates, templates_dir

CPU = "faster_rcnn_resnet18_fpn_cpu"


def _records(tmp_path: Path, classes=("circle", "square", "triangle"), n_train=10, n_val=5) -> Path:
    """A records folder as od.records writes it (shards only need to exist and be non-empty here)."""
    d = tmp_path / "records"
    d.mkdir()
    (d / "train-00000-of-00002.tfrecord").write_bytes(b"x")
    (d / "train-00001-of-00002.tfrecord").write_bytes(b"x")
    (d / "val-00000-of-00001.tfrecord").write_bytes(b"x")
    lm = tmp_path / "label_map.pbtxt"
    lm.write_text("".join(f"item {{\n  id: {i}\n  name: '{c}'\n}}\n" for i, c in enumerate(classes, 1)))
    report = {"version": 1, "data_dir": str(tmp_path / "data"), "label_map": str(lm),
              "classes": [{"id": i, "name": c} for i, c in enumerate(classes, 1)], "num_classes": len(classes),
              "splits": {"train": {"files": [], "num_images": n_train}, "val": {"files": [], "num_images": n_val}},
              "problems": []}
    (d / "report.json").write_text(json.dumps(report))
    return d


def test_render_fills_classes_paths_and_counts_from_report(tmp_path):
    rec = _records(tmp_path, classes=("a", "b", "c", "d", "e"), n_val=9)
    r = render(CPU, str(rec))
    p = r.params
    assert p.task.model.num_classes == 6  # 5 classes + background
    assert p.task.train_data.input_path == str(rec / "train-*-of-*.tfrecord")
    assert p.task.validation_data.input_path == str(rec / "val-*-of-*.tfrecord")
    assert p.trainer.validation_steps == 3  # ceil(9 / 4): the whole val set
    assert p.task.validation_data.num_examples == 9
    # Model Garden 2.20 traps handled by the template.
    assert p.runtime.mixed_precision_dtype == "float32"
    assert p.task.train_data.dtype == "float32" and p.task.validation_data.dtype == "float32"
    assert p.task.annotation_file is None
    assert p.trainer.summary_interval % p.trainer.steps_per_loop == 0
    assert p.task.model.backbone.resnet.model_id == 18
    assert p.task.model.detection_head.num_convs == 0 and p.task.model.detection_head.num_fcs == 2
    assert p.task.model.roi_sampler.num_sampled_rois == 128
    assert p.trainer.optimizer_config.learning_rate.cosine.decay_steps == p.trainer.train_steps
    assert r.header["classes"][0] == {"id": 1, "name": "a"} and r.header["template"] == CPU


def test_set_overrides_with_yaml_values(tmp_path):
    rec = _records(tmp_path)
    r = render(CPU, str(rec), overrides=[
        "task.model.input_size=[320,320,3]", "trainer.train_steps=1234",
        "task.validation_data.global_batch_size=2", "task.train_data.parser.aug_rand_hflip=false"])
    p = r.params
    assert list(p.task.model.input_size) == [320, 320, 3]
    assert p.trainer.train_steps == 1234
    assert p.trainer.optimizer_config.learning_rate.cosine.decay_steps == 1234  # follows --steps
    assert p.trainer.validation_steps == 3  # ceil(5 / 2)
    assert p.task.train_data.parser.aug_rand_hflip is False


@pytest.mark.parametrize("key,suggestion", [
    ("trainer.train_step", "trainer.train_steps"),
    ("task.model.num_clases", "task.model.num_classes"),
    ("task.model.input_sise", "task.model.input_size"),
    ("task.train_data.global_batchsize", "task.train_data.global_batch_size"),
])
def test_unknown_keys_rejected_with_closest_suggestions(tmp_path, key, suggestion):
    rec = _records(tmp_path)
    with pytest.raises(ConfigError) as e:
        render(CPU, str(rec), overrides=[f"{key}=1"])
    assert key in str(e.value) and suggestion in str(e.value)


def test_cli_render_writes_complete_yaml_and_rejects_typos(tmp_path, capsys):
    rec = _records(tmp_path)
    out = tmp_path / "pipeline.yaml"
    assert configs.main(["render", "--config", CPU, "--records", str(rec), "--set", "trainer.train_steps=50",
                         "--out", str(out)]) == 0
    d = yaml.safe_load(out.read_text())
    assert set(d) >= {"task", "trainer", "runtime"}
    assert d["task"]["model"]["num_classes"] == 4 and d["trainer"]["train_steps"] == 50
    assert configs.main(["render", "--config", CPU, "--records", str(rec), "--out", str(out)]) == 2  # no silent overwrite
    assert configs.main(["render", "--config", CPU, "--records", str(rec), "--set", "trainer.trian_steps=5"]) == 2
    err = capsys.readouterr().err
    assert "trainer.trian_steps" in err and "trainer.train_steps" in err


def test_label_map_class_count_must_match_config(tmp_path):
    rec = _records(tmp_path)
    with pytest.raises(ConfigError, match="num_classes=7 .* 3 classes"):
        render(CPU, str(rec), overrides=["task.model.num_classes=7"])


def test_records_labels_not_in_label_map_are_caught(tmp_path):
    rec = _records(tmp_path)
    other = tmp_path / "other.pbtxt"
    other.write_text("item { id: 1 name: 'circle' }\nitem { id: 2 name: 'square' }\n")
    with pytest.raises(ConfigError, match="triangle"):
        render(CPU, str(rec), label_map=str(other))


def test_missing_and_empty_records_fail_early(tmp_path):
    rec = _records(tmp_path)
    for f in rec.glob("val-*"):
        f.unlink()
    with pytest.raises(ConfigError, match="no validation records match .*val-"):
        render(CPU, str(rec))
    (rec / "val-00000-of-00001.tfrecord").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty record file"):
        render(CPU, str(rec))


def test_intervals_are_made_multiples_of_steps_per_loop(tmp_path):
    rec = _records(tmp_path)
    p = render(CPU, str(rec), overrides=["trainer.steps_per_loop=20", "trainer.summary_interval=30",
                                                  "trainer.checkpoint_interval=50"]).params
    assert p.trainer.summary_interval % 20 == 0 and p.trainer.checkpoint_interval % 20 == 0


def test_all_templates_render_and_template_paths_work(tmp_path):
    rec = _records(tmp_path)
    names = available_templates()
    assert {CPU, "faster_rcnn_resnet50_fpn", "retinanet_resnet50_fpn"} <= set(names)
    for n in names:
        r = render(n, str(rec))
        assert r.params.task.model.num_classes == 4
    path = templates_dir() / f"{CPU}.yaml"
    assert render(str(path), str(rec)).header["template"] == CPU
    with pytest.raises(ConfigError, match=CPU):
        render("faster_rcnn_resnet18_fpn_cp", str(rec))


def test_load_model_dir_round_trip(tmp_path):
    rec = _records(tmp_path)
    r = render(CPU, str(rec), overrides=["trainer.train_steps=77"])
    md = tmp_path / "run"
    md.mkdir()
    (md / PIPELINE_FILE).write_text(config_yaml(r.params))
    (md / HEADER_FILE).write_text(header_yaml(r.header))
    params, header = load_model_dir(md)
    assert params.as_dict() == r.params.as_dict()
    assert header["template"] == CPU and header["classes"] == r.header["classes"]
    with pytest.raises(ConfigError, match="not an od model dir"):
        load_model_dir(tmp_path / "nowhere")
