"""One image -> its Example parts (image checked, boxes ruled); one shard written from its images."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

from od.core import SKIPPED_IMAGE, Box, Problem
from od.data.voc import apply_box_rules

if TYPE_CHECKING:
    from od.data.plan import Item, ShardTask


class Outcome(NamedTuple):
    """What became of one image (a NamedTuple, like ``Item``: one per image, sent back by workers)."""

    index: int
    converted: bool
    width: int = 0
    height: int = 0
    fast_path: bool = False
    reencoded: bool = False
    class_counts: tuple[tuple[str, int], ...] = ()
    problems: tuple[Problem, ...] = ()
    kept_boxes: int = 0


def _convert_item(item: Item, name_to_id: dict) -> tuple[Outcome, tuple | None]:
    """Prepare one image and encode its Example as ``(prefix, image bytes, suffix)`` parts."""
    from od.data.images import prepare_image  # Pillow: loaded on first use (not for --help)

    prep = prepare_image(item.image_path, item.xml_size, item.image_report)
    if prep.data is None:
        return Outcome(item.index, False, problems=prep.problems), None
    if item.label >= 0:
        return _convert_labelled(item, prep)
    boxes, box_problems = apply_box_rules(item.boxes, prep.width, prep.height, item.xml_name)
    try:
        rec = _encode(item, prep, boxes, name_to_id)
    except ValueError as e:  # e.g. a class name or file name that is not valid UTF-8 text
        problem = Problem(item.image_report, f"cannot encode the Example: {e}", SKIPPED_IMAGE)
        return Outcome(item.index, False, problems=prep.problems + box_problems + (problem,)), None
    counts = Counter(b.name for b in boxes)
    return (
        Outcome(
            item.index, True, prep.width, prep.height, prep.fast_path, not prep.fast_path,
            tuple(sorted(counts.items())), prep.problems + box_problems, len(boxes),
        ),
        rec,
    )


def _convert_labelled(item: Item, prep) -> tuple[Outcome, bytes | None]:
    """A classification image: one label, no boxes (its class counted with 0 boxes)."""
    from od.io.example import encode_classification_example

    try:
        rec = encode_classification_example(
            image_bytes=prep.data, image_format="jpeg", width=prep.width, height=prep.height,
            filename=item.image_name, source_id=item.source_id, label=item.label, text=item.class_name,
        )
    except ValueError as e:
        problem = Problem(item.image_report, f"cannot encode the Example: {e}", SKIPPED_IMAGE)
        return Outcome(item.index, False, problems=prep.problems + (problem,)), None
    return Outcome(item.index, True, prep.width, prep.height, prep.fast_path, not prep.fast_path,
                   ((item.class_name, 0),), prep.problems), rec


def _encode(item: Item, prep, boxes: Sequence[Box], name_to_id: dict) -> tuple:
    from od.io.example import encode_example_parts  # protobuf: loaded on first use (not for --help)

    return encode_example_parts(
        image_bytes=prep.data,
        image_format="jpeg",
        width=prep.width,
        height=prep.height,
        filename=item.image_name,
        source_id=item.source_id,
        boxes=boxes,
        class_ids=[name_to_id[b.name] for b in boxes],
    )


def _no_progress(n: int) -> None:
    pass


def write_shard(task: ShardTask, progress: Callable[[int], None] = _no_progress) -> list[Outcome]:
    """Convert and write one shard to its temp name (or only check, with ``dry_run``).

    Streams: one image is in memory at a time, whatever the shard size.
    """
    from time import monotonic

    from od.io.tfrecord import RecordWriter

    outcomes: list[Outcome] = []
    writer = None if task.dry_run else RecordWriter(task.tmp_path)
    try:
        pending = 0
        last = monotonic()
        for item in task.items:
            out, rec = _convert_item(item, task.name_to_id)
            outcomes.append(out)
            if writer is not None and rec is not None:
                writer.write(rec)
            # Drop this image's bytes before reading the next: the allocator then reuses the
            # same (already mapped) memory instead of faulting in fresh pages for every image.
            rec = None
            pending += 1
            if pending >= 256 or monotonic() - last >= 0.2:  # a few updates a second is plenty
                progress(pending)
                pending = 0
                last = monotonic()
        if pending:
            progress(pending)
    finally:
        if writer is not None:
            writer.close()
    return outcomes
