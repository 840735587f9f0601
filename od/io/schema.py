"""The files one step hands the next, defined once: shard names, report.json, model.json, metrics.json.

Every writer and every reader of these files goes through this module, so a key can only be
renamed in one place. Readers check the shape they rely on and raise :class:`SchemaError`
naming the file and what is wrong (one ``od: error:`` line for the CLI), never a KeyError later.
"""

from __future__ import annotations

import glob
import json
import os
import re
from bisect import bisect_left
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Iterable, Mapping

from od.io.files import atomic_write_text

SPLITS = ("train", "val", "test")
SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord$")
TMP_RE = re.compile(r"^\.(train|val|test)-\d{5}-of-\d{5}\.tfrecord\..*\.tmp$")
RECORD_SUFFIXES = (".tfrecord", ".record", ".tfrecords")

REPORT_FILE = "report.json"
MODEL_FILE = "model.json"
METRICS_FILE = "metrics.json"

REPORT_VERSION = 2  # 2: adds "box_sizes" (detection); version 1 reports, without it, still load
TASKS = ("detection", "classification")  # report.json "task"; absent: detection (reports before it)
MODEL_FORMAT = "od-export"
MODEL_VERSION = 1
METRICS_VERSION = 1

# The headline numbers of metrics.json that model.json repeats (plot data and matrices left out).
METRICS_SUMMARY_KEYS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "voc_mAP50",
    "task", "top1", "top5", "macro_f1",
    "num_images", "num_gt_boxes", "split", "step", "checkpoint", "created",
)  # fmt: skip


class SchemaError(ValueError):
    """A file od reads is missing, unreadable or not in the shape od writes; says which and why."""


# --------------------------------------------------------------------------- shards


def shard_name(split: str, index: int, count: int) -> str:
    """OD API shard naming (``train-00000-of-00004.tfrecord``); readers glob ``shard_pattern``."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_pattern(split: str) -> str:
    return f"{split}-*-of-*.tfrecord"


def split_files(records: str | os.PathLike, split: str) -> list[str]:
    """Record files of ``split``: a DIR holds ``{split}-NNNNN-of-MMMMM.tfrecord`` shards; a file or
    glob is taken as is (e.g. a ``test.record`` written by the OD API tools)."""
    records = str(records)
    if any(c in records for c in "*?["):
        files = sorted(f for f in glob.glob(records) if not os.path.isdir(f))
    elif os.path.isfile(records):
        files = [records]
    elif os.path.isdir(records):
        files = sorted(glob.glob(os.path.join(glob.escape(records), shard_pattern(split))))
        if not files:
            present = sorted(p.name for p in Path(records).iterdir() if p.suffix in RECORD_SUFFIXES)
            raise SchemaError(
                f"no {split} records ({shard_pattern(split)}) in {records}"
                + (f"; found {', '.join(present[:6])}" if present else "")
                + "; write them with `python -m od.records`, or pass --records FILE_OR_GLOB"
            )
    else:
        raise SchemaError(f"{records}: no such records folder, file or glob")
    if not files:
        raise SchemaError(f"{records}: matches no record files")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty:
        raise SchemaError(f"empty record file(s): {', '.join(empty)}; re-run `python -m od.records`")
    return files


# --------------------------------------------------------------------------- JSON in general


def dumps(data: Any) -> str:
    """The JSON text od writes: indented, UTF-8 kept readable, no NaN (not JSON)."""
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, dumps(data))


def _load(text: str, where: str, fix: str) -> dict:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested thousands deep
        raise SchemaError(f"{where}: not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a JSON object, found {type(data).__name__}; {fix}")
    return data


def _read_text(path: str | os.PathLike, fix: str) -> str:
    """Regular files only (a FIFO named report.json must not hang a reader)."""
    from od.io.files import read_file

    try:
        return read_file(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError(f"{path}: not UTF-8 text ({e}); {fix}") from None
    except OSError as e:
        raise SchemaError(f"{path}: cannot read ({e.strerror or e}); {fix}") from None


def _read(path: str | os.PathLike, fix: str) -> dict:
    return _load(_read_text(path, fix), str(path), fix)


def classes_list(items: Iterable[tuple[int, str]]) -> list[dict]:
    """The one shape of a class list in od's JSON files: ``[{"id": 1, "name": "cat"}, ...]``."""
    return [{"id": int(i), "name": str(n)} for i, n in items]


def parse_classes(value: Any, where: str) -> dict[int, str]:
    """``classes_list`` back to ``{id: name}``; SchemaError for any other shape."""
    if not isinstance(value, list):
        raise SchemaError(f"{where}: 'classes' must be a list of {{\"id\", \"name\"}} objects")
    out: dict[int, str] = {}
    for c in value:
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            raise SchemaError(f"{where}: bad entry in 'classes': {c!r} (expected {{\"id\": int, \"name\": str}})")
        out[c["id"]] = c["name"]
    return out


