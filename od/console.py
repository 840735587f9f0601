"""What every CLI says and how: exit codes, error and warning lines, tables, defaults used."""

from __future__ import annotations

import sys
from typing import Iterable, Sequence

# Exit codes shared by every CLI.
EXIT_OK = 0
EXIT_FAILURES = 1  # done, but some inputs failed
EXIT_USAGE = 2


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain aligned text table (first column left, the rest right-aligned)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    lines = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], file=None) -> None:
    print(format_table(headers, rows), file=file or sys.stdout)


def note_default(what: str, value: object) -> None:
    """Say which default was used, so nothing happens silently."""
    print(f"od: using default {what}: {value}", file=sys.stderr)


def error(msg: str) -> None:
    print(f"od: error: {msg}", file=sys.stderr)


def warn(msg: str) -> None:
    print(f"od: warning: {msg}", file=sys.stderr)


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` pairs (Ultralytics-style) -> dict; raises ValueError naming the bad pair."""
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"override {p!r} is not key=value")
        k, v = p.split("=", 1)
        k = k.strip()
        if not k:
            raise ValueError(f"override {p!r} has an empty key")
        out[k] = v.strip()
    return out
