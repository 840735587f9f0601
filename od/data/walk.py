"""Finding a dataset's files safely: inside its root, regular files only, names that are text.

A dataset folder is something a user unzipped or a colleague shared: it may hold links
that lead elsewhere on the disk, FIFOs or folders named like files, and names in a
Windows code page. Every path od reads is checked here by its real path; what is refused
becomes a ``Problem`` instead of being read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

from od.core import SKIPPED_IMAGE, Problem
from od.io.files import kind_of, shown


@dataclass
class Roots:
    """The real folders od may read from, and (with ``follow_links``) where else it read.

    ``inside`` holds real paths: the dataset root, plus any folder the user named
    explicitly (``--annotations``/``--images``). A path is inside when its real path (every
    link resolved) lies under one of them.
    """

    inside: tuple[str, ...]
    follow_links: bool = False
    outside: set[str] = field(default_factory=set)  # real folders read outside ``inside``

    @classmethod
    def of(cls, *folders: str | os.PathLike, follow_links: bool = False) -> "Roots":
        return cls(tuple(os.path.realpath(f) for f in folders), follow_links)

    def refuse(self, path: str | os.PathLike, real: str | None = None) -> str | None:
        """Why ``path`` must not be read (it leads outside), or None when it may be.

        ``real``: ``path``'s real path when the caller has it already (saves resolving it again)."""
        real = real or os.path.realpath(path)
        if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.inside):
            return None
        if self.follow_links:
            self.outside.add(os.path.dirname(real) if os.path.isfile(real) else real)
            return None
        return f"is a link to {shown(real)}, outside the dataset; not read (pass --follow-links to allow it)"


def name_problem(name: str) -> str | None:
    """Why a file name cannot be used as text (bytes that are not UTF-8), or None."""
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (shown with \\x escapes); not read: rename the file"


def walk_xml(folder: str | os.PathLike, roots: Roots, report_name) -> Iterator[tuple[str, Problem | None]]:
    """``(path, None)`` for each XML under ``folder`` (sorted, hidden names skipped), and
    ``(path, problem)`` for what is refused: links out, folders/FIFOs named ``*.xml``, odd names.

    Folder links are followed only when they stay inside ``roots`` (or ``follow_links``);
    a folder reached twice (a link loop) is read once. ``report_name(path)`` words paths.
    """
    return walk_files(folder, roots, report_name, (".xml",))


def walk_files(
    folder: str | os.PathLike, roots: Roots, report_name, suffixes: tuple[str, ...]
) -> Iterator[tuple[str, Problem | None]]:
    """``walk_xml`` for files whose lower-case name ends with one of ``suffixes``."""
    seen: set[str] = set()

    def walk(d: str) -> Iterator[tuple[str, Problem | None]]:
        real = os.path.realpath(d)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield d, Problem(report_name(d), f"cannot list folder: {e.strerror or e}", SKIPPED_IMAGE)
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows links
                mode = e.stat().st_mode
            except OSError:  # a dangling link
                if e.name.lower().endswith(suffixes):
                    yield e.path, Problem(report_name(e.path), "is a broken link; not read", SKIPPED_IMAGE)
                continue
            wanted = e.name.lower().endswith(suffixes)
            bad_name = name_problem(e.name)
            if bad_name:
                if is_dir or wanted:
                    yield e.path, Problem(shown(report_name(e.path)), bad_name, SKIPPED_IMAGE)
                continue
            if is_dir and not wanted:
                why = roots.refuse(e.path) if e.is_symlink() else None
                if why:
                    yield e.path, Problem(report_name(e.path) + "/", f"folder {why}", SKIPPED_IMAGE)
                else:
                    yield from walk(e.path)
                continue
            if not wanted:
                continue
            if not stat.S_ISREG(mode):
                yield e.path, Problem(report_name(e.path), f"not a regular file ({kind_of(mode)}); not read",
                                      SKIPPED_IMAGE)
                continue
            yield e.path, None

    yield from walk(os.fspath(folder))


def any_xml(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an XML file at any depth (layout detection; no checks)."""
    for _, _, files in os.walk(folder):
        if any(f.lower().endswith(".xml") and not f.startswith(".") for f in files):
            return True
    return False
