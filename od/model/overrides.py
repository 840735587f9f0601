"""``--set`` values and ``${name}`` placeholders: parse, fill, merge, and check keys against a Model Garden config."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from typing import Any, Iterable, Mapping, Sequence

import yaml

from od.console import parse_overrides
from od.model.errors import ConfigError

PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


def substitute(obj: Any, values: Mapping[str, Any], where: str = "") -> Any:
    """Fill ``${name}``; a value that is only a placeholder keeps the filled value's type."""
    if isinstance(obj, dict):
        return {k: substitute(v, values, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, values, f"{where}[{i}]") for i, v in enumerate(obj)]
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


def nest(dotted: Mapping[str, Any]) -> dict:
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


def deep_merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
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


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def match_number_types(params: Any, dotted: Mapping[str, Any]) -> dict[str, Any]:
    """An int given for a float field becomes a float (YAML reads ``=0`` as an int, and Model Garden
    would pass it on: a learning rate of int 0 fails deep in TensorFlow with a dtype error)."""
    out = dict(dotted)
    for key, v in dotted.items():
        if not isinstance(v, int) or isinstance(v, bool):
            continue
        *path, name = key.split(".")
        node: Any = params
        for part in path:
            node = getattr(node, part, None)
        field = getattr(node, "__dataclass_fields__", {}).get(name)
        declared = str(field.type) if field is not None else ""
        if isinstance(getattr(node, name, None), float) or ("float" in declared and "int" not in declared):
            out[key] = float(v)
    return out
