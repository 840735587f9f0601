"""The data layer's promises hold for every label format, not only VOC: the same dataset written as
COCO, YOLO and CSV (by od.convert) gives byte-identical records whatever --workers is, the same
boxes as the VOC original, a corrupt image and a FIFO among the images are reported by file while
the rest converts, and --strict writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from od import records
from od.data import synthetic
from od.data.layout import detect_layout
from od.data.reformat import convert_dataset
from od.io.example import decode_example
from od.io.tfrecord import iter_records

FORMATS = ("coco", "yolo", "csv")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("voc") / "demo"
    synthetic.generate(d, num_images=16, seed=5)
    return d


def _run(data: Path, out: Path, *extra: str) -> int:
    return records.main([str(data), "--out", str(out), "--label-map", str(out.parent / f"{out.name}.pbtxt"),
                         "--quiet", *extra])


def _boxes(out: Path) -> dict[str, list]:
    """image stem -> sorted (class, xmin, ymin, xmax, ymax) in pixels, over every shard."""
    got = {}
    for shard in sorted(out.glob("*.tfrecord")):
        for rec in iter_records(shard):
            ex = decode_example(rec)
            got[Path(ex.filename).stem] = sorted(
                (b.name, round(b.xmin, 2), round(b.ymin, 2), round(b.xmax, 2), round(b.ymax, 2))
                for b in ex.boxes_px())
    return got


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_keeps_the_promises(voc, tmp_path, fmt):
    assert _run(voc, tmp_path / "voc-records") == 0
    truth = _boxes(tmp_path / "voc-records")

    data = tmp_path / fmt
    res = convert_dataset(detect_layout(voc), data, fmt)
    assert res.written and not res.skipped
    assert detect_layout(data).kind == fmt

    # same boxes as the VOC original; byte-identical shards with 1 and 2 workers
    assert _run(data, tmp_path / "r1", "--workers", "1") == 0
    assert _run(data, tmp_path / "r2", "--workers", "2") == 0
    assert _shards(tmp_path / "r1") == _shards(tmp_path / "r2") != {}
    got = _boxes(tmp_path / "r1")
    assert got.keys() == truth.keys()
    for stem, boxes in truth.items():
        assert len(got[stem]) == len(boxes), stem
        for a, b in zip(got[stem], boxes):
            assert a[0] == b[0] and np.allclose(a[1:], b[1:], atol=0.02), (stem, a, b)

    # a corrupt image and a FIFO named like an image: reported by file, the rest converts (exit 1)
    images = sorted(p for p in data.rglob("*.jpg"))
    victim = images[3]
    victim.write_bytes(victim.read_bytes()[:200])
    fifo = victim.with_name("zz_fifo.jpg")
    os.mkfifo(fifo)
    assert _run(data, tmp_path / "r3") == 1
    problems = json.loads((tmp_path / "r3" / "report.json").read_text())["problems"]
    assert any(p["file"].endswith(victim.name) and p["action"] == "skipped_image" for p in problems), problems
    got = _boxes(tmp_path / "r3")
    assert victim.stem not in got and len(got) == len(truth) - 1

    # --strict: a problem -> exit 1 and nothing written
    assert _run(data, tmp_path / "r4", "--strict") == 1
    assert not (tmp_path / "r4").exists() or not any((tmp_path / "r4").iterdir())
