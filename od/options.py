"""Flags every CLI shares, range-checked argparse types, and quieting TensorFlow and friends.

Defined once so that ``--quiet`` or ``--score-threshold`` cannot drift between commands (the table
in the README's "CLI conventions" lists them). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator

TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"


def version() -> str:
    import od

    v = getattr(od, "__version__", None)
    if v:
        return str(v)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("od")
    except PackageNotFoundError:
        return "unknown"


def step_name(parser: argparse.ArgumentParser) -> str:
    """``python -m od.records`` -> ``records``."""
    return parser.prog.split()[-1].removeprefix("od.")


class _Version(argparse.Action):
    """``--version``: resolved only when asked, so building a parser stays cheap."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"od {step_name(parser)} {version()}")
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_Version, help="print 'od STEP VERSION' and exit")


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true",
                   help="no progress bars, and no printing by third-party libraries (e.g. pycocotools' tables)")
    g.add_argument("--verbose", action="store_true",
                   help=f"show TensorFlow's own log (C++ and absl), hidden otherwise; a {TF_LOG_ENV} you set wins")


def add_common(parser: argparse.ArgumentParser, subparsers: list[argparse.ArgumentParser] | None = None) -> None:
    """``--version`` on ``parser``; ``--quiet``/``--verbose`` on it, or on each subcommand's parser
    when it has subcommands (so they go where users type them: ``od.configs render ... --quiet``)."""
    add_version(parser)
    for p in subparsers if subparsers is not None else [parser]:
        add_verbosity(p)


def add_force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=f"replace what exists: {what}")


# --------------------------------------------------------------------------- range-checked types


def _number(text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


@functools.cache
def fraction(lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """A number in [0, 1] (ends open on request). One object per range, so tests can compare types."""
    span = f"{'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        v = _number(text, float)
        if not ((0.0 < v if lo_open else 0.0 <= v) and (v < 1.0 if hi_open else v <= 1.0)):
            raise argparse.ArgumentTypeError(f"{v} is not in {span}")
        return v

    parse.__name__ = f"fraction{span}"
    return parse


def positive_int(text: str) -> int:
    v = _number(text, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def non_negative_int(text: str) -> int:
    v = _number(text, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)h)?(?:(\d+(?:\.\d*)?|\.\d+)m)?(?:(\d+(?:\.\d*)?|\.\d+)s)?")


def duration(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``1h30m``, ``1.5h`` or plain seconds (``600``) -> seconds (> 0)."""
    t = text.strip().lower()
    try:
        seconds = float(t)
    except ValueError:
        m = _DURATION.fullmatch(t)
        if not t or not m or not any(m.groups()):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (e.g. 90s, 15m, 1h, 1h30m, or seconds)") from None
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if not (seconds > 0 and seconds != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a time longer than 0 s")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> ``1h30m``, ``14m40s``, ``45s`` (whole seconds; what od prints for a time budget)."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s or not (h or m) else ""]
    return "".join(parts)


# --------------------------------------------------------------------------- shared flags

SCORE_THRESHOLD_HELP = "minimum score of a box, in [0, 1]"
MAX_DETECTIONS_HELP = "at most N boxes per image, the highest scores"


def add_split_fractions(parser: argparse.ArgumentParser, default_val: float) -> None:
    """``--val-fraction`` / ``--test-fraction``: the hash split's shares where the dataset gives no
    splits (``records``, ``convert``: one definition, so both split an image the same way)."""
    parser.add_argument("--val-fraction", type=fraction(hi_open=True), default=None, metavar="F",
                        help=f"val share when the dataset gives no splits (ImageSets/Main, the format's split "
                        f"files or folders) (default {default_val})")
    parser.add_argument("--test-fraction", type=fraction(hi_open=True), default=0.0, metavar="F",
                        help="test share when the dataset gives no splits (default 0)")


def add_score_threshold(parser: argparse.ArgumentParser, default: float | None, what: str) -> None:
    parser.add_argument("--score-threshold", type=fraction(), default=default, metavar="T",
                        help=f"{SCORE_THRESHOLD_HELP}; {what}")


def add_max_detections(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--max-detections", type=positive_int, default=None, metavar="N",
                        help=f"{MAX_DETECTIONS_HELP}; {what}")


def add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=("auto", "savedmodel", "tflite"), default="auto",
                        help="which file of the export runs: auto (default) runs model.tflite when the export "
                        "holds one, else the SavedModel")


def add_gallery(parser: argparse.ArgumentParser, default: int, where: str) -> None:
    parser.add_argument("--gallery", type=non_negative_int, default=default, metavar="N",
                        help=f"number of images in {where} (0: no gallery; default {default})")


# --------------------------------------------------------------------------- logs


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hide TensorFlow's C++ log (``failed call to cuInit``, the oneDNN notice: level 3 is the one that
    hides the cuInit ERROR line) and absl/Python TF logging, unless ``verbose``. A
    ``TF_CPP_MIN_LOG_LEVEL`` the user set wins. ``TF_ENABLE_ONEDNN_OPTS`` is left alone: it changes
    numerics. Call before TensorFlow is imported (the C++ level is read once, at import)."""
    if TF_LOG_ENV not in os.environ:
        os.environ[TF_LOG_ENV] = "0" if verbose else "3"
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("tensorflow").setLevel(level)
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)


@contextlib.contextmanager
def third_party_quiet(quiet: bool) -> Iterator[None]:
    """With ``quiet``, drop what libraries print to stdout (pycocotools' table in Model Garden's
    COCO evaluator); od's own lines in the wrapped code go to stderr, or are printed after it."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield

