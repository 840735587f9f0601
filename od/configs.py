"""Templates in ``pipeline_configs/`` + the records' report.json + ``--set`` -> a Model Garden config.

A template is YAML with two parts: ``od:`` (od's header: base experiment, pretrained checkpoint
name, ...) and ``experiment:`` (overrides merged over Model Garden's registered experiment).
``${name}`` placeholders are filled from the records (class count, shard globs, example counts)
so a user never has to count anything by hand. Validation happens here, before a single training
step, because a wrong glob or class count otherwise costs minutes of graph building to discover.

    python -m od.configs render faster_rcnn_resnet18_fpn_cpu --records data/records \
        --set trainer.train_steps=2000 --out pipeline.yaml
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from od.console import EXIT_OK, EXIT_USAGE, error, note_default, parse_overrides
from od.io.files import atomic_write_text

TEMPLATE_SUFFIXES = (".yaml", ".yml")
PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
PIPELINE_FILE = "pipeline.yaml"
HEADER_FILE = "od.yaml"
LABEL_MAP_FILE = "label_map.pbtxt"
HEADER_KEYS = ("base_experiment", "pretrained_checkpoint", "init_checkpoint_modules", "description")


class ConfigError(ValueError):
    """A problem with a template, an override or the records it points at (message says what to do)."""


# --------------------------------------------------------------------------- templates

def templates_dir() -> Path:
    """``pipeline_configs/`` of the checkout (or of the current directory when installed)."""
    here = Path(__file__).resolve().parents[1] / "pipeline_configs"
    if here.is_dir():
        return here
    return Path.cwd() / "pipeline_configs"


def available_templates() -> list[str]:
    d = templates_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def find_template(name_or_path: str | os.PathLike) -> Path:
    """A template name from ``pipeline_configs/`` or a path to a YAML file."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for suffix in ("",) + TEMPLATE_SUFFIXES:
        cand = templates_dir() / f"{name_or_path}{suffix}"
        if cand.is_file():
            return cand
    names = available_templates()
    close = difflib.get_close_matches(str(name_or_path), names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"template {str(name_or_path)!r} not found (not a file, not in {templates_dir()}){hint} "
        f"Available: {', '.join(names) or 'none'}"
    )


