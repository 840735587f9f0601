"""The label formats od reads, and the one interface every reader and writer implements.

A reader turns a dataset's label files into ``Entry`` rows (one image: its boxes in pixels of
the stored image, where the image is) plus ``Problem``s, and, when the format fixes the splits
(COCO train/val files, YOLO split folders, CSV files), the split of each entry. From there on
every format is the same: ``od.data.plan`` checks classes, duplicates and splits, and the
shard writer decodes and checks every image. A writer (``od.convert``, ``od.detect --save-*``)
takes ``LabelledImage`` rows and writes the format's files under an output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from od.core import Annotation, Box, Problem

FORMATS = ("voc", "coco", "yolo", "csv")
VOC_KINDS = ("voc", "folders", "flat", "explicit")  # Layout.kind values of the VOC layouts


class Entry(NamedTuple):
    """One labelled image as a reader found it."""

    name: str  # report name of the label file (relative to the dataset root)
    key: str  # stable id: decides the hash split, the source id and the shard order
    ann: Annotation  # boxes in pixels; ann.image_path resolved inside the dataset
    image: str  # absolute image path


@dataclass
class LabelSet:
    """What a reader returns."""

    entries: list[Entry] = field(default_factory=list)
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # report name -> problems
    num_files: int = 0  # labelled images (or label files) the format declared; the report's input count
    splits: dict[str, str] = field(default_factory=dict)  # entry key -> split given by the format; {}: hash
    split_source: str = ""  # how the splits were given, for the report ("COCO files", "YOLO folders", ...)

    def add(self, problem: Problem) -> None:
        self.problems.setdefault(problem.file, []).append(problem)


@dataclass(frozen=True)
class LabelledImage:
    """One image to write in a target format."""

    image_path: str  # the source image file
    image_name: str  # its path relative to the images folder (POSIX), kept in the output
    width: int  # pixels of the stored image (boxes are in these pixels)
    height: int
    boxes: tuple[Box, ...]
    split: str  # train | val | test


# How a writer puts an image into the output: copy_image(source, destination) (a copy or a link).
CopyImage = Callable[[str, Path], None]
Writer = Callable[[Sequence[LabelledImage], Sequence[str], Path, CopyImage], list[Path]]


def read_labels(layout, roots) -> LabelSet:
    """The reader of ``layout``'s format."""
    if layout.kind in VOC_KINDS:
        from od.data.plan import read_voc_labels

        return read_voc_labels(layout, roots)
    if layout.kind == "coco":
        from od.data.coco import read_coco

        return read_coco(layout, roots)
    if layout.kind == "yolo":
        from od.data.yolo import read_yolo

        return read_yolo(layout, roots)
    if layout.kind == "csv":
        from od.data.csvlabels import read_csv

        return read_csv(layout, roots)
    raise ValueError(f"no label reader for layout {layout.kind!r}")


def writer(fmt: str) -> Writer:
    """``write(images, classes, out, copy_image) -> files written`` for ``fmt`` (one of FORMATS)."""
    if fmt == "voc":
        from od.data.voc import write_voc_dataset

        return write_voc_dataset
    if fmt == "coco":
        from od.data.coco import write_coco

        return write_coco
    if fmt == "yolo":
        from od.data.yolo import write_yolo

        return write_yolo
    if fmt == "csv":
        from od.data.csvlabels import write_csv

        return write_csv
    raise ValueError(f"unknown format {fmt!r}")


def find_layout(fmt: str, data_dir: Path, csv_files: dict[str, str] | None = None):
    """The Layout of ``data_dir`` in ``fmt`` (coco | yolo | csv), or None when it is not one.

    A finder may raise ``UsageError`` with what it expected when it half-matches."""
    if fmt == "coco":
        from od.data.coco import find_coco

        return find_coco(data_dir)
    if fmt == "yolo":
        from od.data.yolo import find_yolo

        return find_yolo(data_dir)
    if fmt == "csv":
        from od.data.csvlabels import find_csv

        return find_csv(data_dir, csv_files or {})
    raise ValueError(fmt)
