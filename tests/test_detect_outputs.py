"""What od.detect writes in --out: never a file it did not write (unless --force), a bad --out said
before the model loads, and an image's outputs written all together or not at all.

No TensorFlow: the model is a fake export folder (resolve_model only looks at file names) and
``Detector.load`` is replaced by a detector with one fixed box, so every output is known.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from od import detect
from od.core import Box, Detection
from od.viz import outputs

REPO = Path(__file__).resolve().parents[1]


class FakeDetector:
    """One cat box over the left half; ``score`` can change between runs to see a file replaced."""

    score = 0.9

    def raw(self, arr):
        return {}

    def postprocess(self, raw, width, height, threshold=0.5, class_ids=None, max_boxes=None):
        box = Box(0.1 * width, 0.2 * height, 0.5 * width, 0.8 * height, name="cat")
        return [Detection(box, 1, "cat", self.score)]


@pytest.fixture
def model(tmp_path) -> Path:
    """An export folder that resolves like od.export's (the SavedModel itself is never loaded)."""
    exp = tmp_path / "exported" / "fake"
    (exp / "saved_model").mkdir(parents=True)
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    (exp / "label_map.pbtxt").write_text("item {\n  id: 1\n  name: 'cat'\n}\n")
    return exp


@pytest.fixture
def fake(monkeypatch) -> FakeDetector:
    det = FakeDetector()
    monkeypatch.setattr(detect.Detector, "load", classmethod(lambda cls, source, names, runtime="auto": det))
    return det


def _img(path: Path, color=(40, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 100), color).save(path)
    return path


def _run(*args) -> int:
    return detect.main([str(a) for a in args])


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("od: error:")]


