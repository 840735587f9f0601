"""What the records tell a config: report.json, shard globs, the label map, example counts (the ``${name}`` values)."""

from __future__ import annotations

import os
from typing import Any

from od.console import note_default
from od.io.tfrecord import count_records
from od.model import paths
from od.model.errors import ConfigError
from od.model.model_dir import LABEL_MAP_FILE


def read_report(records_dir: str) -> dict | None:
    """The records' report.json, or None when the records were written by another tool."""
    from od.io.schema import REPORT_FILE, SchemaError, parse_report
    from od.io.schema import read_report as read_local

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


def _read_label_map(path: str):
    """A label map file (regular files only: a FIFO must not hang od.configs) or a gs:// one."""
    from od.io.files import read_file
    from od.io.label_map import LabelMapError, parse_label_map

    try:
        text = paths.read_text(path) if paths.is_remote(path) else read_file(path).decode("utf-8-sig")
        return parse_label_map(text, path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read label map: {getattr(e, 'strerror', None) or e}") from None
    except LabelMapError as e:
        raise ConfigError(str(e)) from None


def _inside(path: str, folder: str) -> bool:
    """``path`` lies inside ``folder`` after following links ('..' and links leading out do not)."""
    if paths.is_remote(path) or paths.is_remote(folder):
        root = folder.rstrip("/") + "/"
        return path.startswith(root) and ".." not in path[len(root):].split("/")
    return os.path.realpath(path).startswith(os.path.realpath(folder).rstrip(os.sep) + os.sep)


def resolve_label_map(records_dir: str, label_map: str | None, report: dict | None):
    """-> (LabelMap, path). --label-map wins; else the one report.json names, else records/label_map.pbtxt.

    report.json may come from someone else, so the file it names is read only inside the records
    folder. od.records usually writes the label map elsewhere (``label_maps/label_map.pbtxt``); then
    the classes report.json lists (written from that very label map) are used and no file outside is
    opened: absolute paths like /etc/passwd, '..' and links leading out are never read.
    """
    if label_map:
        return _read_label_map(str(label_map)), str(label_map)
    named = str(report["label_map"]) if report and report.get("label_map") else None
    from_report: list[str] = []
    if named:
        from_report.append(named)
        if not paths.is_remote(named) and not os.path.isabs(named):
            from_report.append(paths.join(records_dir, named))
    found = [c for c in from_report if paths.exists(c)]
    allowed = [c for c in found if _inside(c, records_dir)]
    copy = paths.join(records_dir, LABEL_MAP_FILE)
    for c in [*allowed, copy]:
        if paths.exists(c):
            note_default("label map", c)
            return _read_label_map(c), c
    if named and report.get("classes"):
        from od.io.label_map import LabelMap, LabelMapError
        from od.io.schema import SchemaError, parse_classes

        where = paths.join(records_dir, "report.json")
        try:
            lm = LabelMap(tuple(parse_classes(report["classes"], where).items()))
        except (SchemaError, LabelMapError) as e:
            raise ConfigError(str(e)) from None
        note_default("label map", f"the classes in {where} ({named} is outside the records folder, so od does "
                     "not open it; pass --label-map PATH to use a file)")
        return lm, named
    if found:
        raise ConfigError(
            f"{paths.join(records_dir, 'report.json')} names the label map {named}, outside the records folder "
            f"{records_dir}; od does not read it unless you pass it: --label-map PATH "
            "(the one the records were written with)"
        )
    raise ConfigError(
        f"no label map found (tried {', '.join([*from_report, copy])}); "
        "pass --label-map PATH (python -m od.records writes one)"
    )


def record_values(records_dir: str, report: dict | None, label_map, task: str = "detection") -> dict[str, Any]:
    """Placeholder values that come from the records and the label map.

    ``num_classes`` is the classes + 1 for detection (id 0 is background) and the classes themselves
    for classification (labels 0..n-1 = label-map id - 1); ``top_k`` is min(5, classes).
    """
    n = int(label_map.num_classes)
    values: dict[str, Any] = {
        "num_classes": n + 1 if task == "detection" else n,
        "top_k": min(5, n),
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
