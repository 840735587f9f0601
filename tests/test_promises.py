"""Promises od makes about hostile input, concurrent runs and failures part-way.

od is driven only through its stable surfaces: the CLIs in a subprocess (always with a
timeout, so a hang fails instead of blocking) or ``od.records.main`` in-process. Failures
are injected by patching generic things (os.replace, os.write, open, PIL), never od's
internals. The contract:

- report.json: "problems" = [{"file", "problem", "action"}], action in skipped_image |
  dropped_box | fixed; "splits" = {split: {"files": [...], "num_images": ...}}.
- exit codes: 0 done, 1 done but some inputs failed (and any --strict finding), 2 usage.
- an expected failure prints exactly one ``od: error:`` line naming path and cause, and
  never a Python traceback.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest
from PIL import Image

import hostile as H

# ---- every od import is here (module moves: fix them in this one place) ------------------
from od.records import main as records_main

from od.io.example import decode_example
from od.io.label_map import read_label_map
from od.io.tfrecord import iter_records
# -----------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
HANG_S = 60  # a run that should take a second or two; past this it is taken to hang
SKIPPED, DROPPED, FIXED = "skipped_image", "dropped_box", "fixed"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --------------------------------------------------------------------------- drivers


def run_records(args, capsys) -> tuple[int | None, str]:
    """``od.records.main(args)`` in-process: (exit code, stderr). An escaping exception is
    returned as rc None with its traceback appended to stderr (so 'no Traceback' checks fail)."""
    capsys.readouterr()
    rc: int | None
    tb = ""
    try:
        rc = records_main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    except Exception:
        rc, tb = None, traceback.format_exc()
    err = capsys.readouterr().err + tb
    return rc, err


def cli(module: str, args, timeout: float = HANG_S, cwd=REPO) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, "-m", module, *[os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args]],
            cwd=cwd, capture_output=True, timeout=timeout, env=ENV, encoding="utf-8", errors="backslashreplace",
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m {module} {' '.join(map(str, args))} did not finish in {timeout}s (hangs)")


def python(script: str, args=(), timeout: float = HANG_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO, capture_output=True,
                              timeout=timeout, env=ENV, encoding="utf-8", errors="backslashreplace")
    except subprocess.TimeoutExpired:
        pytest.fail(f"script did not finish in {timeout}s (hangs)")


def conv(ds, out, lm, *extra) -> list:
    return [ds, "--out", out, "--label-map", lm, "--quiet", "--workers", "1", *extra]


# --------------------------------------------------------------------------- checks


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def one_error(err: str, *words: str) -> str:
    """The single ``od: error:`` line of ``err`` (which must hold every word, case-insensitively)."""
    no_traceback(err)
    lines = [ln for ln in err.splitlines() if ln.startswith("od: error:")]
    assert len(lines) == 1, f"want exactly one 'od: error:' line, got {lines}\n{err}"
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    return lines[0]


def report(out: Path) -> dict | None:
    p = Path(out) / "report.json"
    return json.loads(p.read_text()) if p.exists() else None


def problems_of(rep: dict | None, file_part: str) -> list[dict]:
    return [p for p in (rep or {}).get("problems", []) if file_part in p["file"]]


def has_problem(rep, file_part: str, action: str | None = None, *words: str) -> dict:
    cands = problems_of(rep, file_part)
    for p in cands:
        if (action is None or p["action"] == action) and all(w.lower() in p["problem"].lower() for w in words):
            return p
    raise AssertionError(f"no problem for {file_part!r} with action {action} and words {words}: "
                         f"{cands or (rep or {}).get('problems')}")


def shards(out: Path) -> list[Path]:
    return sorted(Path(out).glob("*.tfrecord")) if Path(out).is_dir() else []


def examples(out: Path) -> dict:
    """filename -> DecodedExample over every shard in ``out`` (each filename at most once)."""
    res = {}
    for shard in shards(out):
        for rec in iter_records(shard):
            ex = decode_example(rec)
            assert ex.filename not in res, f"{ex.filename} twice"
            res[ex.filename] = ex
    return res


def listed(rep: dict) -> list[str]:
    return sorted(f for sp in rep["splits"].values() for f in sp["files"])


def visible(out: Path) -> list[str]:
    return sorted(p.name for p in Path(out).iterdir() if not p.name.startswith("."))


@pytest.fixture
def paths(tmp_path):
    ds, out, lm = tmp_path / "ds", tmp_path / "out", tmp_path / "lm" / "label_map.pbtxt"
    ds.mkdir()
    lm.parent.mkdir()
    return ds, out, lm


# =========================================================================== 1. forged JPEG headers


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["sof_30000", "no_scan", "sof_60000"])
def test_forged_jpeg_header_is_skipped_others_convert(paths, capsys, case):
    ds, out, lm = paths
    H.goods(ds, 2)
    real = H.jpeg_bytes((16, 16))
    data = {"sof_30000": lambda: H.forge_sof(real, 30000, 30000),
            "no_scan": lambda: H.strip_scan(real),
            "sof_60000": lambda: H.forge_sof(real, 60000, 60000)}[case]()
    (ds / "forged.jpg").write_bytes(data)
    H.xml(ds / "forged.xml", "forged.jpg", (16, 16), [("cat", 1, 1, 10, 10)])
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    assert rc == 1, err
    rep = report(out)
    p = has_problem(rep, "forged.jpg", SKIPPED)
    if case == "sof_60000":
        assert "pixel" in p["problem"].lower(), p
    assert sorted(examples(out)) == ["good0.jpg", "good1.jpg"]


@pytest.mark.timeout(60)
def test_forged_jpeg_header_with_strict_writes_nothing(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 2)
    (ds / "forged.jpg").write_bytes(H.forge_sof(H.jpeg_bytes((16, 16)), 30000, 30000))
    H.xml(ds / "forged.xml", "forged.jpg", (16, 16), [("cat", 1, 1, 10, 10)])
    rc, err = run_records(conv(ds, out, lm, "--strict"), capsys)
    no_traceback(err)
    assert rc == 1, err
    assert shards(out) == []
    assert "forged.jpg" in err


# =========================================================================== 2. truncated JPEG, both sides


@pytest.mark.timeout(60)
def test_jpeg_missing_its_last_bytes_is_kept_and_fixed(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 1)
    full = H.textured_jpeg((256, 256))
    cut = full[: int(len(full) * 0.98)]
    assert not cut.endswith(b"\xff\xd9")
    (ds / "cut.jpg").write_bytes(cut)
    H.xml(ds / "cut.xml", "cut.jpg", (256, 256), [("cat", 10, 20, 200, 220), ("cat", 30, 30, 90, 100)])
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    assert rc == 0, err
    rep = report(out)
    has_problem(rep, "cut.jpg", FIXED, "truncated")
    ex = examples(out)["cut.jpg"]
    im = Image.open(__import__("io").BytesIO(ex.image_bytes))
    im.load()
    assert im.size == (256, 256) == (ex.width, ex.height)
    assert len(ex.boxes_px()) == 2


@pytest.mark.timeout(60)
def test_jpeg_cut_to_40_percent_is_skipped(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 1)
    full = H.textured_jpeg((256, 256))
    (ds / "cut.jpg").write_bytes(full[: int(len(full) * 0.40)])
    H.xml(ds / "cut.xml", "cut.jpg", (256, 256), [("cat", 10, 20, 200, 220)])
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    assert rc == 1, err
    has_problem(report(out), "cut.jpg", SKIPPED)
    assert sorted(examples(out)) == ["good0.jpg"]


# =========================================================================== 3. only regular files


@pytest.mark.timeout(HANG_S + 15)
def test_records_fifos_and_folders_are_reported_not_read(paths):
    ds, out, lm = paths
    H.goods(ds, 2)
    H.fifo(ds / "x.xml")
    H.fifo(ds / "y.jpg")
    H.xml(ds / "y.xml", "y.jpg", objects=[("cat", 1, 1, 9, 9)])
    (ds / "z.xml").mkdir()
    res = cli("od.records", conv(ds, out, lm))
    no_traceback(res.stderr)
    assert res.returncode == 1, res.stderr
    rep = report(out)
    for name in ("x.xml", "y.jpg", "z.xml"):
        hits = [p for p in rep["problems"] if (name in p["file"] or name in p["problem"])
                and "not a regular file" in p["problem"]]
        assert hits, (name, rep["problems"])
    assert sorted(examples(out)) == ["good0.jpg", "good1.jpg"]


@pytest.mark.timeout(HANG_S + 15)
def test_inspect_fifo_is_reported(tmp_path):
    H.fifo(tmp_path / "a.tfrecord")
    res = cli("od.inspect", [tmp_path / "a.tfrecord"])
    said = res.stdout + res.stderr
    no_traceback(said)
    assert res.returncode == 1, said
    assert "a.tfrecord" in said and "not a regular file" in said, said


# The tiny SavedModel of tests/test_detect.py (fixed detections, ignores its input), built in a
# fresh interpreter so TensorFlow never loads into this one (od's workers would then spawn, not fork).
_BUILD_MODEL = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    RAW = [((0.20, 0.10, 0.80, 0.50), 0.90, 1), ((0.10, 0.60, 0.90, 0.95), 0.70, 2),
           ((0.30, 0.30, 0.60, 0.70), 0.60, 3), ((0.00, 0.00, 0.30, 0.30), 0.30, 1),
           ((0.05, 0.05, 0.95, 0.95), 0.99, 2)]
    boxes = np.array([[r[0] for r in RAW]], np.float32)
    scores = np.array([[r[1] for r in RAW]], np.float32)
    classes = np.array([[r[2] for r in RAW]], np.float32)
    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve(self, images):
            b = tf.shape(images)[0]
            tile = lambda a: tf.tile(tf.constant(a), tf.concat([[b], tf.ones(tf.rank(a) - 1, tf.int32)], 0))
            return {"detection_boxes": tile(boxes), "detection_scores": tile(scores),
                    "detection_classes": tile(classes), "num_detections": tf.fill([b], tf.constant(4.0))}
    m = Fixed()
    tf.saved_model.save(m, sys.argv[1], signatures={"serving_default": m.serve})
    """
)
NAMES = {1: "cat", 2: "dog", 3: "bird"}


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    """``<root>/exported/tiny`` laid out like od.export's output (as tests/test_detect.py)."""
    root = tmp_path_factory.mktemp("models")
    exp = root / "exported" / "tiny"
    exp.mkdir(parents=True)
    res = python(_BUILD_MODEL, [exp / "saved_model"], timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    (exp / "label_map.pbtxt").write_text("".join(f"item {{\n  id: {i}\n  name: '{n}'\n}}\n" for i, n in NAMES.items()))
    (exp / "model.json").write_text(json.dumps({"classes": [{"id": i, "name": n} for i, n in NAMES.items()]}))
    return root


@pytest.fixture
def model(export_root) -> str:
    return str(export_root / "exported" / "tiny")


@pytest.mark.timeout(HANG_S + 30)
def test_detect_fifo_is_reported_good_image_still_annotated(tmp_path, model):
    src = tmp_path / "in"
    H.img(src / "good.jpg", (200, 100), (40, 40, 40))
    H.fifo(src / "f.jpg")
    out = tmp_path / "out"
    res = cli("od.detect", [src, "--model", model, "--out", out])
    said = res.stdout + res.stderr
    no_traceback(said)
    assert res.returncode == 1, said
    assert any("f.jpg" in ln and "not a regular file" in ln for ln in said.splitlines()), said
    assert Image.open(out / "good.jpg").size == (200, 100)


# =========================================================================== 4. odd names


@pytest.mark.timeout(HANG_S + 15)
def test_xml_name_not_utf8_is_reported_rest_converted(paths):
    ds, out, lm = paths
    H.goods(ds, 2)
    H.img(ds / "odd.jpg")
    H.bytes_named_file(ds, b"caf\xe9.xml", H.xml_text("odd.jpg", objects=[("cat", 1, 1, 9, 9)]).encode())
    res = cli("od.records", conv(ds, out, lm))
    no_traceback(res.stderr)
    assert res.returncode == 1, res.stderr
    rep = report(out)
    assert rep is not None, res.stderr
    odd = problems_of(rep, "caf")
    assert odd, rep["problems"]
    assert all(p["file"].encode("utf-8") for p in odd)  # printable, no lone surrogate
    assert any("\\xe9" in p["file"] or "\\udce9" in p["file"] or "?" in p["file"] for p in odd), odd
    ex = examples(out)
    assert {"good0.jpg", "good1.jpg"} <= set(ex) and "odd.jpg" not in ex


# =========================================================================== 5. nothing outside the root


def _outside_xml(tmp_path: Path, ds: Path) -> Path:
    outside = tmp_path / "elsewhere"
    H.img(outside / "a.jpg")
    H.xml(outside / "a.xml", "a.jpg", objects=[("outsider", 2, 2, 30, 30)])
    H.img(ds / "a.jpg")
    os.symlink(outside / "a.xml", ds / "a.xml")
    return outside


@pytest.mark.timeout(60)
def test_xml_symlinked_from_outside_is_refused(tmp_path, paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 2)
    _outside_xml(tmp_path, ds)
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    assert rc == 1, err
    rep = report(out)
    has_problem(rep, "a.xml", None, "outside")
    assert "outsider" not in read_label_map(lm).names
    ex = examples(out)
    assert sorted(ex) == ["good0.jpg", "good1.jpg"]
    assert not any("outsider" in e.class_texts for e in ex.values())


@pytest.mark.timeout(60)
def test_images_folder_symlinked_outside_is_refused(tmp_path, paths, capsys):
    ds, out, lm = paths
    elsewhere = tmp_path / "elsewhere_images"
    H.goods(elsewhere, 2, xml_folder=ds / "annotations")
    os.symlink(elsewhere, ds / "images")
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    assert rc in (1, 2), err
    assert examples(out) == {}
    rep = report(out)
    assert "outside" in err.lower() or any("outside" in p["problem"] for p in (rep or {}).get("problems", [])), err


@pytest.mark.timeout(60)
def test_annotation_subfolder_symlinked_outside_is_refused(tmp_path, paths, capsys):
    ds, out, lm = paths
    H.goods(ds / "images", 1, xml_folder=ds / "annotations")
    elsewhere = tmp_path / "elsewhere_ann"
    H.xml(elsewhere / "s.xml", "s.jpg", objects=[("outsider", 2, 2, 30, 30)])
    H.img(ds / "images" / "sub" / "s.jpg")
    os.symlink(elsewhere, ds / "annotations" / "sub")
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    assert rc == 1, err
    rep = report(out)
    has_problem(rep, "sub", None, "outside")
    ex = examples(out)
    assert sorted(ex) == ["good0.jpg"]
    assert "outsider" not in read_label_map(lm).names


@pytest.mark.timeout(60)
def test_follow_links_accepts_outside_xml_and_says_where(tmp_path, paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 2)
    outside = _outside_xml(tmp_path, ds)
    rc, err = run_records(conv(ds, out, lm, "--follow-links"), capsys)
    no_traceback(err)
    assert rc == 0, err
    rep = report(out)
    assert os.path.realpath(outside) in rep["outside_roots"], rep.get("outside_roots")
    assert "outsider" in read_label_map(lm).names
    assert examples(out)["a.jpg"].class_texts == ["outsider"]


# =========================================================================== 6. one writer per --out


@pytest.mark.timeout(60)
def test_lock_of_a_live_process_refuses_at_once(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 3)
    holder = subprocess.Popen(["sleep", "30"])
    try:
        out.mkdir()
        (out / ".od.lock").write_text(f"{holder.pid}\n")
        before = H.snapshot(out)
        lm_before = H.snapshot(lm.parent)
        t0 = time.monotonic()
        rc, err = run_records(conv(ds, out, lm), capsys)
        assert rc == 2, err
        one_error(err, str(holder.pid))
        assert time.monotonic() - t0 < 20  # does not wait for the holder
        assert H.snapshot(out) == before and H.snapshot(lm.parent) == lm_before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.timeout(60)
def test_stale_lock_of_a_dead_process_is_taken_over(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 3)
    out.mkdir()
    (out / ".od.lock").write_text(f"{H.dead_pid()}\n")
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    assert rc == 0, err
    assert "stale" in err.lower(), err
    assert not (out / ".od.lock").exists()
    assert len(examples(out)) == 3


@pytest.mark.timeout(HANG_S + 30)
def test_two_concurrent_runs_into_one_out(paths):
    ds, out, lm = paths
    names = H.goods(ds, 300, size=(24, 16))
    args = [sys.executable, "-m", "od.records", *map(str, conv(ds, out, lm))]
    procs = [subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              encoding="utf-8", errors="backslashreplace") for _ in range(2)]
    results = []
    try:
        for p in procs:
            _, e = p.communicate(timeout=HANG_S)
            results.append((p.returncode, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert any(rc == 0 for rc, _ in results), results
    for rc, e in results:
        no_traceback(e)
        if rc != 0:
            one_error(e, "lock")
    rep = report(out)
    assert visible(out) == ["report.json", *listed(rep)]
    assert sorted(examples(out)) == sorted(names)


# =========================================================================== 7. never delete what od did not write


@pytest.mark.timeout(60)
def test_foreign_shard_name_in_fresh_out_is_kept_and_said(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 4)
    out.mkdir()
    foreign = out / "val-00003-of-00009.tfrecord"
    foreign.write_bytes(b"someone else's file \x00\x01")
    rc, err = run_records(conv(ds, out, lm, "--shards", "1"), capsys)
    no_traceback(err)
    assert rc == 0, err
    assert foreign.read_bytes() == b"someone else's file \x00\x01"
    assert any(foreign.name in ln and "kept" in ln.lower() for ln in err.splitlines()), err


@pytest.mark.timeout(60)
def test_colliding_foreign_shard_is_replaced_only_with_force(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 4)
    out.mkdir()
    junk = out / "train-00000-of-00001.tfrecord"
    junk.write_bytes(b"not a tfrecord, not od's")
    rc, err = run_records(conv(ds, out, lm, "--shards", "1", "--val-fraction", "0.01"), capsys)
    no_traceback(err)
    if rc == 0:  # od wrote elsewhere and kept the file
        assert junk.read_bytes() == b"not a tfrecord, not od's"
        assert junk.name not in listed(report(out))
    else:
        assert rc == 2, err
        one_error(err, junk.name, "--force")
        assert junk.read_bytes() == b"not a tfrecord, not od's"
        assert report(out) is None
    rc, err = run_records(conv(ds, out, lm, "--shards", "1", "--val-fraction", "0.01", "--force"), capsys)
    no_traceback(err)
    assert rc == 0, err
    assert junk.name in listed(report(out))
    assert len(list(iter_records(junk))) >= 1  # now od's own shard


@pytest.mark.timeout(60)
def test_rerun_removes_shards_of_its_previous_run(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 12)
    rc, err = run_records(conv(ds, out, lm), capsys)
    assert rc == 0, err
    first = listed(report(out))
    rc, err = run_records(conv(ds, out, lm, "--shards", "2"), capsys)
    assert rc == 0, err
    second = listed(report(out))
    assert set(first) - set(second)  # run 1's names are not all reused
    assert visible(out) == ["report.json", *second]
    assert len(examples(out)) == 12


# =========================================================================== 8. all or nothing


@pytest.fixture
def first_run(tmp_path, paths, capsys):
    """Run 1 done; run 2 data (more images, a new class) ready in ``ds2``; snapshot of out + label map."""
    ds, out, lm = paths
    H.goods(ds, 6)
    rc, err = run_records(conv(ds, out, lm), capsys)
    assert rc == 0, err
    ds2 = tmp_path / "ds2"
    H.goods(ds2, 8)
    H.goods(ds2, 4, cls="dog", prefix="dog")
    return ds2, out, lm, (H.snapshot(out), H.snapshot(lm.parent))


def _changed(now: dict | None, then: dict | None) -> list[str]:
    now, then = now or {}, then or {}
    return sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))


