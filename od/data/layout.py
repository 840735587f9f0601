"""Where a dataset's labels and images are: the three VOC layouts, ImageSets/Main lists, the COCO,
YOLO and CSV layouts (found by their modules, see ``od.data.formats``), and the classification
layout (a folder of images per class, optionally under train/ val/ test/)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from od.data.inputs import IMAGE_SUFFIXES
from od.data.walk import any_xml
from od.io.files import read_file

ANNOTATION_DIRS = ("annotations", "Annotations", "annots", "xml")
IMAGE_DIRS = ("images", "JPEGImages", "imgs")
SPLIT_DIRS = ("train", "val", "test")
LAYOUTS = ("auto", "voc", "coco", "yolo", "csv", "classification")  # --format (alias --layout)
OTHER_FORMATS = ("coco", "yolo", "csv")  # tried in this order after VOC, before classification


class UsageError(Exception):
    """Bad command line or unusable DATA_DIR (exit 2)."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    kind: str  # voc | folders | flat | explicit (the VOC layouts) | coco | yolo | csv | classification
    root: Path  # dataset root: images are never read from outside it (or images_dir)
    annotations_dir: Path
    images_dir: Path | None  # None: each image beside its XML
    imagesets_dir: Path | None = None
    description: str = ""
    explicit: tuple[Path, ...] = ()  # folders the user named (--annotations/--images): inside by choice
    presplit: bool = False  # classification: DATA/{train,val,test}/<class>/
    # coco / yolo / csv: the label sources, each with the split it gives ("" = none: hash split);
    # e.g. (("train", instances_train.json), ("val", instances_val.json)) or (("", train_labels.csv),)
    sources: tuple[tuple[str, Path], ...] = ()

    def images_dir_for(self, xml: Path) -> Path | None:
        """Where ``xml``'s image lives; nested annotation folders mirror into the images folder."""
        if self.images_dir is None:
            return xml.parent
        rel = xml.parent.relative_to(self.annotations_dir)
        return self.images_dir / rel


def _has_imagesets(year_dir: Path) -> Path | None:
    main = year_dir / "ImageSets" / "Main"
    if any((main / f"{n}.txt").is_file() for n in ("train", "val", "trainval", "test")):
        return main
    return None


def _is_voc_year(d: Path) -> bool:
    return (d / "Annotations").is_dir() and (d / "JPEGImages").is_dir()


def _resolve_dir(arg: str, data_dir: Path | None, what: str) -> Path:
    p = Path(arg)
    if not p.is_dir() and data_dir is not None and not p.is_absolute() and (data_dir / p).is_dir():
        p = data_dir / p
    if not p.is_dir():
        raise UsageError(f"{what} {arg}: no such folder")
    return p


def _subdirs(d: Path) -> list[Path]:
    with os.scandir(d) as entries:
        return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir())


def _holds_image(d: Path) -> bool:
    with os.scandir(d) as entries:
        return any(e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".") for e in entries)


def _presplit(dd: Path) -> bool:
    """DATA/{train,val,test}/<class>/: every subfolder a split name, train among them."""
    subs = {p.name for p in _subdirs(dd)}
    return "train" in subs and subs <= set(SPLIT_DIRS)


def _looks_like_classes(dd: Path) -> bool:
    """A subfolder (of DATA, or of DATA/train) that holds images (called once no XML was found)."""
    base = dd / "train" if _presplit(dd) else dd
    return any(_holds_image(p) for p in _subdirs(base))


def _classification(dd: Path) -> Layout:
    if _presplit(dd):
        names = "/".join(p.name for p in _subdirs(dd))
        return Layout("classification", dd, dd, None, description=f"a folder per class under {names}/",
                      presplit=True)
    return Layout("classification", dd, dd, None, description="a folder per class")


