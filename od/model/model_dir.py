"""An od model dir (runs/<name>): its files, pipeline.yaml / od.yaml written and read back, checkpoint choice and step."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from od.console import note_default
from od.model import paths
from od.model.errors import ConfigError
from od.model.templates import base_config

PIPELINE_FILE = "pipeline.yaml"
HEADER_FILE = "od.yaml"
LABEL_MAP_FILE = "label_map.pbtxt"


def config_yaml(params) -> str:
    """pipeline.yaml: exactly ``params.as_dict()`` (what Model Garden's own tools read)."""
    return yaml.safe_dump(params.as_dict(), sort_keys=False, default_flow_style=None, width=100)


def header_yaml(header: Mapping) -> str:
    keep = {k: v for k, v in header.items() if k != "template_path"}
    return yaml.safe_dump(keep, sort_keys=False, width=100)


def load_model_dir(model_dir: str | os.PathLike):
    """-> (params, header) rebuilt from ``<model_dir>/pipeline.yaml`` and ``od.yaml``."""
    d = str(model_dir)
    ppath, hpath = paths.join(d, PIPELINE_FILE), paths.join(d, HEADER_FILE)
    for f in (ppath, hpath):
        if not paths.exists(f):
            raise ConfigError(f"{f} not found: {d} is not an od model dir (train one with `python -m od.train`)")
    header = yaml.safe_load(paths.read_text(hpath)) or {}
    params = base_config(header.get("base_experiment", "fasterrcnn_resnetfpn_coco"))
    params.override(yaml.safe_load(paths.read_text(ppath)), is_strict=True)
    params.validate()
    return params, header


# --------------------------------------------------------------------------- checkpoints

BEST_DIR = "best_ckpt"  # Model Garden's best checkpoint by AP50 (trainer.best_checkpoint_export_subdir)
EVAL_DIR = "eval"  # od.evaluate's metrics.json + plots


@dataclass(frozen=True)
class CheckpointChoice:
    path: str  # checkpoint prefix (…/ckpt-500)
    kind: str  # best | latest | path
    step: int | None


def check_model_dir(model_dir: str | os.PathLike) -> None:
    """Fail fast, before TensorFlow is imported, with a message that says what to do."""
    d = Path(model_dir)
    if not d.exists():
        raise ConfigError(f"model dir {d} does not exist{_model_dirs_hint(d)}")
    if not d.is_dir():
        raise ConfigError(f"model dir {d} is not a directory")
    for name, why in ((PIPELINE_FILE, "od.train writes one per run"), (HEADER_FILE, "od.train writes it"),
                      (LABEL_MAP_FILE, "od.train copies the label map into the model dir")):
        if not (d / name).is_file():
            raise ConfigError(f"{d} has no {name}: not a model dir written by od.train ({why}){_model_dirs_hint(d)}")


def _model_dirs_hint(model_dir: Path) -> str:
    parent = model_dir.parent if str(model_dir.parent) not in ("", ".") else Path("runs")
    found = sorted(p.name for p in parent.glob("*") if (p / PIPELINE_FILE).is_file()) if parent.is_dir() else []
    if found:
        return f"; model dirs under {parent}/: {', '.join(found)}"
    return "; train one first with `python -m od.train` (make train)"


def latest_checkpoint(d: str) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(d)) if paths.exists(str(d)) else None


def checkpoint_step(path: str) -> int | None:
    """The global step stored in a checkpoint, else the ``-N`` of its name."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for key in ("global_step/.ATTRIBUTES/VARIABLE_VALUE", "step/.ATTRIBUTES/VARIABLE_VALUE"):
            if reader.has_tensor(key):
                return int(reader.get_tensor(key))
    except (tf.errors.OpError, ValueError):
        pass
    m = re.search(r"-(\d+)$", path)
    return int(m.group(1)) if m else None


def latest_step(model_dir: str) -> int:
    """Step of the newest checkpoint in ``model_dir`` (0 for none): where a resumed run starts."""
    ckpt = latest_checkpoint(model_dir)
    return (checkpoint_step(ckpt) or 0) if ckpt else 0


def choose_checkpoint(model_dir: str | os.PathLike, which: str | None) -> CheckpointChoice:
    """``best`` (best_ckpt/; the default, falling back to the latest with a note), ``latest``,
    or a path: a checkpoint prefix (``runs/x/ckpt-500``) or a folder holding checkpoints."""
    d = str(model_dir)
    if which in (None, "best"):
        path = latest_checkpoint(paths.join(d, BEST_DIR))
        if path:
            if which is None:
                note_default("checkpoint", f"best ({path})")
            return CheckpointChoice(path, "best", checkpoint_step(path))
        path = latest_checkpoint(d)
        if not path:
            raise ConfigError(f"no checkpoint in {d} (no {BEST_DIR}/ and no ckpt-N): train first (`python -m od.train`)")
        print(f"od: note: {paths.join(d, BEST_DIR)} has no best checkpoint (validation has not run yet?); "
              f"using the latest checkpoint {os.path.basename(path)}", file=sys.stderr)
        return CheckpointChoice(path, "latest", checkpoint_step(path))
    if which == "latest":
        path = latest_checkpoint(d)
        if not path:
            raise ConfigError(f"no checkpoint (ckpt-N) in {d}: train first (`python -m od.train`)")
        return CheckpointChoice(path, "latest", checkpoint_step(path))
    if os.path.isdir(which):
        path = latest_checkpoint(which)
        if not path:
            raise ConfigError(f"--checkpoint {which}: no checkpoint in that folder (no 'checkpoint' file / ckpt-N.index)")
        return CheckpointChoice(path, "path", checkpoint_step(path))
    if paths.exists(which + ".index"):
        return CheckpointChoice(which, "path", checkpoint_step(which))
    raise ConfigError(
        f"--checkpoint {which}: no such checkpoint (expected best, latest, a folder, or a prefix like "
        f"{paths.join(d, 'ckpt-100')} with a .index file beside it)"
    )
