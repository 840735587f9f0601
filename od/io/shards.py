"""Shard file names (OD API style): the one place that knows them, for writers and readers."""

from __future__ import annotations

import re

SPLITS = ("train", "val", "test")
SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord$")
TMP_RE = re.compile(r"^\.(train|val|test)-\d{5}-of-\d{5}\.tfrecord\..*\.tmp$")


def shard_name(split: str, index: int, count: int) -> str:
    """OD API shard naming (``train-00000-of-00004.tfrecord``); readers glob ``shard_pattern``."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_pattern(split: str) -> str:
    return f"{split}-*-of-*.tfrecord"