def detect_layout(
    data_dir: str | Path | None, annotations: str | None = None, images: str | None = None, kind: str = "auto",
    csv_files: dict[str, str] | None = None,
) -> Layout:
    """Work out where the labels and images are; raises UsageError with what was expected.

    ``kind`` (``--format``): ``auto``; ``voc`` (the detection layouts only); ``coco``; ``yolo``;
    ``csv``; ``classification``. ``csv_files``: ``--train-csv``/``--val-csv`` as ``{split: path}``.
    """
    from od.data.formats import find_layout

    dd = Path(data_dir) if data_dir is not None else None
    if dd is not None and not dd.is_dir():
        raise UsageError(f"DATA_DIR {dd}: no such folder")
    if csv_files and kind not in ("auto", "csv"):
        raise UsageError(f"--train-csv/--val-csv are for CSV datasets, not --format {kind}")
    if csv_files:
        kind = "csv"
    if kind in OTHER_FORMATS or kind == "classification":
        if annotations or images or dd is None:
            raise UsageError(f"--format {kind} reads DATA_DIR only (not --annotations/--images)")
        if kind == "classification":
            return _classification(dd)
        found = find_layout(kind, dd, csv_files)
        if found is None:
            raise UsageError(f"{dd} is not a {kind.upper() if kind != 'yolo' else 'YOLO'} dataset: {_EXPECTED[kind]}")
        return found
    if annotations or images:
        ann = _resolve_dir(annotations, dd, "--annotations") if annotations else dd
        if ann is None:
            raise UsageError("give DATA_DIR or --annotations")
        img = _resolve_dir(images, dd, "--images") if images else None
        root = dd if dd is not None else Path(os.path.commonpath([ann.resolve()] + ([img.resolve()] if img else [])))
        sets = _has_imagesets(dd) if dd is not None else None
        desc = f"--annotations {ann}" + (f" --images {img}" if img else " (images beside the XML)")
        return Layout("explicit", root, ann, img, sets, desc, tuple(d for d in (ann, img) if d is not None))
    assert dd is not None
    if _is_voc_year(dd):
        sets = _has_imagesets(dd)
        desc = "VOCdevkit year folder (Annotations/ + JPEGImages/" + (" + ImageSets/Main" if sets else "") + ")"
        return Layout("voc", dd, dd / "Annotations", dd / "JPEGImages", sets, desc)
    years: list[Path] = []
    if dd.is_dir():
        with os.scandir(dd) as entries:  # DirEntry.is_dir: no stat per file in a flat folder of images
            years = sorted(Path(e.path) for e in entries if e.is_dir() and _is_voc_year(Path(e.path)))
    if len(years) == 1:
        y = years[0]
        sets = _has_imagesets(y)
        desc = f"VOCdevkit year folder {y.name}/ (Annotations/ + JPEGImages/" + (" + ImageSets/Main" if sets else "") + ")"
        return Layout("voc", y, y / "Annotations", y / "JPEGImages", sets, desc)
    if len(years) > 1:
        names = ", ".join(str(y) for y in years)
        raise UsageError(f"{dd} holds several VOC year folders ({names}); pass one of them as DATA_DIR")
    ann = next((dd / n for n in ANNOTATION_DIRS if (dd / n).is_dir()), None)
    img = next((dd / n for n in IMAGE_DIRS if (dd / n).is_dir()), None)
    if ann is not None and any_xml(ann):
        if img is not None:
            return Layout("folders", dd, ann, img, None, f"{ann.name}/ beside {img.name}/")
        return Layout("folders", dd, ann, None, None, f"{ann.name}/ (images beside the XML)")
    if any_xml(dd):
        return Layout("flat", dd, dd, None, None, "XML next to the images")
    if kind == "auto":
        for fmt in OTHER_FORMATS:
            found = find_layout(fmt, dd)
            if found is not None:
                return found
        if _looks_like_classes(dd):
            return _classification(dd)
    raise UsageError(
        f"no Pascal VOC XML found in {dd}. Expected one of: a VOCdevkit year folder (Annotations/, JPEGImages/, "
        f"ImageSets/Main/); an annotations folder ({', '.join(ANNOTATION_DIRS)}) beside an images folder "
        f"({', '.join(IMAGE_DIRS)}); or .xml files next to their images. Or pass --annotations DIR --images DIR"
        + ("." if kind == "voc" else
           "; or " + "; or ".join(f"{f.upper() if f != 'yolo' else 'YOLO'}: {_EXPECTED[f]}" for f in OTHER_FORMATS)
           + "; or, for classification, a folder of images per class (DATA/<class>/*.jpg).")
    )


# What each format's finder looks for (messages); the finders live in od/data/{coco,yolo,csvlabels}.py.
_EXPECTED = {
    "coco": "a COCO instances JSON (DATA/annotations/*.json or DATA/*.json) and its images folder",
    "yolo": "YOLO txt labels (a data.yaml naming the classes and split folders, or images/ beside labels/)",
    "csv": "a CSV of boxes (filename,width,height,class,xmin,ymin,xmax,ymax; or --train-csv/--val-csv) and the images",
}


def read_imagesets(main_dir: Path) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "trainval": [...], "test": [...]}`` (first token of each line)."""
    out: dict[str, list[str]] = {}
    for name in ("train", "val", "trainval", "test"):
        p = main_dir / f"{name}.txt"
        if p.is_file():
            text = read_file(p).decode("utf-8", errors="replace")
            out[name] = [ln.split()[0] for ln in text.splitlines() if ln.split()]
    return out
