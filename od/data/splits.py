"""Train/val/test split of an image from a hash of its key: stable when images are added."""

from __future__ import annotations

import hashlib


DEFAULT_VAL_FRACTION = 0.2  # od.records' and od.convert's val share when the dataset gives no splits


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """Stable split from the file stem alone: adding images never moves existing ones."""
    return _split_of_digest(hashlib.sha256(key.encode("utf-8")).digest(), val_fraction, test_fraction)


def _split_of_digest(digest: bytes, val_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
