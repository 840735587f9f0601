"""Local or gs:// paths: join, read, exists, glob, size (TensorFlow's gfile only for remote ones, imported then)."""

from __future__ import annotations

import os
from pathlib import Path


def is_remote(path: str) -> bool:
    return "://" in str(path)


def join(d: str, name: str) -> str:
    return f"{d.rstrip('/')}/{name}" if is_remote(d) else str(Path(d) / name)


def read_text(path: str) -> str:
    if is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    return Path(path).read_text(encoding="utf-8")


def exists(path: str) -> bool:
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return Path(path).exists()


def glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        import tensorflow as tf

        return sorted(tf.io.gfile.glob(pattern))
    import glob as _g

    return sorted(_g.glob(pattern))


def size(path: str) -> int:
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.stat(path).length
    return os.path.getsize(path)