def _unchanged(out, lm, snap):
    assert H.snapshot(out) == snap[0], f"changed in --out: {_changed(H.snapshot(out), snap[0])}"
    assert H.snapshot(lm.parent) == snap[1], f"changed beside the label map: {_changed(H.snapshot(lm.parent), snap[1])}"


@pytest.mark.timeout(60)
def test_rename_failing_part_way_changes_nothing(first_run, capsys, monkeypatch):
    ds2, out, lm, snap = first_run
    calls = H.fail_nth_call(monkeypatch, os, "replace", 2, lambda: OSError(errno.EIO, os.strerror(errno.EIO)))
    rc, err = run_records(conv(ds2, out, lm, "--add-classes"), capsys)
    monkeypatch.undo()
    assert calls["n"] >= 2, "the injected failure never happened"
    assert rc not in (0, None), err
    one_error(err)
    _unchanged(out, lm, snap)


@pytest.mark.timeout(60)
def test_disk_full_changes_nothing(first_run, capsys, monkeypatch):
    ds2, out, lm, snap = first_run
    H.inject_disk_full(monkeypatch, out)
    rc, err = run_records(conv(ds2, out, lm, "--add-classes"), capsys)
    monkeypatch.undo()
    assert rc not in (0, None), err
    line = one_error(err)
    assert "no space left" in line.lower() or "disk full" in line.lower(), line
    _unchanged(out, lm, snap)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("other", ["other_classes", "empty"])