def load_template(name_or_path: str | os.PathLike) -> tuple[dict, dict, Path]:
    """-> (od header, experiment overrides, template path)."""
    path = find_template(name_or_path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or "od" not in doc or "experiment" not in doc:
        raise ConfigError(f"{path}: a template needs two top-level keys, 'od:' and 'experiment:'")
    header = dict(doc["od"] or {})
    unknown = set(header) - set(HEADER_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys in od: header: {sorted(unknown)} (valid: {list(HEADER_KEYS)})")
    if not header.get("base_experiment"):
        raise ConfigError(f"{path}: od.base_experiment is required (a Model Garden experiment name)")
    header.setdefault("pretrained_checkpoint", None)
    header.setdefault("init_checkpoint_modules", ["backbone", "decoder"])
    header["template"] = path.stem
    header["template_path"] = str(path)
    return header, dict(doc["experiment"] or {}), path


# --------------------------------------------------------------------------- records

def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _join(d: str, name: str) -> str:
    return f"{d.rstrip('/')}/{name}" if _is_remote(d) else str(Path(d) / name)


def _read_text(path: str) -> str:
    if _is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    return Path(path).read_text(encoding="utf-8")


def _exists(path: str) -> bool:
    if _is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return Path(path).exists()


def _glob(pattern: str) -> list[str]:
    if _is_remote(pattern):
        import tensorflow as tf

        return sorted(tf.io.gfile.glob(pattern))
    import glob as _g

    return sorted(_g.glob(pattern))


def _size(path: str) -> int:
    if _is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.stat(path).length
    return os.path.getsize(path)


def read_report(records_dir: str) -> dict | None:
    """The records' report.json, or None when the records were written by another tool."""
    path = _join(records_dir, "report.json")
    if not _exists(path):
        return None
    try:
        return json.loads(_read_text(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable report ({e}); re-run `python -m od.records`") from e


def split_glob(records_dir: str, split: str) -> str:
    from od.io.shards import shard_pattern

    return _join(records_dir, shard_pattern(split))


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
            if not _is_remote(lm) and not os.path.isabs(lm):
                candidates.append(_join(records_dir, lm))
                if report.get("data_dir"):
                    candidates.append(str(Path(report["data_dir"]).parent / lm))
        candidates.append(_join(records_dir, LABEL_MAP_FILE))
        candidates.append(str(Path("label_maps") / LABEL_MAP_FILE))
    for c in candidates:
        if _is_remote(c) or Path(c).is_file():
            if not label_map:
                note_default("label map", c)
            try:
                if _is_remote(c):
                    from od.io.label_map import parse_label_map

                    return parse_label_map(_read_text(c), c), c
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
            n = count_records(_glob(values[f"{split}_glob"]))
        values[f"num_{split}_examples"] = int(n)
    return values


def count_records(files: Sequence[str]) -> int:
    """Examples in TFRecord files (only used when there is no report.json)."""
    if not files:
        return 0
    import tensorflow as tf

    return sum(1 for _ in tf.data.TFRecordDataset(list(files)))


# --------------------------------------------------------------------------- placeholders / overrides

def _substitute(obj: Any, values: Mapping[str, Any], where: str = "") -> Any:
    """Fill ``${name}``; a value that is only a placeholder keeps the filled value's type."""
    if isinstance(obj, dict):
        return {k: _substitute(v, values, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, values, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, str) and "${" in obj:
        names = PLACEHOLDER.findall(obj)
        for n in names:
            if n not in values:
                raise ConfigError(
                    f"{where}: unknown placeholder ${{{n}}} (known: {', '.join('${%s}' % k for k in sorted(values))})"
                )
        full = PLACEHOLDER.fullmatch(obj.strip())
        if full:
            return values[full.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), obj)
    return obj


def parse_set_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings -> {dotted key: YAML-parsed value} (``[512,512,3]`` -> list)."""
    try:
        raw = parse_overrides(pairs)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {k}={v}: value is not valid YAML ({e})") from e
    return out


def _nest(dotted: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def valid_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key a Model Garden config accepts (all one-of branches included)."""
    from official.modeling.hyperparams import base_config

    keys: list[str] = []
    if not isinstance(cfg, base_config.Config):
        return keys
    for f in dataclasses.fields(cfg):
        if f.name.startswith("_"):
            continue
        key = f"{prefix}{f.name}"
        keys.append(key)
        value = getattr(cfg, f.name, None)
        if isinstance(value, base_config.Config):
            keys.extend(valid_keys(value, key + "."))
    return keys


def check_keys(params: Any, dotted: Iterable[str]) -> None:
    """Reject unknown dotted keys, naming the closest valid ones (a typo should not train for an hour)."""
    from official.modeling.hyperparams import base_config

    known = valid_keys(params)
    known_set = set(known)
    for key in dotted:
        if key in known_set:
            continue
        # Below a None-valued optional section (e.g. mask_head) Model Garden decides; walk what exists.
        parts = key.split(".")
        node: Any = params
        ok = True
        for i, p in enumerate(parts):
            if isinstance(node, base_config.Config) and p in {f.name for f in dataclasses.fields(node)}:
                node = getattr(node, p)
                if node is None or isinstance(node, (dict, list)):
                    ok = True
                    break
            else:
                ok = False
                break
        if ok and (node is None or isinstance(node, (dict, list)) or i == len(parts) - 1):
            continue
        close = difflib.get_close_matches(key, known, n=5, cutoff=0.6)
        if not close:
            # Match on the last part too: `trainer.train_step` -> `trainer.train_steps`.
            tails = {k.rsplit(".", 1)[-1]: k for k in known}
            close = [tails[t] for t in difflib.get_close_matches(parts[-1], list(tails), n=5, cutoff=0.6)]
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}")


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- building

@dataclasses.dataclass
class Rendered:
    """A resolved experiment: the Model Garden config plus od's header and what it was built from."""

    params: Any  # official.core.config_definitions.ExperimentConfig
    header: dict
    label_map: Any  # od.label_map.LabelMap
    label_map_path: str
    report: dict | None


def base_config(name: str):
    from official.core import exp_factory

    import official.vision  # noqa: F401  (registers the vision experiments)

    try:
        return exp_factory.get_exp_config(name)
    except KeyError as e:
        raise ConfigError(f"unknown Model Garden experiment {name!r} in the template's od.base_experiment") from e


def render(
    template: str | os.PathLike,
    records_dir: str,
    label_map: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    check_records: bool = True,
) -> Rendered:
    """Template + records + overrides -> a validated, locked ExperimentConfig."""
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
    values = record_values(records_dir, report, lm)
    values["label_map"] = lm_path

    params = base_config(header["base_experiment"])
    check_keys(params, _flatten(experiment).keys())
    check_keys(params, mg_sets.keys())

    # Derived placeholders depend on the batch sizes / steps after --set, so merge first.
    merged = _deep_merge(experiment, _nest(mg_sets))
    flat = _flatten(merged)

    def _num(key: str, default: int) -> int:
        v = flat.get(key, default)
        return int(v) if not (isinstance(v, str) and "${" in v) else default

    eval_bs = max(1, _num("task.validation_data.global_batch_size", params.task.validation_data.global_batch_size or 1))
    train_bs = max(1, _num("task.train_data.global_batch_size", params.task.train_data.global_batch_size or 1))
    values["validation_steps"] = max(1, math.ceil(values["num_val_examples"] / eval_bs))
    values["steps_per_epoch"] = max(1, math.ceil(values["num_train_examples"] / train_bs))
    values["train_steps"] = _num("trainer.train_steps", params.trainer.train_steps)
    merged = _substitute(merged, values)

    try:
        params.override(merged, is_strict=True)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{tpath}: cannot apply to {header['base_experiment']}: {e}") from e
    if header.get("pretrained_checkpoint") is None and not params.task.init_checkpoint:
        params.override({"task": {"init_checkpoint": ""}}, is_strict=True)
    _fix_traps(params)
    try:
        params.validate()
    except (KeyError, ValueError) as e:
        raise ConfigError(f"invalid experiment config: {e}") from e

    header.update(
        records=str(records_dir),
        label_map=lm_path,
        classes=[{"id": i, "name": n} for i, n in lm.items],
    )
    r = Rendered(params=params, header=header, label_map=lm, label_map_path=lm_path, report=report)
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
    if p.task.model.num_classes != n_classes + 1:
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
        paths = data.input_path if isinstance(data.input_path, (list, tuple)) else [data.input_path]
        paths = [x for s in paths for x in str(s).split(",") if x]
        if not paths:
            raise ConfigError(f"task.{split}_data.input_path is empty")
        for pattern in paths:
            files = _glob(pattern)
            if not files:
                raise ConfigError(
                    f"no {split} records match {pattern}; run `python -m od.records DATA_DIR --out "
                    f"{r.header.get('records')}` first (or point --records at the folder with the .tfrecord shards)"
                )
            empty = [f for f in files if _size(f) == 0]
            if empty:
                raise ConfigError(f"empty record file(s): {', '.join(empty)}; re-run `python -m od.records`")


def config_yaml(params) -> str:
    """pipeline.yaml: exactly ``params.as_dict()`` (what Model Garden's own tools read)."""
    return yaml.safe_dump(params.as_dict(), sort_keys=False, default_flow_style=None, width=100)


def header_yaml(header: Mapping) -> str:
    keep = {k: v for k, v in header.items() if k != "template_path"}
    return yaml.safe_dump(keep, sort_keys=False, width=100)


def load_model_dir(model_dir: str | os.PathLike):
    """-> (params, header) rebuilt from ``<model_dir>/pipeline.yaml`` and ``od.yaml``."""
    d = str(model_dir)
    ppath, hpath = _join(d, PIPELINE_FILE), _join(d, HEADER_FILE)
    for f in (ppath, hpath):
        if not _exists(f):
            raise ConfigError(f"{f} not found: {d} is not an od model dir (train one with `python -m od.train`)")
    header = yaml.safe_load(_read_text(hpath)) or {}
    params = base_config(header.get("base_experiment", "fasterrcnn_resnetfpn_coco"))
    params.override(yaml.safe_load(_read_text(ppath)), is_strict=True)
    params.validate()
    return params, header


# --------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m od.configs", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write the complete resolved Model Garden experiment config")
    r.add_argument("template", help="name in pipeline_configs/ (e.g. faster_rcnn_resnet18_fpn_cpu) or a YAML path")
    r.add_argument("--records", default="data/records", help="folder with the shards and report.json")
    r.add_argument("--label-map", default=None, help="label_map.pbtxt (default: the one report.json names)")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted Model Garden key, YAML value: task.model.input_size=[512,512,3]")
    r.add_argument("--out", default=None, help="write here instead of stdout")
    r.add_argument("--force", action="store_true", help="replace --out if it exists")
    sub.add_parser("list", help="list the templates")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "list":
        for n in available_templates():
            h, _, _ = load_template(n)
            print(f"{n:36s} {h.get('description', '')}")
        return EXIT_OK
    if args.out and Path(args.out).exists() and not args.force:
        error(f"{args.out} exists; pass --force to replace it")
        return EXIT_USAGE
    try:
        r = render(args.template, args.records, args.label_map, args.sets)
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    text = config_yaml(r.params)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"od: wrote {args.out} ({r.header['base_experiment']} + {r.header['template']}, "
              f"num_classes={r.params.task.model.num_classes})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
