"""Box sizes: report.json statistics, sizes at each template's input, the too-small-box warning and --auto-size."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
from hostile import img as _img
from hostile import xml as _xml

from od import configs, records
from od.data import synthetic
from od.data.box_sizes import (
    SKETCH_POINTS,
    SizedBox,
    box_size_stats,
    relative_sizes,
    size_at,
)
from od.io import schema
from od.model.autosize import choose

CPU = "faster_rcnn_resnet18_fpn_cpu"


# --------------------------------------------------------------------------- datasets


def _small_box_voc(root: Path, n: int = 8, size=(640, 640), box=(12, 20), seed: int = 0) -> Path:
    """VOC images of ``size`` with 3 square boxes each of side in ``box`` (pixels)."""
    rng = random.Random(seed)
    for i in range(n):
        objs = []
        for j in range(3):
            s = rng.randint(*box)
            x, y = 20 + j * 200, 20 + rng.randint(0, size[1] - s - 40)
            objs.append(("dot" if j % 2 else "speck", x, y, x + s, y + s))
        _img(root / f"s{i}.jpg", size, color=(30 + i, 90, 150))
        _xml(root / f"s{i}.xml", f"s{i}.jpg", size, objs)
    return root


def _records(data: Path, out: Path) -> dict:
    rc = records.main([str(data), "--out", str(out), "--label-map", str(out / "label_map.pbtxt"), "--quiet",
                       "--workers", "1", "--val-fraction", "0.25"])
    assert rc == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def small_records(tmp_path_factory) -> Path:
    """Boxes of 12-20 px in 640x640 images: 5-8 px at the CPU template's 256 px."""
    root = tmp_path_factory.mktemp("small")
    _records(_small_box_voc(root / "data"), root / "rec")
    return root / "rec"


@pytest.fixture(scope="module")
def medium_records(tmp_path_factory) -> Path:
    """Boxes of 30-40 px in 640x640 images: 12-16 px at 256, which 448 px lifts over the 16 px anchor."""
    root = tmp_path_factory.mktemp("medium")
    _records(_small_box_voc(root / "data", box=(30, 40)), root / "rec")
    return root / "rec"


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    synthetic.generate(root / "data", 16, seed=3)
    _records(root / "data", root / "rec")
    return root / "rec"


