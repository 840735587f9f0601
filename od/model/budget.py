"""``od.train --time``: measure the first steps of the run, then choose the total steps that fit the budget.

How, and why this way:

- **The probe is the start of the real run**, not a throw-away run: it trains steps ``start..start+P`` in
  the model dir (``P`` = 5 loops of ``trainer.steps_per_loop``, with two validations: 100 steps of
  the CPU classifier, 50 of the CPU detector; 4 loops with ``--no-eval``), and the run proper
  continues from the probe's checkpoint, so no step is wasted. The total is not known during the
  probe, so its schedule runs over the config's own ``train_steps``. Model Garden's schedules are
  functions of the global step alone, so from step ``P`` on the run follows exactly the schedule of
  the chosen total ``T`` and ends at its end value at ``T``. Over the probe's steps the two schedules
  hardly differ: a cosine's factor at step ``s`` is ``(1 + cos(pi s / T)) / 2``, above 0.975 for
  ``s <= P`` whenever ``T >= 10 P``, and the templates' linear warmup (50 and 100 steps) depends on
  the total only through that factor at its end. A throw-away probe would cost the same second
  build and trace, and lose ``P`` steps.
- **What is measured** (``ProbeClock``, from the loop's own action calls, no extra device work): the
  steady steps/s (loops after the second; the first two's excess over it is tracing and warm-up), one
  validation pass as the config's ``validation_steps`` repeats it (the second one; the first one's
  excess is eval tracing), each checkpoint save, building the runner and the tail after the last
  loop (final save, Model Garden's parameter count). The run proper builds and traces again in the
  same process, warm caches making it about ``RESTART_FACTOR`` as long: charged once more.
- **The choice** (``plan``): the largest ``T`` (``P`` + whole loops) whose estimated od.train wall
  time, from its start, ends ``SAFETY`` before the budget. Validations keep the config's interval,
  but never take more than ``VALIDATION_SHARE`` of the time left after the probe: otherwise the
  interval is widened (fewer, never more, validations than fit).
- **Resume**: MODEL_DIR/od.yaml records the budget and the chosen total; re-running od.train on the
  model dir (with or without ``--time``) continues to that total without measuring again.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from od.model.overrides import flatten, nest
from od.options import format_duration

# The probe: 3 loops, a validation, 2 loops, a validation. The first loop traces and the second is still
# warming up (seen 10-25% slower than the later ones on a CPU), so the speed is the last three loops'.
PROBE_LOOPS = 5
PROBE_LOOPS_NO_EVAL = 4
WARMUP_LOOPS = 2
VALIDATION_SHARE = 0.25  # at most this share of the time after the probe goes to validations
SAFETY = 0.02  # aim this share of the budget before its end (speed varies on a shared machine)
EXIT_S = 1.0  # after the run: the summary, and od.train's exit (fast: see od.train's ``exit_after_budget``)
# The run proper builds, traces and warms up again, in the same process: faster the second time
# (autograph's and TensorFlow's caches are warm). 0.6-0.9 of the probe's, measured on a 2-core CPU.
RESTART_FACTOR = 0.7
# Learning-rate schedule fields that are the length of the whole run (Model Garden's lr configs).
LENGTH_KEYS = ("decay_steps", "total_decay_steps")
LENGTH_TYPES = ("cosine", "polynomial", "power_linear")


@dataclass(frozen=True)
class Measurement:
    """What the probe measured (seconds unless named otherwise)."""

    elapsed_s: float  # od.train wall time from its start to the end of the probe
    start_step: int  # global step the probe started from (0 for a new model dir)
    probe_steps: int  # global step the probe reached
    steps_per_s: float  # steady training speed, summaries included, checkpoint saves excluded
    build_s: float = 0.0  # building task, model, trainer, restoring: once more for the run proper
    trace_s: float = 0.0  # the first two loops' excess (graph tracing, warming up): once more
    validation_s: float = 0.0  # one validation pass (0: no validation)
    validation_trace_s: float = 0.0  # the first validation's excess (eval tracing): once more
    checkpoint_s: float = 0.0  # one checkpoint save
    tail_s: float = 0.0  # after the last loop / validation until the runner returns, saves excluded


@dataclass(frozen=True)
class Plan:
    train_steps: int  # the chosen total
    validation_interval: int
    validations: int  # in the run proper (from the probe's end to the total)
    checkpoints: int
    estimated_end_s: float  # od.train wall time at the end, from its start
    fits: bool  # False: not even one loop fits after the probe (train_steps = the probe's)
    widened: bool = False  # the validation interval was raised to fit VALIDATION_SHARE


def counts(start: int, total: int, steps_per_loop: int, validation_interval: int | None,
           checkpoint_interval: int | None, last_saved: int | None) -> tuple[int, int]:
    """(validations, checkpoint saves) Orbit's train_and_evaluate / train does from ``start`` to ``total``.

    Mirrors orbit.Controller and tf.train.CheckpointManager: validation every ``validation_interval``
    steps from ``start`` and at the end; a save at a loop end once ``checkpoint_interval`` steps passed
    since the last one (at the first loop end when none was saved yet), and a final one unless the
    last loop just saved. ``validation_interval`` None: no validation (``--no-eval``).
    """
    evals = saves = 0
    cur, last = start, last_saved
    interval = validation_interval or max(1, total - start)
    while cur < total:
        target = min(total, cur + interval)
        while cur < target:
            cur += min(steps_per_loop, target - cur)
            if checkpoint_interval and (last is None or cur >= last + checkpoint_interval):
                saves, last = saves + 1, cur
        if validation_interval:
            evals += 1
    if checkpoint_interval and last != cur:
        saves += 1
    return evals, saves


def plan(budget_s: float, m: Measurement, steps_per_loop: int, validation_interval: int | None,
         checkpoint_interval: int | None) -> Plan:
    """The largest total (the probe's steps + whole loops) that ends within the budget; pure arithmetic.

    ``validation_interval`` None means no validation. The run proper restarts from the probe's last
    checkpoint (its own saves counted from there).
    """
    p = m.probe_steps
    exit_s = EXIT_S
    left = budget_s * (1 - SAFETY) - exit_s - m.elapsed_s  # time for the run proper

    def cost(total: int, vi: int | None) -> tuple[float, int, int]:
        ev, sv = counts(p, total, steps_per_loop, vi, checkpoint_interval, p)
        warm = RESTART_FACTOR * (m.build_s + m.trace_s + (m.validation_trace_s if ev else 0.0))
        return warm + m.tail_s + (total - p) / m.steps_per_s + ev * m.validation_s + sv * m.checkpoint_s, ev, sv

    def largest(vi: int | None) -> int:
        lo, hi = 0, max(1, int(max(left, 0) * m.steps_per_s / steps_per_loop) + 1)
        while lo < hi:  # the largest k with cost(p + k loops) <= left; cost grows with k
            mid = (lo + hi + 1) // 2
            if cost(p + mid * steps_per_loop, vi)[0] <= left:
                lo = mid
            else:
                hi = mid - 1
        return p + lo * steps_per_loop

    vi = validation_interval if validation_interval and validation_interval > 0 else None
    total, widened = largest(vi), False
    if vi and m.validation_s > 0:
        max_evals = max(1, int(VALIDATION_SHARE * max(left, 0) / m.validation_s))
        for _ in range(4):  # widening the interval lets the total grow: settle in a few rounds
            ev = cost(total, vi)[1]
            if ev <= max_evals or total <= p:
                break
            vi = max(vi, math.ceil((total - p) / max_evals / steps_per_loop) * steps_per_loop)
            total, widened = largest(vi), True
    if vi is None and validation_interval:
        vi = validation_interval
    est, ev, sv = cost(total, vi) if total > p else (0.0, 0, 0)
    return Plan(train_steps=total, validation_interval=vi or 0, validations=ev, checkpoints=sv,
                estimated_end_s=m.elapsed_s + est + exit_s, fits=total > p, widened=widened)


def probe_overrides(start: int, steps_per_loop: int, evaluate: bool) -> dict:
    """Config overrides for the probe: a few loops, validating after the third and the last."""
    loops = PROBE_LOOPS if evaluate else PROBE_LOOPS_NO_EVAL
    return {"trainer": {"train_steps": start + loops * steps_per_loop,
                        "validation_interval": 3 * steps_per_loop}}


def tied_to_total(at_old: Mapping, at_new: Mapping, old_total: int, new_total: int) -> tuple[dict, list[str]]:
    """Overrides that move a config from ``old_total`` to ``new_total`` steps, and notes to print.

    ``at_old`` / ``at_new``: the config (``as_dict()``) rendered with each total, the way ``--steps``
    does it: every field the template ties to ``${train_steps}`` (the cosine/polynomial
    ``decay_steps`` of every shipped template) differs between them and is taken from ``at_new``. A
    schedule length written as a number instead is moved too when it equals the old total (it meant
    "the whole run"), otherwise named in a note: that schedule will not end at the new total.
    """
    a, b = flatten(at_old), flatten(at_new)
    over = {k: b[k] for k in b if a.get(k) != b[k]}
    over["trainer.train_steps"] = new_total
    notes: list[str] = []
    lr = "trainer.optimizer_config.learning_rate"
    kind = b.get(f"{lr}.type")
    for key in LENGTH_KEYS:
        k = f"{lr}.{kind}.{key}"
        if kind not in LENGTH_TYPES or k not in b or k in over or b[k] in (None, new_total):
            continue
        if b[k] == old_total:
            over[k] = new_total
            notes.append(f"{k}={old_total} (the old total) follows the budget: {new_total}")
        else:
            notes.append(f"{k}={b[k]} is not tied to trainer.train_steps (write ${{train_steps}} in the "
                         f"template): the {kind} schedule will not end at step {new_total}")
    warm = b.get("trainer.optimizer_config.warmup.type")
    ws = b.get(f"trainer.optimizer_config.warmup.{warm}.warmup_steps") if warm else None
    if ws and ws >= new_total:
        notes.append(f"warmup_steps={ws} is not below the total {new_total}: the run ends inside the warmup")
    return nest(over), notes


# --------------------------------------------------------------------------- measuring


@dataclass
class ProbeClock:
    """Timestamps of the probe's loops, validations and checkpoint saves (Orbit actions + a save wrapper).

    Each gap between two actions is a train loop or a validation; checkpoint saves, which Orbit does
    between them, are timed on their own and taken out of the gap they fell in.
    """

    clock: Callable[[], float] = time.monotonic
    step: Callable[[], int] = lambda: 0
    events: list[tuple[str, float, int, float]] = field(default_factory=list)  # kind, t, step, saves in gap
    saves: list[float] = field(default_factory=list)
    t_build: float = 0.0
    t_ready: float = 0.0
    t_end: float = 0.0
    start_step: int = 0
    _gap_saves: float = 0.0

    def building(self) -> None:
        self.t_build = self.clock()

    def ready(self, step: Callable[[], int], checkpoint_manager=None) -> None:
        """The runner is built (and restored; ``step()`` reads its global step): the loop starts now.
        Wraps the checkpoint manager's ``save`` (that runner's own object) to time each save."""
        self.step = step
        self.start_step = int(step())
        if checkpoint_manager is not None:
            save = checkpoint_manager.save

            def timed_save(*a, **k):
                t = self.clock()
                path = save(*a, **k)
                if path is not None:  # None: the interval had not passed, nothing written
                    dt = self.clock() - t
                    self.saves.append(dt)
                    self._gap_saves += dt
                return path

            checkpoint_manager.save = timed_save
        self.t_ready = self.clock()

    def _event(self, kind: str) -> None:
        self.events.append((kind, self.clock(), int(self.step()), self._gap_saves))
        self._gap_saves = 0.0

    def on_train(self, output=None) -> None:
        self._event("train")

    def on_eval(self, output=None) -> None:
        self._event("eval")

    def finished(self) -> None:
        self.t_end = self.clock()
        last = int(self.step())
        self.step = lambda: last  # the clock does not hold the runner

    def measurement(self, elapsed_s: float) -> Measurement:
        t_prev, s_prev = self.t_ready, self.start_step
        loops: list[tuple[int, float]] = []  # (steps, seconds) of each train loop
        evals: list[float] = []
        for kind, t, step, saved in self.events:
            gap = t - t_prev - saved
            if kind == "train":
                loops.append((step - s_prev, gap))
            else:
                evals.append(gap)
            t_prev, s_prev = t, step
        if not loops:
            raise ValueError("the probe ran no training loop")
        warm = min(WARMUP_LOOPS, len(loops) - 1)  # with too few loops, tracing cannot be told apart
        steady = loops[warm:]
        sps = sum(n for n, _ in steady) / max(sum(s for _, s in steady), 1e-9)
        first = (sum(n for n, _ in loops[:warm]), sum(s for _, s in loops[:warm]))
        val = evals[-1] if evals else 0.0
        return Measurement(
            elapsed_s=elapsed_s, start_step=self.start_step, probe_steps=s_prev, steps_per_s=sps,
            build_s=max(0.0, self.t_ready - self.t_build), trace_s=max(0.0, first[1] - first[0] / sps),
            validation_s=val, validation_trace_s=max(0.0, evals[0] - val) if len(evals) > 1 else 0.0,
            checkpoint_s=sum(self.saves) / len(self.saves) if self.saves else 0.0,
            tail_s=max(0.0, self.t_end - t_prev - self._gap_saves),
        )


# --------------------------------------------------------------------------- the run


def record(budget_s: float, m: Measurement | None = None, p: Plan | None = None) -> dict:
    """The ``time_budget`` entry of MODEL_DIR/od.yaml (``train_steps`` None while measuring)."""
    out: dict[str, Any] = {"budget": format_duration(budget_s), "seconds": float(budget_s),
                           "train_steps": p.train_steps if p else None}
    if p:
        out.update(validation_interval=p.validation_interval, estimated_end_s=round(p.estimated_end_s, 1))
    if m:
        out["measured"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(m).items()}
    return out


def describe(budget_s: float, m: Measurement, p: Plan) -> str:
    """``time budget 15m: measured 4.1 steps/s (+ 6.2 s per validation); training 3400 steps (ends ~14m40s)``."""
    val = f" (+ {m.validation_s:.1f} s per validation)" if m.validation_s else ""
    head = f"time budget {format_duration(budget_s)}: measured {m.steps_per_s:.3g} steps/s{val}"
    if not p.fits:
        return (f"{head}; the probe's {p.train_steps} steps already take {format_duration(m.elapsed_s)}: "
                "no time for more (the learning-rate schedule does not complete; give a longer --time)")
    vals = f", {p.validations} validation{'s' if p.validations != 1 else ''}" if p.validations else ""
    return f"{head}; training {p.train_steps} steps{vals} (ends ~{format_duration(p.estimated_end_s)})"


def resume_budget(time_s: float | None, prev: dict | None, params, header: dict, model_dir: str, steps_set: bool,
                  set_keys: set[str]) -> float | None:
    """The budget to measure for (None: train to ``params``' train_steps), od.yaml's ``time_budget`` carried.

    ``prev``: od.train's previous run in ``model_dir`` (``{"params", "header"}``) or None. A budgeted
    model dir continues to its chosen total (already in its pipeline.yaml, and so in ``params``) and
    validation interval without measuring again, with or without --time; one stopped while measuring
    measures again (or takes --steps); a run trained without --time cannot take one (its schedule is set).
    """
    from od.model.errors import ConfigError
    from od.model.model_dir import latest_step

    rec = (prev or {}).get("header", {}).get("time_budget")
    if not rec:
        if time_s is not None and prev is not None and latest_step(model_dir) > 0:
            raise ConfigError(f"{model_dir} was trained without --time (train_steps="
                              f"{prev['params'].trainer.train_steps}); resume it without --time (or extend it "
                              "with --steps), or give --time a new --model-dir")
        if time_s is not None:
            header["time_budget"] = record(time_s)
        return time_s
    if rec.get("train_steps") is None:  # stopped while measuring
        if steps_set:
            header.pop("time_budget", None)  # --steps decides now
            return None
        budget = time_s if time_s is not None else float(rec["seconds"])
        header["time_budget"] = record(budget)
        return budget
    header["time_budget"] = rec
    if time_s is not None:
        print(f"od: note: {model_dir} is a budgeted run ({rec.get('budget')}: {rec.get('train_steps')} steps); "
              f"continuing to step {params.trainer.train_steps} without measuring again", file=sys.stderr)
    vi = rec.get("validation_interval")
    if vi and "trainer.validation_interval" not in set_keys:
        params.override({"trainer": {"validation_interval": int(vi)}}, is_strict=True)
    return None


def train_within_budget(budget_s: float, started: float, start: int, params, fit: Callable[[Any, ProbeClock], Any],
                        rerender: Callable[[int], Any], save_config: Callable[[Any, dict], None],
                        evaluate: bool, say: Callable[[str], None] = lambda s: print(f"od: {s}", file=sys.stderr)):
    """Probe, plan, reconfigure, train on: -> (params of the run proper, Plan, Measurement, the probe's runner).

    ``started``: time.monotonic() when od.train started. ``fit(params, clock)`` builds a runner for
    ``params`` (reporting to ``clock``), runs it and returns it. The probe's runner is handed back for
    the caller to hold to its end: freeing it (TensorFlow's C++ objects) took 5-18 s on a 2-core CPU,
    time taken from the budget. ``rerender(total)`` renders the config with
    ``trainer.train_steps=total`` (what ``--steps`` does); ``save_config(params, record)`` writes
    pipeline.yaml and od.yaml's ``time_budget``.
    """
    t = params.trainer
    spl = t.steps_per_loop
    old_total = t.train_steps
    clock = ProbeClock()
    probe_runner = fit(params.replace(**probe_overrides(start, spl, evaluate)), clock)
    m = clock.measurement(time.monotonic() - started)
    pl = plan(budget_s, m, spl, t.validation_interval if evaluate else None, t.checkpoint_interval)
    over, notes = tied_to_total(rerender(old_total).as_dict(), rerender(pl.train_steps).as_dict(), old_total,
                                pl.train_steps)
    if evaluate and pl.validation_interval:
        over.setdefault("trainer", {})["validation_interval"] = pl.validation_interval
    final = params.replace(**over)
    final.validate()
    final.lock()
    say(describe(budget_s, m, pl))
    if pl.widened:
        say(f"note: validating every {pl.validation_interval} steps instead of {t.validation_interval}, so "
            f"validations take at most {VALIDATION_SHARE:.0%} of the time")
    for n in notes:
        say(f"note: {n}")
    rec = record(budget_s, m, pl)
    save_config(final, rec)
    if pl.fits:
        run = ProbeClock()  # the same clock on the run proper: od.yaml says how the estimate held
        fit(final, run)
        r = run.measurement(time.monotonic() - started)
        rec["run"] = {"build_s": round(r.build_s, 2), "trace_s": round(r.trace_s, 2),
                      "steps_per_s": round(r.steps_per_s, 3), "runner_done_s": round(r.elapsed_s, 1)}
        save_config(final, rec)
    return final, pl, m, probe_runner
