"""Reading and writing files safely: whole-file reads, and writes that never leave half a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_O_RDONLY = os.O_RDONLY | getattr(os, "O_BINARY", 0)


def read_file(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The whole file, or its first ``limit`` bytes (like ``f.read(limit)``), with raw ``os`` calls.

    Sized from ``fstat``: a buffered file object costs as much as reading a small image or
    XML, and ``f.read(8 MB)`` allocates 8 MB for a few-KB file. One read of the size + 1
    gets a regular file whole and shows its end (a short read), so no second read is made.
    Raises OSError as ``open`` would.
    """
    fd = os.open(path, _O_RDONLY)
    try:
        st = os.fstat(fd)
        want = st.st_size if limit is None else min(st.st_size, limit)
        ask = want + 1 if limit is None else min(limit, want + 1)
        b = os.read(fd, ask)
        if len(b) < ask and stat.S_ISREG(st.st_mode):
            return b
        chunks = [b]
        got = len(b)
        while b and (limit is None or got < limit):  # more than fstat said: not a regular file, or it grew
            step = want - got + 1 if got <= want else 1 << 20
            b = os.read(fd, step if limit is None else min(limit - got, step))
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def canonical_path(path: str | os.PathLike) -> str:
    """``str(Path(path))``, without building a Path when ``path`` is already in that form.

    Called once per file on conversion hot paths, where a Path costs more than the check.
    """
    if (
        os.name == "posix" and isinstance(path, str) and path and path != "." and "//" not in path
        and "/./" not in path and not path.startswith("./") and not path.endswith(("/", "/."))
    ):
        return path
    return str(Path(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside ``path`` then rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; on success it replaces ``target``.

    Refuses to replace an existing ``target`` unless ``force`` (nothing the user had is
    lost without asking). On failure the temp dir is removed and ``target`` is untouched.
    """
    target = Path(target)
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
