"""od.model config building (templates, --set, record values, render, model dir) and the od.configs CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from od import configs
from od.model.errors import ConfigError
from od.model.model_dir import (
    HEADER_FILE,
    PIPELINE_FILE,
    config_yaml,
    header_yaml,
    load_model_dir,
)
from od.model.render import render
from od.model.templates import available_templates, templates_dir

CPU = "faster_rcnn_resnet18_fpn_cpu"


def _records(tmp_path: Path, classes=("circle", "square", "triangle"), n_train=10, n_val=5,
             task: str | None = None, name: str = "records") -> Path:
    """A records folder as od.records writes it (shards only need to exist and be non-empty here)."""
    d = tmp_path / name
    d.mkdir()
    (d / "train-00000-of-00002.tfrecord").write_bytes(b"x")
    (d / "train-00001-of-00002.tfrecord").write_bytes(b"x")
    (d / "val-00000-of-00001.tfrecord").write_bytes(b"x")
    lm = d / "label_map.pbtxt"
    lm.write_text("".join(f"item {{\n  id: {i}\n  name: '{c}'\n}}\n" for i, c in enumerate(classes, 1)))
    report = {"version": 1, "data_dir": str(tmp_path / "data"), "label_map": str(lm),
              "classes": [{"id": i, "name": c} for i, c in enumerate(classes, 1)], "num_classes": len(classes),
              "splits": {"train": {"files": [], "num_images": n_train}, "val": {"files": [], "num_images": n_val}},
              "problems": []}
    if task:
        report["task"] = task
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


def test_an_int_for_a_float_field_becomes_a_float(tmp_path):
    """`--set ...initial_learning_rate=0` (YAML reads an int) must not reach TensorFlow as int32."""
    rec = _records(tmp_path)
    r = render(CPU, str(rec), overrides=["trainer.optimizer_config.learning_rate.cosine.initial_learning_rate=0",
                                         "trainer.train_steps=7"])
    lr = r.params.trainer.optimizer_config.learning_rate.cosine.initial_learning_rate
    assert lr == 0.0 and isinstance(lr, float)
    assert r.params.trainer.train_steps == 7 and isinstance(r.params.trainer.train_steps, int)


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
    assert {"classifier_resnet18_cpu", "classifier_resnet50_transfer"} <= set(names)
    crec = _records(tmp_path, task="classification", name="crecords")
    for n in names:
        if n.startswith("classifier_"):
            r = render(n, str(crec))
            assert r.header["task"] == "classification"
            assert r.params.task.model.num_classes == 3  # a classifier has no background class
            assert r.params.task.evaluation.top_k == 3
            with pytest.raises(ConfigError, match="written for detection"):
                render(n, str(rec))
        else:
            r = render(n, str(rec))
            assert r.header["task"] == "detection"
            assert r.params.task.model.num_classes == 4
            with pytest.raises(ConfigError, match="written for classification"):
                render(n, str(crec))
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


# --------------------------------------------------------------------------- where the label map may come from

def _report_names(rec: Path, label_map: str) -> None:
    report = json.loads((rec / "report.json").read_text())
    report["label_map"] = label_map
    (rec / "report.json").write_text(json.dumps(report))


@pytest.mark.parametrize("named", ["/etc/passwd", "../outside.pbtxt", "link.pbtxt"])
def test_label_map_report_names_outside_the_records_is_never_opened(tmp_path, monkeypatch, capsys, named):
    """The classes report.json lists are used instead; the file outside is read only when passed."""
    rec = _records(tmp_path)
    five = "".join(f"item {{\n  id: {i}\n  name: 'c{i}'\n}}\n" for i in range(1, 6))
    (tmp_path / "outside.pbtxt").write_text(five)  # not the records' 3 classes: reading it would show
    (rec / "label_map.pbtxt").unlink()
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    (rec / "link.pbtxt").symlink_to(tmp_path / "outside.pbtxt")
    _report_names(rec, named)
    out = tmp_path / "p.yaml"

    def num_classes() -> int:
        return yaml.safe_load(out.read_text())["task"]["model"]["num_classes"]

    assert configs.main(["render", "--config", CPU, "--records", str(rec), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "outside the records folder" in err and "--label-map PATH" in err
    assert num_classes() == 4  # the report's 3 classes + background
    # A report without its classes: one error line, nothing read.
    report = json.loads((rec / "report.json").read_text())
    del report["classes"]
    (rec / "report.json").write_text(json.dumps(report))
    assert configs.main(["render", "--config", CPU, "--records", str(rec), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("od: error: ")
    assert named in err[0] and "outside the records folder" in err[0] and "--label-map PATH" in err[0]
    # The same file is fine when the user passes it.
    assert configs.main(["render", "--config", CPU, "--records", str(rec), "--out", str(out), "--force",
                         "--label-map", str(tmp_path / "outside.pbtxt")]) == 0
    assert num_classes() == 6


def test_label_map_in_records_is_used_not_a_path_outside(tmp_path, capsys):
    """Also: a report field od does not need (data_dir, once used to look for label maps) cannot crash it."""
    rec = _records(tmp_path)
    _report_names(rec, "/etc/passwd")
    report = json.loads((rec / "report.json").read_text())
    (rec / "report.json").write_text(json.dumps({**report, "data_dir": 5}))
    r = render(CPU, str(rec))
    assert r.label_map_path == str(rec / "label_map.pbtxt") and r.label_map.num_classes == 3
    assert "/etc/passwd" not in capsys.readouterr().err


@pytest.mark.parametrize("report", [
    "not json {",
    "[1, 2]",
    '{"splits": []}',
    '{"splits": {"train": {"files": [], "num_images": "3"}}}',
    '{"splits": {}, "label_map": 5}',
    '{"splits": {"val": {"files": [], "num_images": 1}}, "classes": [{"id": "1", "name": "a"}]}',
])
def test_malformed_report_is_one_error_and_exit_2(tmp_path, report):
    rec = _records(tmp_path)
    (rec / "report.json").write_text(report)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "od.configs", "render", "--config", CPU, "--records", str(rec)],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert [x for x in lines if not x.startswith("od: using default")] == [lines[-1]]
    assert lines[-1].startswith("od: error: ") and "Traceback" not in p.stderr


def test_default_workflow_records_then_render_without_label_map(tmp_path, monkeypatch, capsys):
    """`make records` (default --label-map label_maps/label_map.pbtxt, outside the records) then
    `od.configs render --records data/records`: report.json names it relative to the current folder."""
    from hostile import goods

    from od import records

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    goods(tmp_path / "ds", n=6, cls="cat")
    assert records.main(["ds", "--out", "data/records", "--quiet", "--workers", "1"]) == 0
    rec = Path("data/records")
    assert json.loads((rec / "report.json").read_text())["label_map"] == "label_maps/label_map.pbtxt"
    assert configs.main(["render", "--config", CPU, "--records", "data/records", "--out", "p.yaml"]) == 0
    err = capsys.readouterr().err
    assert "label map: the classes in data/records/report.json (label_maps/label_map.pbtxt is outside" in err
    assert yaml.safe_load(Path("p.yaml").read_text())["task"]["model"]["num_classes"] == 2
