"""report.json: what was converted, per split and class, and every problem with what od did."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Sequence

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Problem
from od.io.schema import REPORT_VERSION, SPLITS, classes_list

if TYPE_CHECKING:
    from od.data.convert import Outcome
    from od.data.plan import Plan


def build_report(
    plan: Plan, data_dir: str, label_map_path: str, outcomes: Sequence[Outcome], files: dict[str, list[str]],
    template_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> dict:
    """``template_sizes``: (input height, input width) of each detection template, for ``box_sizes``."""
    lm = plan.label_map
    cls_task = plan.task == "classification"
    by_index = {o.index: o for o in outcomes}
    splits: dict[str, dict] = {}
    problems: list[Problem] = list(plan.problems)
    for split in SPLITS:
        its = [it for it in plan.items if it.split == split]
        if not its and not files.get(split):
            continue
        per_class = {n: {"images": 0} if cls_task else {"images": 0, "boxes": 0} for n in lm.names}
        n_images = n_boxes = negatives = 0
        for it in its:
            o = by_index[it.index]
            if not o.converted:
                continue
            n_images += 1
            n_boxes += o.kept_boxes
            negatives += o.kept_boxes == 0
            for cls, n in o.class_counts:
                per_class.setdefault(cls, {"images": 0, "boxes": 0})
                per_class[cls]["images"] += 1
                if not cls_task:
                    per_class[cls]["boxes"] += n
        splits[split] = {"files": files.get(split, []), "num_images": n_images, "per_class": per_class}
        if not cls_task:
            splits[split].update(num_boxes=n_boxes, negatives=negatives)
    for it in plan.items:
        problems.extend(by_index[it.index].problems)
    # Planning problems come first per XML; keep a stable, readable order by file.
    problems.sort(key=lambda p: p.file)
    converted = [o for o in outcomes if o.converted]
    actions = Counter(p.action for p in problems)
    summary = {
        "layout": plan.layout.kind,
        "layout_description": plan.layout.description,
        "split_source": plan.splits_source,
        ("image_files" if cls_task else "xml_files"): plan.num_xml,
        "images_converted": len(converted),
        "images_skipped": plan.num_xml - len(converted) - len(plan.not_listed),
        "images_copied_unchanged": sum(o.fast_path for o in converted),
        "images_reencoded": sum(o.reencoded for o in converted),
        "boxes": sum(o.kept_boxes for o in converted),
        "negatives": sum(o.kept_boxes == 0 for o in converted),
        "problems": len(problems),
        "problems_by_action": {a: actions.get(a, 0) for a in (SKIPPED_IMAGE, DROPPED_BOX, FIXED)},
        "difficult_boxes_skipped": plan.difficult_skipped,
        "not_in_imagesets": len(plan.not_listed),
    }
    if cls_task:
        for k in ("boxes", "negatives", "difficult_boxes_skipped", "not_in_imagesets"):
            del summary[k]
    out = {
        "version": REPORT_VERSION,
        "data_dir": data_dir,
        "label_map": label_map_path,
        "classes": classes_list(lm.items),
        "num_classes": lm.num_classes,
        "splits": splits,
        "problems": [p.to_dict() for p in problems],
        "outside_roots": plan.outside_roots,
        "summary": summary,
    }
    if not cls_task:
        from od.data.box_sizes import box_size_stats

        out["box_sizes"] = box_size_stats(_stored_boxes(plan, by_index), template_sizes or {}, lm.names)
    if cls_task:  # no "task": detection (reports od wrote before classification read the same)
        out["task"] = plan.task
        out["labels"] = lm.names  # the record label of each class: its line in labels.txt (label map id - 1)
    return out


def _stored_boxes(plan: Plan, by_index: Mapping[int, Outcome]):
    """The boxes the records hold, sized: each converted image's boxes after the same rules the
    converter applied (clipped to the stored image, empty ones dropped). Crowd boxes are left out:
    Model Garden skips them in training (``skip_crowd_during_training``), so no anchor has to fit them."""
    from od.data.box_sizes import SizedBox
    from od.data.voc import apply_box_rules

    for it in plan.items:
        o = by_index[it.index]
        if not o.converted or not o.kept_boxes:
            continue
        kept, _ = apply_box_rules(it.boxes, o.width, o.height, it.xml_name)
        for b in kept:
            if not b.is_crowd:
                yield SizedBox(b.name, b.width, b.height, o.width, o.height)
