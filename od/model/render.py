"""Template + records + ``--set`` -> a validated, locked Model Garden ExperimentConfig.

``${name}`` placeholders are filled from the records (class count, shard globs, example counts)
so a user never has to count anything by hand. Validation happens here, before a single training
step, because a wrong glob or class count otherwise costs minutes of graph building to discover.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from od.model import paths
from od.model.errors import ConfigError
from od.model.overrides import (
    check_keys,
    deep_merge,
    flatten,
    match_number_types,
    nest,
    parse_set_values,
    substitute,
)
from od.model.record_values import read_report, record_values, resolve_label_map
from od.model.templates import HEADER_KEYS, base_config, load_template, task_of


@dataclasses.dataclass
class Rendered:
    """A resolved experiment: the Model Garden config plus od's header and what it was built from."""

    params: Any  # official.core.config_definitions.ExperimentConfig
    header: dict
    label_map: Any  # od.label_map.LabelMap
    label_map_path: str
    report: dict | None
    size_lines: list[str] = dataclasses.field(default_factory=list)  # --auto-size's choice, small-box warning


def render(
    template: str | os.PathLike,
    records_dir: str,
    label_map: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    check_records: bool = True,
    auto_size: bool = False,
) -> Rendered:
    """Template + records + overrides -> a validated, locked ExperimentConfig.

    ``auto_size``: choose the input size (and anchor levels) from the records' box sizes
    (``od.model.autosize``); either way ``size_lines`` says when boxes are too small for the anchors.
    """
    header, experiment, tpath = load_template(template)
    sets = parse_set_values(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    od_sets = {k[3:]: v for k, v in sets.items() if k.startswith("od.")}
    mg_sets = {k: v for k, v in sets.items() if not k.startswith("od.")}
    for k in od_sets:
        if k not in HEADER_KEYS:
            close = difflib.get_close_matches(k, HEADER_KEYS, n=3)
            raise ConfigError(f"unknown od header key 'od.{k}'" + (f"; did you mean: {', '.join('od.' + c for c in close)}" if close else ""))
    header.update(od_sets)

    report = read_report(records_dir)
    lm, lm_path = resolve_label_map(records_dir, label_map, report)
    params = base_config(header["base_experiment"])
    task = task_of(params)
    values = record_values(records_dir, report, lm, task)
    values["label_map"] = lm_path
    check_keys(params, flatten(experiment).keys())
    check_keys(params, mg_sets.keys())

    # Derived placeholders depend on the batch sizes / steps after --set, so merge first.
    merged = deep_merge(experiment, nest(mg_sets))
    flat = flatten(merged)

    def _num(key: str, default: int) -> int:
        v = flat.get(key, default)
        return int(v) if not (isinstance(v, str) and "${" in v) else default

    eval_bs = max(1, _num("task.validation_data.global_batch_size", params.task.validation_data.global_batch_size or 1))
    train_bs = max(1, _num("task.train_data.global_batch_size", params.task.train_data.global_batch_size or 1))
    values["validation_steps"] = max(1, math.ceil(values["num_val_examples"] / eval_bs))
    values["steps_per_epoch"] = max(1, math.ceil(values["num_train_examples"] / train_bs))
    values["train_steps"] = _num("trainer.train_steps", params.trainer.train_steps)
    merged = nest(match_number_types(params, flatten(substitute(merged, values))))

    try:
        params.override(merged, is_strict=True)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{tpath}: cannot apply to {header['base_experiment']}: {e}") from e
    if header.get("pretrained_checkpoint") is None and not params.task.init_checkpoint:
        params.override({"task": {"init_checkpoint": ""}}, is_strict=True)
    _fix_traps(params)
    size_lines: list[str] = []
    if task == "detection":
        from od.model.autosize import size_check

        size_lines = size_check(params, header, report, auto_size, mg_sets.keys(), str(records_dir))
    elif auto_size:
        size_lines.append(f"od: --auto-size: {header['template']} is a classifier; --auto-size sizes detection "
                          "inputs only, nothing changed")
    try:
        params.validate()
    except (KeyError, ValueError) as e:
        raise ConfigError(f"invalid experiment config: {e}") from e

    header.update(
        task=task,
        records=str(records_dir),
        label_map=lm_path,
        classes=[{"id": i, "name": n} for i, n in lm.items],
    )
    r = Rendered(params=params, header=header, label_map=lm, label_map_path=lm_path, report=report,
                 size_lines=size_lines)
    validate(r, check_records=check_records)
    return r


def _fix_traps(params) -> None:
    """Model Garden 2.20 defaults that silently do the wrong thing for od's users."""
    t = params.trainer
    if t.steps_per_loop <= 0:
        raise ConfigError("trainer.steps_per_loop must be > 0")
    # Orbit only writes summaries at loop ends: make the interval a multiple of steps_per_loop.
    for name in ("summary_interval", "checkpoint_interval", "validation_interval"):
        v = getattr(t, name)
        if v and v > 0 and v % t.steps_per_loop:
            fixed = max(t.steps_per_loop, round(v / t.steps_per_loop) * t.steps_per_loop)
            print(f"od: note: trainer.{name}={v} is not a multiple of steps_per_loop={t.steps_per_loop}; "
                  f"using {fixed}", file=sys.stderr)
            params.override({"trainer": {name: fixed}}, is_strict=True)


def validate(r: Rendered, check_records: bool = True) -> None:
    """Fail now, with a message that says what to do, instead of after minutes of graph building."""
    p = r.params
    n_classes = r.label_map.num_classes
    task = r.header.get("task", "detection")
    if r.report:
        from od.io.schema import report_task

        written = report_task(r.report)
        if written != task:
            raise ConfigError(
                f"the records in {r.header.get('records')} were written for {written} but the template "
                f"{r.header.get('template')} trains {task}; pick a {written} template (python -m od.configs list)"
            )
    if task == "classification":
        if p.task.model.num_classes != n_classes:
            raise ConfigError(
                f"task.model.num_classes={p.task.model.num_classes} but the label map {r.label_map_path} has "
                f"{n_classes} classes; a classifier needs exactly that many (no background class). "
                "Drop the --set or fix the label map."
            )
        if n_classes < 2:
            raise ConfigError(f"the label map {r.label_map_path} has {n_classes} class; a classifier needs at least 2")
    elif p.task.model.num_classes != n_classes + 1:
        raise ConfigError(
            f"task.model.num_classes={p.task.model.num_classes} but the label map {r.label_map_path} has "
            f"{n_classes} classes (max id {n_classes}); it must be classes + 1 = {n_classes + 1} "
            "(id 0 is background). Drop the --set or fix the label map."
        )
    if r.report and r.report.get("classes"):
        ids = {int(c["id"]): c["name"] for c in r.report["classes"]}
        bad = {i: n for i, n in ids.items() if i > n_classes or r.label_map.id_to_name.get(i) != n}
        if bad:
            raise ConfigError(
                f"the records were written with classes {bad} that the label map {r.label_map_path} does not "
                f"have with the same id; re-run `python -m od.records` with this label map or pass the one "
                "the records were written with (--label-map)"
            )
    if not check_records:
        return
    for split, data in (("train", p.task.train_data), ("validation", p.task.validation_data)):
        patterns = data.input_path if isinstance(data.input_path, (list, tuple)) else [data.input_path]
        patterns = [x for s in patterns for x in str(s).split(",") if x]
        if not patterns:
            raise ConfigError(f"task.{split}_data.input_path is empty")
        for pattern in patterns:
            files = paths.glob(pattern)
            if not files:
                raise ConfigError(
                    f"no {split} records match {pattern}; run `python -m od.records DATA_DIR --out "
                    f"{r.header.get('records')}` first (or point --records at the folder with the .tfrecord shards)"
                )
            empty = [f for f in files if paths.size(f) == 0]
            if empty:
                raise ConfigError(f"empty record file(s): {', '.join(empty)}; re-run `python -m od.records`")