def _files(out: Path) -> set[str]:
    """Every file under ``out`` except od's own list of outputs."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.is_file() and p.name not in (outputs.MANIFEST, outputs.JOURNAL)}


# --------------------------------------------------------------------------- the user's files


def test_user_files_in_out_are_kept_unless_force(tmp_path, model, fake, capsys):
    src = _img(tmp_path / "in" / "good.jpg")
    out = tmp_path / "out"
    out.mkdir()
    mine = {"good.jpg": b"my own photo", "good.json": b'{"mine": true}\n', "detections.json": b"[1, 2]\n"}
    for name, data in mine.items():
        (out / name).write_bytes(data)

    assert _run(src, "--model", model, "--out", out, "--save-json", "--save-crops") == 1
    err = capsys.readouterr().err
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, name
    assert _files(out) == set(mine)  # no crop either: none of the image's outputs is written
    lines = _error_lines(err)
    assert len(lines) == 2, err  # the image, and detections.json
    assert str(src) in lines[0] and "--force" in lines[0] and "another --out" in lines[0]
    assert "good.jpg" in lines[0] and "(and 1 more)" in lines[0]
    assert str(out / "detections.json") in lines[1] and "--force" in lines[1]

    assert _run(src, "--model", model, "--out", out, "--save-json", "--force") == 0
    assert Image.open(out / "good.jpg").size == (200, 100)  # replaced by the annotated image
    assert json.loads((out / "good.json").read_text())["detections"][0]["class_name"] == "cat"
    assert len(json.loads((out / "detections.json").read_text())["images"]) == 1


def test_rerun_replaces_its_own_outputs(tmp_path, model, fake, capsys):
    src = _img(tmp_path / "in" / "a.jpg")
    out = tmp_path / "out"
    assert _run(src, "--model", model, "--out", out, "--save-json", "--save-crops") == 0
    (out / "notes.txt").write_text("the user's")
    fake.score = 0.75
    assert _run(src, "--model", model, "--out", out, "--save-json", "--save-crops") == 0, capsys.readouterr().err
    assert json.loads((out / "a.json").read_text())["detections"][0]["score"] == 0.75
    assert json.loads((out / "detections.json").read_text())["images"][0]["detections"][0]["score"] == 0.75
    assert (out / "notes.txt").read_text() == "the user's"
    listed = json.loads((out / outputs.MANIFEST).read_text())["files"]
    assert sorted(listed) == ["a.jpg", "a.json", "crops/cat/a_1.jpg", "detections.json"]
    assert not (out / outputs.JOURNAL).exists()


def test_a_crash_midway_does_not_lose_track(tmp_path):
    """Files are journalled before they are written: a run that never reaches its end (no
    manifest saved) still leaves them replaceable by the next run, which folds the journal in."""
    out = tmp_path / "out"
    item = detect.InputImage(_img(tmp_path / "x.png"), "x")
    writer = outputs.OutputWriter(out, [item.path], True, False, False, False, {})
    with Image.open(item.path) as im:
        res = writer.write(item, im.convert("RGB"), FakeDetector().postprocess({}, 200, 100))
    assert res.error is None and (out / "x.png").is_file()
    assert not (out / outputs.MANIFEST).exists()  # "crashed": finish() never ran

    again = outputs.Manifest.load(out)
    assert again.owns(out / "x.png") and again.owns(out / "x.json")
    again.save()
    assert json.loads((out / outputs.MANIFEST).read_text())["files"] == ["x.json", "x.png"]
    assert not (out / outputs.JOURNAL).exists()


def test_unreadable_manifest_is_a_usage_error_unless_force(tmp_path, model, fake, capsys):
    src = _img(tmp_path / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.MANIFEST).write_text("not json")
    assert _run(src, "--model", model, "--out", out) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and outputs.MANIFEST in lines[0] and "--force" in lines[0]
    assert not (out / "a.jpg").exists()
    assert _run(src, "--model", model, "--out", out, "--force") == 0
    assert json.loads((out / outputs.MANIFEST).read_text())["files"] == ["a.jpg"]


# --------------------------------------------------------------------------- --out checked first


def test_out_under_a_file_fails_before_tensorflow_is_imported(tmp_path, model):
    src = _img(tmp_path / "a.jpg")
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file")
    code = (
        "import sys\nfrom od import detect\n"
        f"rc = detect.main([{str(src)!r}, '--model', {str(model)!r}, '--out', {str(blocker / 'det')!r}])\n"
        "print('RC', rc, 'TF' if 'tensorflow' in sys.modules else 'NO_TF')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.stdout.split() == ["RC", "2", "NO_TF"], (res.stdout, res.stderr)
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and "--out" in lines[0] and f"{blocker} is a file" in lines[0], res.stderr
    assert blocker.read_text() == "a file"


def test_out_that_is_a_file_or_not_writable_is_a_usage_error(tmp_path, model, monkeypatch, capsys):
    src = _img(tmp_path / "a.jpg")
    blocker = tmp_path / "out.jpg"
    blocker.write_bytes(b"x")

    def no_load(cls, source, names, runtime="auto"):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(detect.Detector, "load", classmethod(no_load))
    assert _run(src, "--model", model, "--out", blocker) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"--out {blocker}" in lines[0] and "is a file" in lines[0]

    # tests run as root, where chmod cannot take the right away: ask os.access as od does
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real_access(p, mode, **kw))
    assert _run(src, "--model", model, "--out", ro / "det") == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"--out {ro / 'det'}: {ro} is not writable" in lines[0]


# --------------------------------------------------------------------------- all of an image or none


@pytest.mark.parametrize("stage", ["write", "rename"])
def test_voc_write_failure_leaves_none_of_that_image(tmp_path, model, fake, monkeypatch, capsys, stage):
    """Disk full while writing a.xml (or its rename failing): none of a's outputs stay, b is done."""
    folder = tmp_path / "in"
    _img(folder / "a.jpg")
    _img(folder / "b.jpg")
    out = tmp_path / "out"
    full = OSError(errno.ENOSPC, "No space left on device")
    if stage == "write":
        real = outputs._write_temp

        def write_temp(path, data):
            if path.name == "a.xml":
                raise full
            return real(path, data)

        monkeypatch.setattr(outputs, "_write_temp", write_temp)
    else:
        real = os.replace

        def replace(src, dst, **kw):
            if Path(dst).name == "a.xml":
                raise full
            return real(src, dst, **kw)

        monkeypatch.setattr(os, "replace", replace)
    rc = _run(folder, "--model", model, "--out", out, "--save-json", "--save-voc", "--save-crops")
    err = capsys.readouterr().err
    assert rc == 1
    lines = _error_lines(err)
    assert len(lines) == 1 and "a.jpg" in lines[0] and "No space left" in lines[0], err
    assert _files(out) == {"b.jpg", "b.json", "crops/cat/b_1.jpg", "voc/b.jpg", "voc/b.xml", "detections.json"}
    assert not list(out.rglob("*.tmp"))
    assert [Path(i["image"]).name for i in json.loads((out / "detections.json").read_text())["images"]] == ["b.jpg"]


def test_a_file_named_voc_fails_each_image_before_anything_is_written(tmp_path, model, fake, capsys):
    src = _img(tmp_path / "in" / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "voc").write_bytes(b"the user's notes")
    assert _run(src, "--model", model, "--out", out, "--save-voc", "--force") == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(src) in lines[0] and f"{out / 'voc'} is a file where a folder is needed" in lines[0]
    assert _files(out) == {"voc"} and (out / "voc").read_bytes() == b"the user's notes"
