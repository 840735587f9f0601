"""The records folder as one unit: one writer at a time, od's manifest, all-or-nothing replacement.

Users point ``--out`` at folders that hold things they care about (the records of last
week's good run, files of their own). So: a lock file says who is writing (a second run
stops at once); ``report.json`` is od's manifest, and only files it lists are ever
replaced or removed; every new file is written under a temporary name first and the
renames happen together at the end, rolled back if any of them fails.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from od.io.schema import REPORT_FILE, SHARD_RE, TMP_RE, SchemaError, read_report, report_shards

LOCK_FILE = ".od.lock"


class OutputError(Exception):
    """The output folder cannot be written as asked; the message names the path and what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def locked(out: Path, notes: list[str]) -> Iterator[None]:
    """Hold ``out/.od.lock`` (our pid) while writing; a live holder is an OutputError.

    A lock left by a process that no longer runs (killed, machine rebooted) is taken over,
    with a line in ``notes``.
    """
    lock = out / LOCK_FILE
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            pid = _holder(lock)
            if pid is not None and _alive(pid) and attempt == 0:
                raise OutputError(
                    f"{out} is being written by another od run (pid {pid}); wait for it to finish "
                    f"(or, if no such run exists, remove {lock})"
                ) from None
            if attempt == 1:
                raise OutputError(f"{out}: another od run took the lock {lock} at the same moment; try again") from None
            notes.append(f"took over the stale lock {lock} of pid {pid} (no longer running)")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
    try:
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        raise
    try:
        yield
    finally:
        if _holder(lock) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(lock)


@dataclass
class Existing:
    """What ``out`` holds before this run, sorted out by who wrote it."""

    ours: list[str] = field(default_factory=list)  # shards listed in the previous report.json
    foreign: list[str] = field(default_factory=list)  # shard-like names od did not write
    stale_temps: list[str] = field(default_factory=list)  # temp files of od runs that died


def survey(out: Path) -> Existing:
    """Read the previous manifest and classify the shard-like files in ``out``."""
    ex = Existing()
    if not out.is_dir():
        return ex
    try:  # no manifest, or one od cannot read: nothing in ``out`` counts as od's
        listed = report_shards(read_report(out / REPORT_FILE)) if (out / REPORT_FILE).exists() else set()
    except SchemaError:
        listed = set()
    for f in sorted(os.listdir(out)):
        if TMP_RE.match(f):
            ex.stale_temps.append(f)
        elif SHARD_RE.match(f):
            (ex.ours if f in listed else ex.foreign).append(f)
    return ex


def temp_name(final: str | os.PathLike) -> str:
    """A hidden temporary name beside ``final``, unique to this process."""
    final = Path(final)
    return str(final.with_name(f".{final.name}.{os.getpid()}.tmp"))


def commit(pairs: Sequence[tuple[str, str]], remove: Sequence[str] = ()) -> None:
    """Rename each ``(temp, final)`` into place and remove ``remove``, all or nothing.

    Files being replaced or removed are first moved to backup names; if any step fails,
    what was done is undone and the temp files are deleted, so the folder is exactly as
    before. Backups go once everything is in place.
    """
    moved: list[tuple[str, str]] = []  # (backup, original)
    placed: list[str] = []
    try:
        for path in [final for _, final in pairs] + list(remove):
            if os.path.lexists(path):
                backup = temp_name(path) + ".old"
                os.replace(path, backup)
                moved.append((backup, path))
        for tmp, final in pairs:
            os.replace(tmp, final)
            placed.append(final)
    except BaseException:
        for final in placed:
            with contextlib.suppress(OSError):
                os.unlink(final)
        for backup, path in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(backup, path)
        discard([tmp for tmp, _ in pairs])
        raise
    discard([backup for backup, _ in moved])


def discard(paths: Sequence[str]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)
