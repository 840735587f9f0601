"""Reading and writing files safely: whole-file reads, and writes that never leave half a file."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# O_NONBLOCK: opening a FIFO (or a device) must never wait for a writer; the fstat below then
# refuses anything but a regular file. It changes nothing for regular files.
_O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)


class NotRegularFileError(OSError):
    """A path that is a FIFO, socket, device or folder where a file was expected."""


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file od can read, without opening it; None when it is.

    For listings and messages; ``read_file`` checks again on the opened file, so a path
    swapped for a FIFO in between still cannot block.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except (OSError, ValueError) as e:
        return f"cannot read: {getattr(e, 'strerror', None) or e}"
    if not stat.S_ISREG(mode):
        return f"not a regular file ({kind_of(mode)})"
    return None


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")`` for regular files only, without ever blocking.

    Anything else raises ``NotRegularFileError`` ("not a regular file (a FIFO)"), checked on
    the opened file, so a path swapped for a FIFO after a listing cannot block either.
    Other failures raise OSError as ``open`` would.
    """
    try:
        fd = os.open(path, _O_READ)
    except IsADirectoryError:
        raise NotRegularFileError(errno.EISDIR, "not a regular file (a folder)", os.fspath(path)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"not a regular file ({kind_of(mode)})", os.fspath(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The whole regular file, or its first ``limit`` bytes (see ``open_regular``)."""
    with open_regular(path) as f:
        return f.read() if limit is None else f.read(limit)


def shown(path: str | os.PathLike) -> str:
    """A path as text for messages and the report: bytes that are not UTF-8 appear as ``\\xe9``.

    Names from ``os`` come back with such bytes as lone surrogates, which cannot be printed
    or written to JSON; this makes them visible instead of crashing.
    """
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
