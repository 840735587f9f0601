"""Fine-tune restore: every part of a model a checkpoint has with matching shapes; the class-dependent rest re-initialised."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Sequence

from od.model.checkpoints import CheckpointError, is_ckpt_prefix

# Parts of each head that do not depend on the number of classes (restored when shapes match);
# everything else in the head (classifier, class-specific box regressor) keeps its fresh init.
CLASS_INDEPENDENT = {
    "detection_head": ("_convs", "_conv_norms", "_fcs", "_fc_norms"),
    "head": ("_cls_convs", "_cls_norms", "_box_convs", "_box_norms", "_box_regressor"),
}
ALL_MODULES = ("backbone", "decoder", "rpn_head", "detection_head", "head")


@dataclasses.dataclass
class RestoreReport:
    restored: list[str] = dataclasses.field(default_factory=list)
    not_restored: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (part, why)
    reinitialised: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"  restored:       {', '.join(self.restored) or 'nothing'}"]
        for part, why in self.not_restored:
            out.append(f"  not restored:   {part} ({why})")
        if self.reinitialised:
            out.append(f"  re-initialised: {', '.join(self.reinitialised)} (depend on the number of classes)")
        return out


def _parts(model: Any, modules: Sequence[str]) -> list[tuple[str, str, Any, list[str]]]:
    """(label, checkpoint name, trackable to restore, class-dependent attrs left out) for the model."""
    import tensorflow as tf

    parts = []
    for name in ALL_MODULES:
        if name not in modules:
            continue
        obj = getattr(model, name, None)
        if obj is None:
            continue
        if name in CLASS_INDEPENDENT:
            heads = obj if isinstance(obj, (list, tuple)) or type(obj).__name__ == "ListWrapper" else [obj]
            keep = CLASS_INDEPENDENT[name]
            proxies = []
            left_out: list[str] = []
            for h in heads:
                attrs = {a: getattr(h, a) for a in keep if getattr(h, a, None) is not None}
                proxies.append(tf.train.Checkpoint(**attrs))
                left_out += [a for a in ("_classifier", "_box_regressor") if a not in keep and hasattr(h, a)]
            target: Any = proxies if isinstance(obj, (list, tuple)) or type(obj).__name__ == "ListWrapper" else proxies[0]
            parts.append((name, name, target, sorted(set(left_out))))
        else:
            parts.append((name, name, obj, []))
    return parts


def _variables(obj: Any) -> list:
    import tensorflow as tf

    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in _variables(o)]
    if hasattr(obj, "variables") and not isinstance(obj, tf.train.Checkpoint):
        return list(obj.variables)
    # A tf.train.Checkpoint proxy: collect from its children.
    out = []
    for child in getattr(obj, "_trackable_children", lambda: {})().values():
        out += _variables(child)
    return out


def restore_for_finetune(
    model: Any,
    checkpoint: str,
    modules: Sequence[str] | str = "all",
    log: Callable[[str], None] | None = None,
) -> RestoreReport:
    """Restore every part of ``model`` the checkpoint has with matching shapes; re-init the rest.

    Each part (backbone, decoder, RPN head, the class-independent layers of the box head) is
    restored on its own and only if the checkpoint covers all of its variables with the same shapes;
    a part that does not fit is put back exactly as it was, so a half-restored layer is impossible.
    """
    import tensorflow as tf

    log = log or (lambda m: print(m, file=sys.stderr))
    mods = [modules] if isinstance(modules, str) else list(modules)
    if "all" in mods:
        mods = list(ALL_MODULES)
    unknown = [m for m in mods if m not in ALL_MODULES]
    if unknown:
        raise CheckpointError(f"unknown init_checkpoint_modules {unknown}; use 'all' or some of {list(ALL_MODULES)}")
    modules = mods
    if not (is_ckpt_prefix(checkpoint) if "://" not in checkpoint else True):
        raise CheckpointError(f"{checkpoint}: no such checkpoint (expected {checkpoint}.index)")
    try:
        tf.train.load_checkpoint(checkpoint)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise CheckpointError(f"{checkpoint}: not a readable TensorFlow checkpoint ({e})") from e

    report = RestoreReport()
    for label, ckpt_name, target, left_out in _parts(model, modules):
        variables = _variables(target)
        if not variables:
            continue
        snapshot = [v.numpy() for v in variables]
        why = None
        for root in (lambda t: {ckpt_name: t}, lambda t: {"model": tf.train.Checkpoint(**{ckpt_name: t})}):
            try:
                status = tf.train.Checkpoint(**root(target)).read(checkpoint)
                status.expect_partial()
                status.assert_existing_objects_matched()
                why = None
                break
            except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
                for v, s in zip(variables, snapshot):
                    v.assign(s)
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                why = ("shapes differ: " + msg[:160]) if ("shape" in msg.lower()) else "not in the checkpoint"
        if why is None:
            report.restored.append(f"{label} ({len(variables)} variables)")
        else:
            report.not_restored.append((label, why))
        report.reinitialised += [f"{label}.{a.lstrip('_')}" for a in left_out]
    log(f"od: fine-tuning from {checkpoint}:")
    for line in report.lines():
        log(line)
    if not report.restored:
        raise CheckpointError(
            f"nothing in {checkpoint} matches this model (tried {', '.join(modules)}): it is not a Model "
            "Garden checkpoint of a compatible architecture (check the backbone type/model_id in the template)"
        )
    return report

