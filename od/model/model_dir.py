"""An od model dir's config files: their names, writing pipeline.yaml / od.yaml, rebuilding (params, header)."""

from __future__ import annotations

import os
from typing import Mapping

import yaml

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