def test_label_map_without_the_datasets_classes_changes_nothing(first_run, tmp_path, capsys, other):
    ds2, out, lm, snap = first_run
    lm2 = tmp_path / f"{other}.pbtxt"
    lm2.write_text("item { id: 1 name: 'zebra' }\n" if other == "other_classes" else "")
    before = lm2.read_bytes()
    rc, err = run_records(conv(ds2, out, lm2), capsys)
    assert rc == 1, err
    one_error(err, "no box")
    _unchanged(out, lm, snap)
    assert lm2.read_bytes() == before


# =========================================================================== 9. label map edited, not rewritten

RICH_LABEL_MAP = """\
# my classes
# (hand-written; keep my comments)
item {
  name: 'person'
  id: 1
  display_name: "A person"
  keypoints { id: 0 label: "nose" }
  ancestor_ids: 5
  frequency: FREQUENT
  instance_count: 12
}
"""


@pytest.mark.timeout(60)
def test_add_classes_appends_to_the_users_text(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 3, cls="person", prefix="p")
    H.goods(ds, 3, cls="dog", prefix="d")
    lm.write_text(RICH_LABEL_MAP)
    rc, err = run_records(conv(ds, out, lm, "--add-classes"), capsys)
    no_traceback(err)
    assert rc == 0, err
    new = lm.read_text()
    assert new.startswith(RICH_LABEL_MAP), new
    tail = new[len(RICH_LABEL_MAP):]
    assert "dog" in tail and "2" in tail and "person" not in tail, tail
    assert read_label_map(lm).name_to_id == {"person": 1, "dog": 2}


