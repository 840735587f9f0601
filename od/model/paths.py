"""Local or gs:// paths: join, read, write, exists, glob, size (TensorFlow's gfile only for remote ones, imported then)."""

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


def write_text(path: str, text: str) -> None:
    """Atomic locally, gfile for gs:// (a bucket object appears whole anyway)."""
    if is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
    else:
        from od.io.files import atomic_write_text

        atomic_write_text(path, text)
