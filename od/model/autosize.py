"""Input size vs box sizes: the too-small-box warning, and ``--auto-size`` choosing the input (and anchor levels).

A box can only be learnt if some anchor overlaps it well. The smallest anchor of a Model Garden
RetinaNet / Faster R-CNN is ``anchor.anchor_size * 2**min_level`` pixels (sqrt of its area, for every
aspect ratio; the other scales are larger), so a box smaller than that at the model's input is matched
badly or not at all. The records' report.json says how big the boxes are relative to their image
(``od.io.schema.BoxSizeSketch``), which gives their size at any input without reading the records.

Sizes at a non-square input use its shorter side (Model Garden scales by ``min(H / h, W / w)``, at
least ``min(H, W) / longer image side``): an estimate that errs toward warning. ``--auto-size`` chooses
square inputs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from od.io.schema import BoxSizeSketch, report_box_sizes
from od.model.errors import ConfigError

WARN_FRACTION = 0.2  # warn when more boxes than this are smaller than the smallest anchor
TARGET_QUANTILE = 0.1  # --auto-size: the 10th-percentile box reaches the smallest anchor
LOWEST_FPN_LEVEL = 2  # ResNet hands FPN levels 2..5 (its block outputs); P2 is the finest there is
DEFAULT_BUDGET_FACTOR = 4  # templates without od.max_input_pixels: up to 4x their own input's pixels
INPUT_KEY = "task.model.input_size"
LEVEL_KEY = "task.model.min_level"


@dataclass(frozen=True)
class Sizing:
    """What --auto-size chose (or would choose) for one config."""

    side: int  # square input side, a multiple of 2**max_level
    min_level: int
    max_level: int
    anchor: float  # smallest anchor at min_level, px
    p10_at: float  # the 10th-percentile box at ``side``, px
    budget_side: int
    reaches: bool  # p10_at * train_scale >= anchor
    train_scale: float = 1.0  # the smallest training scale (aug_scale_min) it was chosen for

    @property
    def input_size(self) -> list[int]:
        return [self.side, self.side, 3]


def smallest_anchor(anchor_size: float, min_level: int) -> float:
    return float(anchor_size) * 2 ** int(min_level)


def fraction_under(sketch: BoxSizeSketch, input_hw: tuple[int, int], px: float) -> float:
    """Share of boxes whose size at ``input_hw`` is under ``px``."""
    return sketch.fraction_below(px / min(input_hw))


def quantile_at(sketch: BoxSizeSketch, input_hw: tuple[int, int], q: float = TARGET_QUANTILE) -> float:
    return sketch.quantile(q) * min(input_hw)


def budget_pixels(header: Mapping, input_hw: tuple[int, int]) -> int:
    """The template's compute budget for --auto-size: ``od.max_input_pixels`` (header or --set), else
    DEFAULT_BUDGET_FACTOR x its own input."""
    v = header.get("max_input_pixels")
    if v is None:
        return DEFAULT_BUDGET_FACTOR * input_hw[0] * input_hw[1]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"od.max_input_pixels must be a positive whole number of pixels (e.g. 1048576 for "
                          f"1024x1024), not {v!r}")
    return v


def _up(x: float, m: int) -> int:
    return math.ceil(x / m - 1e-9) * m


def choose(sketch: BoxSizeSketch, input_hw: tuple[int, int], anchor_size: float, min_level: int, max_level: int,
           budget: int, lowest_level: int, train_scale: float = 1.0) -> Sizing:
    """A square input (multiple of 2**max_level) for these boxes.

    Boxes too small at the template's input: the smallest input at which the 10th-percentile box reaches
    the smallest anchor even at the smallest training scale (``train_scale``: the parser's aug_scale_min),
    within ``budget`` pixels; when even the budget is not enough, the anchor levels start lower (down to
    ``lowest_level``: each level halves the smallest anchor), else the budget is the answer.
    Boxes large enough already: a smaller input only while no box falls under the smallest anchor that did
    not at the template's input, and never below half of it (the template was tuned for its size).
    """
    m = 2 ** max_level
    ts = min(1.0, train_scale)
    side0 = min(input_hw)
    budget_side = max(m, int(math.sqrt(budget)) // m * m)
    floor_side = min(max(2 * m, _up(side0 / 2, m)), budget_side)
    r10 = sketch.quantile(TARGET_QUANTILE)
    levels = list(range(min_level, min(lowest_level, min_level) - 1, -1))
    anchor = smallest_anchor(anchor_size, min_level)
    if r10 <= 0:  # not from od.records (every box it keeps has an area)
        return Sizing(_up(side0, m), min_level, max_level, anchor, 0.0, budget_side, False, ts)
    need = _up(anchor / (r10 * ts), m)
    if need <= side0:
        def no_worse(c: int) -> bool:  # at training's smallest scale and at evaluation's
            return all(sketch.fraction_below(anchor / (sc * c)) <= sketch.fraction_below(anchor / (sc * side0))
                       for sc in {ts, 1.0})

        top = min(max(floor_side, _up(side0, m)), max(budget_side, floor_side))
        side = next((c for c in range(max(floor_side, need), top, m) if no_worse(c)), top)
        return Sizing(side, min_level, max_level, anchor, r10 * side, budget_side, True, ts)
    for level in levels:
        anchor = smallest_anchor(anchor_size, level)
        side = max(floor_side, _up(anchor / (r10 * ts), m))
        if side <= budget_side:
            return Sizing(side, level, max_level, anchor, r10 * side, budget_side, True, ts)
    anchor = smallest_anchor(anchor_size, levels[-1])
    return Sizing(budget_side, levels[-1], max_level, anchor, r10 * budget_side, budget_side,
                  r10 * ts * budget_side >= anchor, ts)


def _lowest_level(params) -> int:
    """The finest level the model's backbone/decoder can give: P2 for ResNet + FPN, else its own."""
    mdl = params.task.model
    try:
        if mdl.backbone.type == "resnet" and mdl.decoder.type == "fpn":
            return LOWEST_FPN_LEVEL
    except AttributeError:
        pass
    return int(mdl.min_level)


def _train_scale(params) -> float:
    """The smallest scale training's jitter resizes images to (``train_data.parser.aug_scale_min``)."""
    try:
        return float(params.task.train_data.parser.aug_scale_min or 1.0)
    except AttributeError:
        return 1.0


def _hw(params) -> tuple[int, int]:
    s = params.task.model.input_size
    return int(s[0]), int(s[1])


def _pct(x: float) -> str:
    return f"{x:.0%}"


def size_check(params, header: Mapping, report: Mapping | None, auto_size: bool = False,
               explicit: Collection[str] = (), records: str = "the records") -> list[str]:
    """Apply --auto-size to ``params`` (a detection config, not locked) and return the lines to print:
    what --auto-size chose and why, and a warning when too many boxes are smaller than the smallest anchor.
    ``explicit``: the dotted keys the user gave with --set (an explicit input size / min_level wins).
    """
    lines: list[str] = []
    sketch = report_box_sizes(report) if report else None
    mdl = params.task.model
    hw = _hw(params)
    if sketch is None:
        if auto_size:
            lines.append(f"od: --auto-size: {records}/report.json has no box sizes (records written by an older "
                         f"od, or not by od, or without boxes); re-run `python -m od.records` to record them. "
                         f"Keeping input {hw[0]}x{hw[1]}")
        return lines
    budget = budget_pixels(header, hw)
    lowest = int(mdl.min_level) if LEVEL_KEY in explicit else _lowest_level(params)
    best = choose(sketch, hw, mdl.anchor.anchor_size, int(mdl.min_level), int(mdl.max_level), budget, lowest,
                  _train_scale(params))
    if auto_size:
        if INPUT_KEY in explicit:
            lines.append(f"od: --auto-size: {INPUT_KEY}={list(mdl.input_size)} given with --set wins; keeping it "
                         f"(auto-size would choose {best.side}x{best.side}, anchor levels {best.min_level}-{best.max_level})")
        else:
            before = quantile_at(sketch, hw)
            why = f"10th-percentile box {before:.0f} px at {hw[0]}x{hw[1]} -> {best.p10_at:.0f} px at {best.side}"
            if best.train_scale < 1:
                why += f", {best.p10_at * best.train_scale:.0f} px at the smallest training scale {best.train_scale:g}"
            why += f"; smallest anchor {best.anchor:.0f} px; budget {best.budget_side}x{best.budget_side}"
            if not best.reaches:
                why += (f"; the budget allows no more, so {_pct(fraction_under(sketch, (best.side, best.side), best.anchor))} "
                        "of boxes stay under the smallest anchor (raise it with --set od.max_input_pixels=N)")
            elif best.side < min(hw):
                why += f"; smaller, as no box that reaches the smallest anchor at {hw[0]}x{hw[1]} falls under it"
            elif best.min_level < mdl.min_level:
                why += f"; anchor levels start at {best.min_level}, not {mdl.min_level}, to fit the budget"
            lines.append(f"od: --auto-size: input {best.side}x{best.side} ({why}); anchor levels "
                         f"{best.min_level}-{best.max_level}")
            params.override({"task": {"model": {"input_size": best.input_size, "min_level": best.min_level}}},
                            is_strict=True)
            hw = _hw(params)
    anchor = smallest_anchor(mdl.anchor.anchor_size, mdl.min_level)
    frac = fraction_under(sketch, hw, anchor)
    if frac > WARN_FRACTION:
        msg = (f"od: warning: {_pct(frac)} of boxes are smaller than the smallest anchor ({anchor:.0f} px) at input "
               f"{hw[0]}x{hw[1]}; ")
        fix = []
        if best.side > min(hw) or (best.side == min(hw) and hw[0] != hw[1]):
            fix.append(f"--set {INPUT_KEY}=[{best.side},{best.side},3]")
        if best.min_level != mdl.min_level and best.side >= min(hw):
            fix.append(f"--set {LEVEL_KEY}={best.min_level}")
        if fix:
            msg += f"try {' '.join(fix)} (or --auto-size)"
        else:
            msg += (f"no input within the compute budget ({best.budget_side}x{best.budget_side}, od.max_input_pixels) "
                    f"fixes it; raise it with --set od.max_input_pixels=N, or use smaller anchors "
                    f"(task.model.anchor.anchor_size, {LEVEL_KEY})")
        lines.append(msg)
    return lines
