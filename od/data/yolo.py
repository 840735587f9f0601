"""YOLO txt labels (Ultralytics layouts): reading to ``Entry`` rows and writing (being built: issue 11)."""

from __future__ import annotations


def find_yolo(data_dir):
    """The YOLO Layout of ``data_dir``, or None."""
    return None