@pytest.mark.timeout(60)
def test_add_classes_keeps_a_symlinked_label_map_a_symlink(tmp_path, paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 2, cls="cat", prefix="c")
    H.goods(ds, 2, cls="dog", prefix="d")
    target = tmp_path / "shared_maps" / "real.pbtxt"
    target.parent.mkdir()
    target.write_text("item {\n  id: 1\n  name: 'cat'\n}\n")
    os.symlink(target, lm)
    rc, err = run_records(conv(ds, out, lm, "--add-classes"), capsys)
    no_traceback(err)
    assert rc == 0, err
    assert os.path.islink(lm) and os.path.realpath(lm) == os.path.realpath(target)
    assert read_label_map(target).name_to_id == {"cat": 1, "dog": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["real.pbtxt"]


@pytest.mark.timeout(60)
def test_add_classes_past_int32_is_refused_before_writing(paths, capsys):
    ds, out, lm = paths
    H.goods(ds, 2, cls="big", prefix="b")
    H.goods(ds, 2, cls="new", prefix="n")
    lm.write_text("item { id: 2147483647 name: 'big' }\n")
    lm_before = H.snapshot(lm.parent)
    rc, err = run_records(conv(ds, out, lm, "--add-classes"), capsys)
    assert rc in (1, 2), err
    line = one_error(err)
    assert "2147483647" in line or "int32" in line.lower(), line
    assert not out.exists() or list(out.iterdir()) == []
    assert H.snapshot(lm.parent) == lm_before


# =========================================================================== 10. messages point at the file


@pytest.mark.timeout(60)
def test_dropped_box_names_its_object_number(paths, capsys):
    ds, out, lm = paths
    objs = [("dog", 5 + i, 5, 40 + i, 40) for i in range(12)]
    objs[8] = ("cat", 60, 10, 20, 40)  # object 9 of 12: xmin > xmax
    H.img(ds / "many.jpg", (200, 100))
    H.xml(ds / "many.xml", "many.jpg", (200, 100), objs)
    rc, err = run_records(conv(ds, out, lm), capsys)
    no_traceback(err)
    has_problem(report(out), "many", DROPPED, "object 9 of 12", "cat")
    assert len(examples(out)["many.jpg"].boxes_px()) == 11


@pytest.mark.timeout(60)
def test_out_under_a_regular_file_is_a_usage_error(tmp_path, paths, capsys):
    ds, _, lm = paths
    H.goods(ds, 2)
    (tmp_path / "somefile").write_text("I am a file")
    bad = tmp_path / "somefile" / "records"
    rc, err = run_records(conv(ds, bad, lm), capsys)
    assert rc == 2, err
    one_error(err, str(tmp_path / "somefile"))
    assert (tmp_path / "somefile").read_text() == "I am a file"


_KILL_WORKERS = textwrap.dedent(
    """
    import os, sys
    import PIL.Image, PIL.ImageFile
    parent = os.getpid()
    def dying(real):
        def load(self, *a, **k):
            if os.getpid() != parent:
                os._exit(1)  # a worker killed mid-image (OOM killer, segfault in a codec, ...)
            return real(self, *a, **k)
        return load
    PIL.Image.Image.load = dying(PIL.Image.Image.load)
    PIL.ImageFile.ImageFile.load = dying(PIL.ImageFile.ImageFile.load)
    import od.data.shards
    od.data.shards.MIN_POOL_BYTES = 0  # the pool even for this small set (else it runs in one process)
    from od.records import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.timeout(HANG_S + 30)
def test_a_killed_worker_is_an_error_not_a_hang(paths):
    """Run in a fresh interpreter: od forks its workers only while TensorFlow is not loaded,
    and another test may have loaded it into this one. PNGs, so every image is decoded."""
    ds, out, lm = paths
    H.goods(ds, 400, size=(20, 16), fmt="PNG")
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = H.snapshot(out)
    args = [ds, "--out", out, "--label-map", lm, "--quiet", "--workers", "2", "--shards", "2"]
    res = python(_KILL_WORKERS, args)
    assert res.returncode == 1, res.stderr[-3000:]
    one_error(res.stderr, "worker")
    assert H.snapshot(out) == before


@pytest.mark.timeout(60)
def test_permission_denied_under_out_is_one_error_line(paths, capsys, monkeypatch):
    ds, out, lm = paths
    H.goods(ds, 3)
    out.mkdir()
    H.inject_permission_denied(monkeypatch, out)
    rc, err = run_records(conv(ds, out, lm), capsys)
    monkeypatch.undo()
    assert rc in (1, 2), err
    one_error(err, str(out))
    assert list(out.iterdir()) == []


# =========================================================================== 11. od.inspect


def _inspect(*files) -> tuple[int, str]:
    res = cli("od.inspect", files)
    said = res.stdout + res.stderr
    no_traceback(said)
    return res.returncode, said


@pytest.mark.timeout(60)
def test_inspect_empty_file_is_a_problem(tmp_path):
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    rc, said = _inspect(tmp_path / "empty.tfrecord")
    assert rc == 1, said
    assert "empty.tfrecord" in said, said


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,width,height,word", [
    ("valid_control", 16, 16, None),
    ("width_zero", 0, 16, "width"),
    ("height_negative", 16, -5, "height"),
    ("width_disagrees", 99, 16, "width"),
])
def test_inspect_bad_image_size_fields(tmp_path, case, width, height, word):
    jpg = H.jpeg_bytes((16, 16))
    f = H.write_tfrecord(tmp_path / f"{case}.tfrecord", [H.detection_example(jpg, width, height)])
    rc, said = _inspect(f)
    if word is None:  # the hand-built Example is sound: od.inspect finds nothing
        assert rc == 0, said
        return
    assert rc == 1, said
    probs = [ln for ln in said.splitlines() if word in ln and "problem" in ln.lower()]
    assert probs, said
