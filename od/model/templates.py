"""Config templates shipped as package data in ``od/pipeline_configs/``: find one by name or path, load its
od header, get its base experiment.

A template is YAML with two parts: ``od:`` (od's header: base experiment, pretrained checkpoint
name, ...) and ``experiment:`` (overrides merged over Model Garden's registered experiment).
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

import yaml

from od.model.errors import ConfigError

TEMPLATE_SUFFIXES = (".yaml", ".yml")
HEADER_KEYS = ("base_experiment", "pretrained_checkpoint", "init_checkpoint_modules", "description", "max_input_pixels")
# Model Garden's detection experiment families (official/vision/configs/{retinanet,maskrcnn}.py): a template
# on one of these is a detection template when it must be known without importing Model Garden (od.records).
DETECTION_EXPERIMENTS = ("retinanet_", "fasterrcnn_", "maskrcnn_", "cascadercnn_")


def templates_dir() -> Path:
    """The shipped templates, found through the package (wheel, editable install or checkout alike), not the cwd."""
    return Path(str(resources.files("od") / "pipeline_configs"))


def available_templates() -> list[str]:
    d = templates_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def find_template(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a shipped template."""
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
        f"template {str(name_or_path)!r} not found (not a file, not a shipped template){hint} "
        f"Shipped templates: {', '.join(names) or 'none'}"
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


def detection_input_sizes() -> dict[str, tuple[int, int]]:
    """(input height, input width) of each shipped detection template, read from its YAML alone (cheap: no
    Model Garden import), for the box sizes od.records reports at each template."""
    out: dict[str, tuple[int, int]] = {}
    for name in available_templates():
        try:
            header, experiment, _ = load_template(name)
        except ConfigError:
            continue
        if not str(header["base_experiment"]).startswith(DETECTION_EXPERIMENTS):
            continue
        size = ((experiment.get("task") or {}).get("model") or {}).get("input_size")
        if isinstance(size, list) and len(size) >= 2 and all(isinstance(x, int) and x > 0 for x in size[:2]):
            out[name] = (size[0], size[1])
    return out


def task_of(params) -> str:
    """``classification`` for Model Garden's image classification task, else ``detection``: the
    template's base experiment decides what od.train / evaluate / export do."""
    from official.vision.configs.image_classification import ImageClassificationTask

    return "classification" if isinstance(params.task, ImageClassificationTask) else "detection"


def base_config(name: str):
    import official.vision  # noqa: F401  (registers the vision experiments)
    from official.core import exp_factory

    try:
        return exp_factory.get_exp_config(name)
    except KeyError as e:
        raise ConfigError(f"unknown Model Garden experiment {name!r} in the template's od.base_experiment") from e