def _render(capsys, rec: Path, *args: str, config: str = CPU) -> tuple[int, str, str]:
    rc = configs.main(["render", "--config", config, "--records", str(rec), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _input(yaml_text: str) -> tuple[list[int], int]:
    import yaml

    model = yaml.safe_load(yaml_text)["task"]["model"]
    return model["input_size"], model["min_level"]


# --------------------------------------------------------------------------- statistics


def test_stats_are_exact_percentiles_per_class_and_for_all():
    rng = random.Random(5)
    boxes = [SizedBox("a" if i % 3 else "b", rng.uniform(3, 90), rng.uniform(3, 90), 300, 200) for i in range(37)]
    st = box_size_stats(boxes, {"t": (100, 150)}, ["a", "b", "empty"])
    for key, sel in (("all", boxes), ("a", [b for b in boxes if b.name == "a"]), ("b", [b for b in boxes if b.name == "b"])):
        s = st["all"] if key == "all" else st["per_class"][key]
        assert s["count"] == len(sel)
        for field, vals in (("width", [b.width for b in sel]), ("height", [b.height for b in sel]),
                            ("area", [b.width * b.height for b in sel]), ("size", [math.sqrt(b.width * b.height) for b in sel])):
            want = [np.min(vals), np.percentile(vals, 10), np.median(vals), np.max(vals)]
            got = [s[field][k] for k in ("min", "p10", "median", "max")]
            assert got == pytest.approx([round(float(w), 2) for w in want], abs=0.006), (key, field)
    assert st["per_class"]["empty"] == {"count": 0}  # a label-map class without boxes is listed, empty
    assert st["size"] == schema.BOX_SIZE_DEFINITION and st["templates"] == {"t": [100, 150]}
    # [1, 2, 3, 4]: p10 = 1.3, median = 2.5 (linear interpolation, as numpy)
    s = box_size_stats([SizedBox("c", w, 1.0, 10, 10) for w in (4, 1, 3, 2)], {})["all"]["width"]
    assert s == {"min": 1.0, "p10": 1.3, "median": 2.5, "max": 4.0}


def test_fractions_at_a_template_follow_the_keep_aspect_resize():
    # A 400x200 image into a 128x128 input: scale min(128/200, 128/400) = 0.32 -> 128x64 pixels.
    boxes = [SizedBox("x", 40, 40, 400, 200),   # 12.8 px: under 16 and 32
             SizedBox("x", 60, 60, 400, 200),   # 19.2 px: under 32 only
             SizedBox("x", 100, 100, 400, 200),  # 32.0 px: under neither (strictly smaller counts)
             SizedBox("x", 10, 250, 100, 500)]  # 100x500 image: scale 0.256 -> 26x128 px; box 2.6 x 64 -> 12.9 px
    assert size_at(boxes[0], (128, 128)) == pytest.approx(12.8)
    assert size_at(boxes[3], (128, 128)) == pytest.approx(math.sqrt(10 * 26 / 100 * 250 * 128 / 500))
    at = box_size_stats(boxes, {"t": (128, 128)})["all"]["at_templates"]["t"]
    assert at["under_16"] == 0.5 and at["under_32"] == 0.75
    # Rounding as Model Garden rounds the scaled image: 333 px into 100 -> 100 px, so x scale 100/333.
    assert size_at(SizedBox("x", 30, 30, 333, 250), (100, 100)) == pytest.approx(30 * math.sqrt(100 / 333 * 75 / 250))


def test_resize_matches_model_gardens_parser():
    """The sizes od reports are the ones Model Garden's detection parser produces (eval: no jitter)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from official.vision.ops import preprocess_ops

    for (w, h), out, box in (((400, 200), (128, 128), (10, 20, 70, 50)), ((333, 517), (256, 256), (3, 7, 40, 90)),
                             ((640, 480), (384, 512), (100, 100, 131, 117))):
        image = tf.zeros((h, w, 3), tf.uint8)
        _, info = preprocess_ops.resize_and_crop_image(image, out, padded_size=out, aug_scale_min=1.0, aug_scale_max=1.0)
        x0, y0, x1, y1 = box
        norm = tf.constant([[y0 / h, x0 / w, y1 / h, x1 / w]], tf.float32)
        px = norm * tf.constant([h, w, h, w], tf.float32)
        mg = preprocess_ops.resize_and_crop_boxes(px, info[2, :], info[1, :], info[3, :]).numpy()[0]
        mg_size = math.sqrt((mg[2] - mg[0]) * (mg[3] - mg[1]))
        assert size_at(SizedBox("x", x1 - x0, y1 - y0, w, h), out) == pytest.approx(mg_size, rel=1e-4)


def test_sketch_is_exact_for_few_boxes_and_close_for_many():
    rng = random.Random(1)
    few = [SizedBox("x", s, s, 100, 80) for s in (rng.uniform(1, 60) for _ in range(300))]
    sk = schema.BoxSizeSketch(300, tuple(relative_sizes(few)["quantiles"]))
    assert sk.exact
    t = 0.2
    assert sk.fraction_below(t) == sum(b.size / 100 < t for b in few) / 300
    many = [SizedBox("x", s, s, 1000, 500) for s in (rng.lognormvariate(3, 0.8) for _ in range(20000))]
    rel = relative_sizes(many)
    assert rel["count"] == 20000 and len(rel["quantiles"]) == SKETCH_POINTS
    sk = schema.BoxSizeSketch(20000, tuple(rel["quantiles"]))
    for t in (0.01, 0.02, 0.05, 0.1):
        true = sum(b.size / 1000 < t for b in many) / 20000
        assert sk.fraction_below(t) == pytest.approx(true, abs=0.002)
    assert sk.quantile(0.1) == pytest.approx(np.percentile([b.size / 1000 for b in many], 10), rel=1e-3)
    assert sk.fraction_below(0) == 0.0 and sk.fraction_below(1.0) == 1.0


def test_report_v1_without_box_sizes_still_loads_and_bad_box_sizes_are_refused():
    v1 = {"version": 1, "splits": {"train": {"files": [], "num_images": 3}}}
    data = schema.parse_report(json.dumps(v1), "r.json")
    assert schema.report_box_sizes(data) is None
    for bad in ({"relative_size": {"count": 3, "quantiles": [0.3, 0.1, 0.2]}},  # not sorted
                {"relative_size": {"count": 1, "quantiles": [0.1, 0.2]}},  # more values than boxes
                {"relative_size": {"count": 2}}, [1, 2],
                {"relative_size": {"count": 1, "quantiles": [0.1]}, "templates": {"t": [256]}}):
        with pytest.raises(schema.SchemaError, match="box_sizes"):
            schema.parse_report(json.dumps({**v1, "box_sizes": bad}), "r.json")


def test_records_writes_box_sizes_and_prints_them(tmp_path, capsys):
    data = _small_box_voc(tmp_path / "data", n=4)
    _img(tmp_path / "data" / "clip.jpg", (100, 50))
    _xml(tmp_path / "data" / "clip.xml", "clip.jpg", (100, 50), [("speck", 90, 10, 130, 30)])  # clipped to 10x20
    rc = records.main([str(data), "--out", str(tmp_path / "rec"), "--label-map", str(tmp_path / "lm.pbtxt"),
                       "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    rep = json.loads((tmp_path / "rec" / "report.json").read_text())
    assert rep["version"] == schema.REPORT_VERSION
    bs = rep["box_sizes"]
    assert bs["all"]["count"] == 13 == rep["summary"]["boxes"]
    assert bs["all"]["width"]["min"] == 10.0  # the clipped box, as stored, not as labelled (40 px)
    assert set(bs["templates"]) == {"faster_rcnn_resnet18_fpn_cpu", "faster_rcnn_resnet50_fpn", "retinanet_resnet50_fpn",
                                    "retinanet_mobilenetv2_fpn_cpu"}
    assert bs["templates"][CPU] == [256, 256]
    # 12 boxes of <= 20 px in 640 px images -> <= 8 px at 256; the clipped one: 100x50 -> 256x128, 36 px
    assert bs["all"]["at_templates"][CPU]["under_16"] == bs["all"]["at_templates"][CPU]["under_32"] == round(12 / 13, 4)
    assert set(bs["per_class"]) == {"dot", "speck"}
    assert schema.report_box_sizes(schema.read_report(tmp_path / "rec" / "report.json")).count == 13
    assert "box sizes (sqrt(w*h) px in the stored images): min 12, " in out  # the 12 px squares (clipped: 14)
    assert next(l for l in out.splitlines() if l.startswith(CPU)).split()[-2:] == ["92%", "92%"]


# --------------------------------------------------------------------------- choosing


def test_choose_larger_input_for_small_boxes_within_budget_then_lower_levels():
    sk = schema.BoxSizeSketch(10, tuple(x / 1000 for x in range(20, 30)))  # p10 at 0.0209 of the long side
    c = choose(sk, (256, 256), anchor_size=2.0, min_level=3, max_level=6, budget=1024 * 1024, lowest_level=2)
    assert (c.side, c.min_level, c.reaches) == (768, 3, True)  # 16 / 0.0209 = 766 -> next multiple of 64
    assert c.p10_at >= 16 > sk.quantile(0.1) * 704
    c = choose(sk, (256, 256), 2.0, 3, 6, budget=512 * 512, lowest_level=2)
    assert (c.side, c.min_level, c.anchor, c.reaches) == (384, 2, 8.0, True)  # P2 anchors (8 px) fit the budget
    c = choose(sk, (256, 256), 2.0, 3, 6, budget=300 * 300, lowest_level=3)
    assert (c.side, c.min_level, c.reaches) == (256, 3, False)  # cap: the budget, levels kept
    c = choose(sk, (256, 256), 2.0, 3, 6, budget=1024 * 1024, lowest_level=2, train_scale=0.8)
    assert c.side == 960  # 16 / (0.0209 * 0.8) = 957: the box reaches the anchor at the smallest training scale
    big = schema.BoxSizeSketch(3, (0.3, 0.4, 0.5))
    assert choose(big, (640, 640), 4.0, 3, 7, 1024 * 1024, 2).side == 384  # large boxes: down to the floor, no lower
    one_small = schema.BoxSizeSketch(5, (0.07, 0.3, 0.3, 0.4, 0.5))  # 17.9 px at 256, 13.4 px at 192
    assert choose(one_small, (256, 256), 2.0, 3, 6, 512 * 512, 2).side == 256  # shrinking would lose that box
    assert choose(schema.BoxSizeSketch(4, (0.3, 0.3, 0.4, 0.5)),
                  (256, 256), 2.0, 3, 6, 512 * 512, 2).side == 128


# --------------------------------------------------------------------------- od.configs render / od.train


def test_warning_for_small_boxes_names_fraction_and_fix(small_records, capsys):
    rc, out, err = _render(capsys, small_records)
    assert rc == 0 and _input(out) == ([256, 256, 3], 3)  # a warning changes nothing
    line = next(l for l in err.splitlines() if l.startswith("od: warning:"))
    assert line.startswith("od: warning: 100% of boxes are smaller than the smallest anchor (16 px) at input 256x256; try ")
    assert "--set task.model.input_size=[512,512,3] --set task.model.min_level=2 (or --auto-size)" in line


def test_no_warning_for_demo_like_boxes(demo_records, capsys):
    rc, _, err = _render(capsys, demo_records)
    assert rc == 0 and "warning" not in err and "--auto-size" not in err
    # The smallest of these 16 images' boxes is 0.107 of its image's longer side: 16.4 px at 192 px x 0.8
    # (training's smallest scale), so 192 px loses no box to the 16 px anchors; 128 px would.
    rc, out, err = _render(capsys, demo_records, "--auto-size")
    rel = json.loads((demo_records / "report.json").read_text())["box_sizes"]["relative_size"]["quantiles"]
    assert 16 / (0.8 * 192) <= rel[0] < 16 / (0.8 * 128)
    assert rc == 0 and _input(out) == ([192, 192, 3], 3)
    assert "od: --auto-size: input 192x192" in err and "smaller, as no box that reaches the smallest anchor" in err


def test_auto_size_chooses_a_larger_input_for_small_boxes(medium_records, capsys):
    rc, out, err = _render(capsys, medium_records)
    assert "od: warning:" in err and "task.model.input_size=[448,448,3] (or --auto-size)" in err
    rc, out, err = _render(capsys, medium_records, "--auto-size")
    assert rc == 0
    assert _input(out) == ([448, 448, 3], 3)
    line = next(l for l in err.splitlines() if l.startswith("od: --auto-size:"))
    assert line.startswith("od: --auto-size: input 448x448 (10th-percentile box 12 px at 256x256 -> 22 px at 448, "
                           "17 px at the smallest training scale 0.8; smallest anchor 16 px; budget 512x512); "
                           "anchor levels 3-6"), line
    assert "od: warning:" not in err  # the chosen size fixes what the warning said


def test_auto_size_respects_the_budget(small_records, capsys):
    rc, out, err = _render(capsys, small_records, "--auto-size")
    assert rc == 0 and _input(out) == ([512, 512, 3], 2)  # the CPU budget (512x512): P2 anchors instead
    assert "od: --auto-size: input 512x512" in err and "anchor levels 2-6" in err
    assert "anchor levels start at 2, not 3, to fit the budget" in err
    assert "od: warning:" not in err  # 10-16 px boxes at 512 clear the 8 px P2 anchors
    rc, out, err = _render(capsys, small_records, "--auto-size", "--set", "od.max_input_pixels=1048576")
    assert rc == 0 and _input(out) == ([1024, 1024, 3], 3)  # a larger budget: a larger input, levels kept
    rc, out, err = _render(capsys, small_records, "--auto-size", "--set", "od.max_input_pixels=65536",
                           "--set", "task.model.min_level=3")
    assert rc == 0 and _input(out) == ([256, 256, 3], 3)  # explicit level kept; 256x256 is all the budget allows
    assert "the budget allows no more" in err and "od: warning: 100% of boxes" in err
    assert "no input within the compute budget (256x256, od.max_input_pixels)" in err
    rc, out, err = _render(capsys, small_records, "--auto-size", "--set", "od.max_input_pixels=lots")
    assert rc == 2 and "od: error: od.max_input_pixels must be a positive whole number" in err


def test_explicit_input_size_wins_over_auto_size(small_records, capsys):
    rc, out, err = _render(capsys, small_records, "--auto-size", "--set", "task.model.input_size=[320,320,3]")
    assert rc == 0 and _input(out) == ([320, 320, 3], 3)
    assert "od: --auto-size: task.model.input_size=[320, 320, 3] given with --set wins; keeping it" in err


def test_auto_size_without_box_sizes_and_for_a_classifier(small_records, tmp_path, capsys):
    rec = tmp_path / "old"
    rec.mkdir()
    for f in small_records.iterdir():
        (rec / f.name).write_bytes(f.read_bytes())
    rep = json.loads((rec / "report.json").read_text())
    del rep["box_sizes"]
    rep["version"] = 1
    (rec / "report.json").write_text(json.dumps(rep))
    rc, out, err = _render(capsys, rec, "--auto-size")
    assert rc == 0 and _input(out) == ([256, 256, 3], 3) and "warning" not in err
    assert "report.json has no box sizes" in err and "Keeping input 256x256" in err

    cls = tmp_path / "cls"
    cls.mkdir()
    (cls / "train-00000-of-00001.tfrecord").write_bytes(b"x")
    (cls / "val-00000-of-00001.tfrecord").write_bytes(b"x")
    (cls / "label_map.pbtxt").write_text("item {\n  id: 1\n  name: 'a'\n}\nitem {\n  id: 2\n  name: 'b'\n}\n")
    (cls / "report.json").write_text(json.dumps({
        "version": 2, "task": "classification", "label_map": str(cls / "label_map.pbtxt"),
        "classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "num_classes": 2,
        "splits": {"train": {"files": [], "num_images": 4}, "val": {"files": [], "num_images": 2}}}))
    rc, out, err = _render(capsys, cls, config="classifier_resnet18_cpu")
    assert rc == 0 and "warning" not in err
    rc, out, err = _render(capsys, cls, "--auto-size", config="classifier_resnet18_cpu")
    assert rc == 0 and "is a classifier; --auto-size sizes detection inputs only, nothing changed" in err


def test_train_auto_size_says_what_it_chose_before_its_checks(medium_records, tmp_path, capsys):
    from od import train

    md = tmp_path / "run"
    md.mkdir()
    (md / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    (md / "ckpt-1.index").write_bytes(b"")
    rc = train.main(["--config", CPU, "--records", str(medium_records), "--model-dir", str(md), "--auto-size",
                     "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "was not written by od.train" in err  # stops at the model-dir check, nothing trained
    assert "od: --auto-size: input 448x448" in err and "anchor levels 3-6" in err
    assert not (md / "pipeline.yaml").exists()
