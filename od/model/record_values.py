"""What the records tell a config: report.json, shard globs, the label map, example counts (the ``${name}`` values)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from od.console import note_default
from od.io.tfrecord import count_records
from od.model import paths
from od.model.errors import ConfigError
from od.model.model_dir import LABEL_MAP_FILE


def read_report(records_dir: str) -> dict | None:
    """The records' report.json, or None when the records were written by another tool."""
    from od.io.schema import REPORT_FILE, SchemaError, parse_report, read_report as read_local

    path = paths.join(records_dir, REPORT_FILE)
    if not paths.exists(path):
        return None
    try:
        return parse_report(paths.read_text(path), path) if paths.is_remote(path) else read_local(path)
    except SchemaError as e:
        raise ConfigError(str(e)) from None


def split_glob(records_dir: str, split: str) -> str:
    from od.io.schema import shard_pattern

    return paths.join(records_dir, shard_pattern(split))


def resolve_label_map(records_dir: str, label_map: str | None, report: dict | None):
    """-> (LabelMap, path). --label-map wins; then the one report.json names; then records/label_map.pbtxt."""
    from od.io.label_map import LabelMapError, read_label_map

    candidates: list[str] = []
    if label_map:
        candidates = [str(label_map)]
    else:
        if report and report.get("label_map"):
            lm = str(report["label_map"])
            candidates.append(lm)
            if not paths.is_remote(lm) and not os.path.isabs(lm):
                candidates.append(paths.join(records_dir, lm))
                if report.get("data_dir"):
                    candidates.append(str(Path(report["data_dir"]).parent / lm))
        candidates.append(paths.join(records_dir, LABEL_MAP_FILE))
        candidates.append(str(Path("label_maps") / LABEL_MAP_FILE))
    for c in candidates:
        if paths.is_remote(c) or Path(c).is_file():
            if not label_map:
                note_default("label map", c)
            try:
                if paths.is_remote(c):
                    from od.io.label_map import parse_label_map

                    return parse_label_map(paths.read_text(c), c), c
                return read_label_map(c), c
            except LabelMapError as e:
                raise ConfigError(str(e)) from e
    raise ConfigError(
        f"no label map found (tried {', '.join(candidates)}); pass --label-map PATH "
        "(python -m od.records writes one)"
    )


def record_values(records_dir: str, report: dict | None, label_map) -> dict[str, Any]:
    """Placeholder values that come from the records and the label map."""
    values: dict[str, Any] = {
        "num_classes": int(label_map.num_classes) + 1,
        "train_glob": split_glob(records_dir, "train"),
        "val_glob": split_glob(records_dir, "val"),
        "label_map": None,
    }
    splits = (report or {}).get("splits", {})
    for split in ("train", "val"):
        n = splits.get(split, {}).get("num_images")
        if n is None:
            n = count_records(paths.glob(values[f"{split}_glob"]))
        values[f"num_{split}_examples"] = int(n)
    return values