def _expect(data: Mapping, key: str, kind: type, where: str, fix: str, optional: bool = False) -> Any:
    if key not in data or data[key] is None:
        if optional:
            return None
        raise SchemaError(f"{where}: no '{key}'; {fix}")
    v = data[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):  # JSON true is not a count
        raise SchemaError(f"{where}: '{key}' is {type(v).__name__}, not {kind.__name__}; {fix}")
    return v


# --------------------------------------------------------------------------- report.json (od.records)

_REPORT_FIX = "re-run `python -m od.records` to rewrite it"


def parse_report(text: str, where: str) -> dict:
    """report.json text -> the dict, its shape checked (splits, files, counts, label map, classes)."""
    data = _load(text, where, _REPORT_FIX)
    splits = _expect(data, "splits", dict, where, _REPORT_FIX)
    for name, sp in splits.items():
        if name not in SPLITS or not isinstance(sp, dict):
            raise SchemaError(f"{where}: unknown split {name!r} in 'splits'; {_REPORT_FIX}")
        files = _expect(sp, "files", list, f"{where}: splits.{name}", _REPORT_FIX, optional=True) or []
        if not all(isinstance(f, str) and SHARD_RE.match(f) for f in files):
            raise SchemaError(f"{where}: splits.{name}.files must be shard names like {shard_name(name, 0, 1)}; {_REPORT_FIX}")
        _expect(sp, "num_images", int, f"{where}: splits.{name}", _REPORT_FIX, optional=True)
    _expect(data, "label_map", str, where, _REPORT_FIX, optional=True)
    task = _expect(data, "task", str, where, _REPORT_FIX, optional=True)
    if task is not None and task not in TASKS:
        raise SchemaError(f"{where}: unknown task {task!r} (od knows {', '.join(TASKS)}); {_REPORT_FIX}")
    if "classes" in data:
        parse_classes(data["classes"], where)
    if data.get("box_sizes") is not None:
        _check_box_sizes(data["box_sizes"], f"{where}: box_sizes")
    return data


def read_report(path: str | os.PathLike) -> dict:
    return parse_report(_read_text(path, _REPORT_FIX), str(path))


def report_task(report: Mapping) -> str:
    """What the records are for: ``detection`` or ``classification``."""
    return report.get("task") or "detection"


# box_sizes (report version 2, detection only). A box's *size* is sqrt(width * height) in pixels: the side
# of the square with its area. Model Garden anchors are sized the same way (an anchor of size A has area
# A**2 for every aspect ratio) and IoU matching is bounded by the area ratio, so it is the number that
# says whether a box can match an anchor; COCO's small/medium/large (area < 32**2, < 96**2) is the same
# measure. Shape (values in pixels of the stored image; fractions 0..1):
#   "box_sizes": {
#     "size": BOX_SIZE_DEFINITION,
#     "templates": {TEMPLATE: [input height, input width]},    # the inputs "at_templates" was computed at
#     "all": STATS, "per_class": {CLASS: STATS},
#     "relative_size": {"count": N, "quantiles": [...]}}        # size / longer image side, sorted (see BoxSizeSketch)
#   STATS = {"count": N, "width"|"height"|"area"|"size": {"min", "p10", "median", "max"},
#            "at_templates": {TEMPLATE: {"p10_size", "median_size", "under_16", "under_32"}}}
BOX_SIZE_DEFINITION = "sqrt(width * height) in pixels"
BOX_SIZE_THRESHOLDS = (16, 32)
BOX_STAT_KEYS = ("min", "p10", "median", "max")


def percentile(sorted_values: list[float] | tuple[float, ...], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default): q=0.5 of [1, 2, 3, 4] is 2.5."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class BoxSizeSketch:
    """Box sizes relative to the longer side of their image, sorted: all of them (``count == len(values)``)
    or, for many boxes, the quantiles at 0, 1/(m-1), ..., 1. Model Garden's detection parser scales an image
    by ``min(H / height, W / width)``, which for a square input of side S is ``S / longer side``: a box of
    relative size r is then ``r * S`` pixels, so one sorted list answers "how many boxes are under A px at
    input S" for every S without reading the records again."""

    count: int
    values: tuple[float, ...]

    @property
    def exact(self) -> bool:
        return len(self.values) == self.count

    def quantile(self, q: float) -> float:
        return percentile(self.values, q)

    def fraction_below(self, x: float) -> float:
        """Share of boxes with relative size < x (exact for a full list, within 1/(m-1) for quantiles)."""
        v = self.values
        if not v or x <= v[0]:
            return 0.0
        if x > v[-1]:
            return 1.0
        i = bisect_left(v, x)  # v[i-1] < x <= v[i]
        if self.exact:
            return i / self.count
        lo, hi = v[i - 1], v[i]
        return ((i - 1) + ((x - lo) / (hi - lo) if hi > lo else 0.0)) / (len(v) - 1)


