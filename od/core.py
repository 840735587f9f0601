"""The small things that travel between od's steps.

Defined once here so every step speaks the same language. Boxes are kept in
*pixels of the stored image* (``xmin, ymin, xmax, ymax``); records hold the OD
API's normalised ``(ymin, xmin, ymax, xmax)``, read back by ``Box.from_normalized_yxyx``
so the format is always in the name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Report actions: what od did about a problem.
SKIPPED_IMAGE = "skipped_image"
DROPPED_BOX = "dropped_box"
FIXED = "fixed"


@dataclass(frozen=True)
class Problem:
    """One finding about one input file; checks return these instead of raising."""

    file: str
    problem: str
    action: str  # SKIPPED_IMAGE, DROPPED_BOX or FIXED

    def __str__(self) -> str:
        return f"{self.file}: {self.problem} [{self.action}]"

    def to_dict(self) -> dict:
        return {"file": self.file, "problem": self.problem, "action": self.action}


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of the stored image (x to the right, y down)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    name: str = ""
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"
    is_crowd: bool = False  # COCO iscrowd: kept as image/object/is_crowd (the evaluator ignores such boxes)
    origin: str = field(default="", compare=False)  # where it came from, for messages ("object 9 of 12")

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @classmethod
    def from_normalized_yxyx(cls, yxyx, image_width: int, image_height: int, **kw) -> "Box":
        ymin, xmin, ymax, xmax = (float(v) for v in yxyx)
        return cls(xmin * image_width, ymin * image_height, xmax * image_width, ymax * image_height, **kw)


@dataclass(frozen=True)
class Annotation:
    """One labelled image as read from a VOC XML (before image checks).

    ``width``/``height`` are what the XML's ``<size>`` claims (0 when absent);
    the real image decides later (see ``od.images``).
    """

    xml_path: str
    image_path: str | None  # resolved inside the dataset, None when not found
    filename: str  # the XML's <filename> as written
    width: int
    height: int
    boxes: tuple[Box, ...] = ()
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class Detection:
    """One scored box from a detector; ``box`` is in pixels of the original input image."""

    box: Box
    class_id: int
    class_name: str
    score: float

    def to_dict(self) -> dict:
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": round(float(self.score), 6),
            "box_px": {
                "xmin": round(self.box.xmin, 2),
                "ymin": round(self.box.ymin, 2),
                "xmax": round(self.box.xmax, 2),
                "ymax": round(self.box.ymax, 2),
            },
        }
