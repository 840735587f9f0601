"""COCO instances JSON: reading to ``Entry`` rows and writing (being built: issue 11)."""

from __future__ import annotations


def find_coco(data_dir):
    """The COCO Layout of ``data_dir``, or None."""
    return None