def _check_box_sizes(bs: Any, where: str) -> None:
    fix = _REPORT_FIX
    if not isinstance(bs, dict):
        raise SchemaError(f"{where}: must be an object; {fix}")
    rel = _expect(bs, "relative_size", dict, where, fix)
    n = _expect(rel, "count", int, f"{where}.relative_size", fix)
    q = _expect(rel, "quantiles", list, f"{where}.relative_size", fix)
    if n < 0 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in q) \
            or any(a > b for a, b in pairwise(q)) or len(q) > max(n, 1) or (n and not q):
        raise SchemaError(f"{where}.relative_size: quantiles must be sorted non-negative numbers, at most count; {fix}")
    templates = _expect(bs, "templates", dict, where, fix, optional=True) or {}
    for name, hw in templates.items():
        if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(x, int) and x > 0 for x in hw)):
            raise SchemaError(f"{where}.templates.{name}: must be [height, width] in pixels; {fix}")
    _expect(bs, "all", dict, where, fix, optional=True)
    _expect(bs, "per_class", dict, where, fix, optional=True)


def report_box_sizes(report: Mapping) -> BoxSizeSketch | None:
    """The (checked) report's box sizes for any input size; None for reports without them (version 1,
    classification, records written by another tool) or without any box."""
    bs = report.get("box_sizes")
    if not isinstance(bs, dict) or not bs.get("relative_size", {}).get("count"):
        return None
    rel = bs["relative_size"]
    return BoxSizeSketch(int(rel["count"]), tuple(float(x) for x in rel["quantiles"]))


def report_shards(report: Mapping) -> set[str]:
    """Shard names a (checked) report lists: od's manifest of what it wrote."""
    return {f for sp in report.get("splits", {}).values() for f in sp.get("files", [])}


# --------------------------------------------------------------------------- model.json (od.export)

_MODEL_FIX = "re-export the model with `python -m od.export`"


def write_model_json(path: str | os.PathLike, info: Mapping) -> None:
    write_json(path, {"format": MODEL_FORMAT, "format_version": MODEL_VERSION, **info})


def read_model_json(export_dir: str | os.PathLike) -> dict | None:
    """An export's model.json, checked; None when the folder has none (a plain SavedModel)."""
    path = Path(export_dir) / MODEL_FILE
    if not os.path.lexists(path):
        return None
    data = _read(path, _MODEL_FIX)
    where = str(path)
    if data.get("format") != MODEL_FORMAT:
        raise SchemaError(f"{where}: not an od export's model.json (format {data.get('format')!r}); {_MODEL_FIX}")
    parse_classes(data.get("classes"), where)
    ck = _expect(data, "checkpoint", dict, where, _MODEL_FIX, optional=True)
    if ck is not None:
        _expect(ck, "path", str, f"{where}: checkpoint", _MODEL_FIX)
        _expect(ck, "step", int, f"{where}: checkpoint", _MODEL_FIX, optional=True)
    _expect(data, "model_dir", str, where, _MODEL_FIX, optional=True)
    return data


def model_classes(info: Mapping) -> dict[int, str]:
    return parse_classes(info.get("classes"), MODEL_FILE)


# --------------------------------------------------------------------------- metrics.json (od.evaluate)

_METRICS_FIX = "re-run `python -m od.evaluate` to rewrite it"


def write_metrics(path: str | os.PathLike, metrics: Mapping) -> None:
    write_json(path, {"version": METRICS_VERSION, **metrics})


def read_metrics(path: str | os.PathLike) -> dict:
    data = _read(path, _METRICS_FIX)
    where = str(path)
    if data.get("version") != METRICS_VERSION:
        raise SchemaError(f"{where}: metrics version {data.get('version')!r}, od reads {METRICS_VERSION}; {_METRICS_FIX}")
    _expect(data, "step", int, where, _METRICS_FIX, optional=True)
    return data


def metrics_summary(metrics: Mapping) -> dict:
    """The headline numbers of a metrics.json (what model.json repeats)."""
    out = {k: metrics[k] for k in METRICS_SUMMARY_KEYS if k in metrics}
    per_class = metrics.get("per_class")
    if isinstance(per_class, list):
        out["per_class"] = [
            {k: c[k] for k in ("id", "name", "AP", "AP50", "voc_AP50", "precision", "recall", "f1", "support") if k in c} for c in per_class if isinstance(c, dict)
        ]
    return out
