"""CSV box tables (generate_tfrecord.py's columns): reading to ``Entry`` rows and writing (being built: issue 11).

Not named ``csv.py``: that would shadow the standard library's module."""

from __future__ import annotations


def find_csv(data_dir, csv_files):
    """The CSV Layout of ``data_dir`` (with ``--train-csv``/``--val-csv`` files), or None."""
    return None
