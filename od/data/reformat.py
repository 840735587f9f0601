"""A labelled dataset rewritten in another label format (the library side of ``od.convert``).

The dataset is read exactly as ``od.records`` reads it (``od.data.plan``: the format's reader,
duplicates, classes, splits; ``prepare_image`` + ``apply_box_rules`` per image: decode check,
EXIF, real size, box clipping), so the converted dataset holds what training would have seen:
the same boxes on the same pixels, the same classes, the same split per image. An image whose
pixels od.records would change (EXIF rotation, CMYK, alpha, 16-bit, a truncated JPEG) is written
as the JPEG od.records stores, not copied, so that its boxes and pixels agree in any tool.

Nothing is written into the input, and nothing the user owns is replaced: the output is built in
a temporary folder beside ``out`` and renamed into place when complete; ``OUT/.od-convert.manifest``
lists what od wrote, and only an output made entirely of listed files is ever replaced (``force``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from od.core import DROPPED_BOX, FIXED, SKIPPED_IMAGE, Problem
from od.data.formats import FORMATS, LabelledImage, writer
from od.data.layout import Layout, detect_layout
from od.data.plan import Item, Plan, plan_dataset
from od.data.splits import DEFAULT_VAL_FRACTION
from od.data.voc import apply_box_rules
from od.io.files import open_regular, read_file

IMAGE_MODES = ("copy", "hardlink", "symlink")
MANIFEST = ".od-convert.manifest"  # JSON, but not named *.json: no COCO finder may take it for labels
JPEG_SUFFIXES = (".jpg", ".jpeg")
_REENCODE_NOTE = "converted to RGB JPEG"  # od.data.images' note for a PNG/BMP/grayscale image it re-encodes
FORMAT_NAMES = {"voc": "Pascal VOC", "coco": "COCO", "yolo": "YOLO", "csv": "CSV"}


class ConvertError(Exception):
    """A usage problem (exit 2): the message names the path and what to do."""


class ReadBackError(Exception):
    """What was written does not read back as what was meant to be written (nothing is replaced)."""


@dataclass
class Result:
    """What a conversion found and did."""

    fmt: str
    out: Path
    classes: list[str] = field(default_factory=list)  # label-map order
    images: list[LabelledImage] = field(default_factory=list)  # as written (or, when checking, as they would be)
    problems: list[Problem] = field(default_factory=list)
    reencoded: list[str] = field(default_factory=list)  # image names written from od's prepared pixels
    copied_instead: int = 0  # hardlinks that could not be made (another file system): copied
    files: list[str] = field(default_factory=list)  # written, relative to ``out``, sorted
    written: bool = False
    replaced_earlier: bool = False  # ``out`` held an earlier od.convert output, now replaced
    num_inputs: int = 0  # labelled images (label files) the input declares
    not_listed: list[str] = field(default_factory=list)  # VOC XML in no ImageSets/Main list (left out)
    splits_source: str = "hash"

    @property
    def skipped(self) -> int:
        return sum(p.action == SKIPPED_IMAGE for p in self.problems)


# --------------------------------------------------------------------------- where the output goes


def _inside(a: str, b: str) -> bool:
    """Whether real path ``a`` is ``b`` or under it."""
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def check_out(out: Path, inputs: Sequence[Path], force: bool) -> bool:
    """Refuse an ``out`` that overlaps an input or holds what od.convert did not write (ConvertError).

    Returns whether ``out`` holds an earlier od.convert output (to be replaced: ``force`` given)."""
    real_out = os.path.realpath(out)
    for d in inputs:
        real_in = os.path.realpath(d)
        if _inside(real_out, real_in):
            raise ConvertError(f"--out {out} is inside the input {d}; od.convert never writes into its input "
                               "(give a folder outside it)")
        if _inside(real_in, real_out):
            raise ConvertError(f"the input {d} is inside --out {out}; give an --out folder that does not hold it")
    if not os.path.lexists(out):
        return False
    if out.is_symlink() or not out.is_dir():
        raise ConvertError(f"--out {out} exists and is not a folder; give a new or empty folder")
    present = _files_under(out)
    if not present:
        return False
    listed = read_manifest(out)
    if not force:
        what = "an earlier od.convert output" if listed is not None else "files"
        raise ConvertError(f"--out {out} is not empty (it holds {what}); pass --force to replace an earlier "
                           "od.convert output, or give a new folder")
    if listed is None:
        raise ConvertError(f"--out {out} holds files od.convert did not write (no {MANIFEST}); --force only "
                           "replaces an earlier od.convert output: move them away, or give a new folder")
    foreign = sorted(set(present) - listed - {MANIFEST})
    if foreign:
        raise ConvertError(f"{out / foreign[0]} was not written by od.convert (not in {out / MANIFEST}); "
                           f"{len(foreign)} such file(s): move them away, or give a new folder")
    return True


def _files_under(folder: Path) -> list[str]:
    """Every non-folder entry under ``folder`` (links not followed), relative, POSIX, sorted."""
    found: list[str] = []
    for d, dirs, files in os.walk(folder):
        rel = Path(os.path.relpath(d, folder))
        found += [(rel / f).as_posix().removeprefix("./") for f in files]
        found += [(rel / s).as_posix().removeprefix("./") for s in dirs if os.path.islink(os.path.join(d, s))]
    return sorted(found)


def read_manifest(out: Path) -> set[str] | None:
    """The files an earlier od.convert listed in ``out``, or None when ``out`` has no usable manifest."""
    try:
        data = json.loads(read_file(out / MANIFEST, 64 * 1024 * 1024).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return {f for f in data["files"] if isinstance(f, str)}


def _temp_dir(out: Path, what: str) -> Path:
    return out.with_name(f".{out.name}.od-convert.{os.getpid()}.{what}")


_TEMP_RE = re.compile(r"\.(?P<name>.+)\.od-convert\.(?P<pid>\d+)\.(tmp|old)$")


def _remove_stale(out: Path) -> list[str]:
    """Temp folders that killed od.convert runs left beside ``out`` (their process is gone), removed."""
    from od.data.output import _alive

    removed = []
    with contextlib.suppress(OSError):
        for e in os.scandir(out.parent):
            m = _TEMP_RE.match(e.name)
            if m and m["name"] == out.name and e.is_dir(follow_symlinks=False) and not _alive(int(m["pid"])):
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(e.path)
    return removed


# --------------------------------------------------------------------------- reading


def read_dataset(layout: Layout, *, val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0,
                 follow_links: bool = False) -> Plan:
    """The plan od.records would make of ``layout`` (a label map built from the classes, never written)."""
    if layout.kind == "classification":
        raise ConvertError(f"{layout.root} is a classification dataset (a folder of images per class); "
                           "od.convert converts detection datasets (VOC, COCO, YOLO, CSV)")
    unwritten = Path(os.path.realpath(layout.root)).parent / f".od-convert-{uuid.uuid4().hex}.pbtxt"
    return plan_dataset(layout, unwritten, add_classes=False, skip_difficult=False, val_fraction=val_fraction,
                        test_fraction=test_fraction, follow_links=follow_links)


def _pixels_kept(path: str, prep) -> bool:
    """Whether the file shows the pixels od.records stores (so its bytes may be copied).

    True for od's byte-for-byte case and for plain RGB / grayscale images in any format without
    rotation (PNG, BMP, ...: od only re-encodes them); False when od rotates, drops an EXIF
    rotation, converts colours (CMYK, alpha, palette, 16-bit), takes one frame or fills rows."""
    if prep.fast_path:
        return True
    if any("truncated" in p.problem for p in prep.problems):
        return False
    from PIL import Image

    from od.data.images import _orientation

    try:
        with Image.open(io.BytesIO(read_file(path))) as im:
            return (im.mode in ("RGB", "L") and _orientation(im)[0] == 1 and getattr(im, "n_frames", 1) == 1
                    and im.size == (prep.width, prep.height))
    except Exception:  # noqa: BLE001 - decodable a moment ago; anything odd now: use od's pixels
        return False


def _jpeg_name(name: str, taken: set[str]) -> str:
    """``name`` for an image stored as JPEG: suffix .jpg (``a.png`` -> ``a.jpg``; ``a.png.jpg`` if taken)."""
    p = PurePosixPath(name)
    if p.suffix.lower() in JPEG_SUFFIXES:
        return name
    for cand in [p.with_suffix(".jpg").as_posix(), f"{name}.jpg"] + [f"{name}.{k}.jpg" for k in range(1, 1000)]:
        if cand not in taken:
            return cand
    raise RuntimeError(f"no free name for {name}")


def prepare_items(
    plan: Plan, fmt: str, stage: Path | None, progress: Callable[[int], None] = lambda n: None,
) -> tuple[list[LabelledImage], list[Problem], list[str], set[str]]:
    """Each usable item as the ``LabelledImage`` to write: (images, problems, re-encoded names, staged paths).

    Decodes every image once. With ``stage`` (a folder), the pixels of images that must not be
    copied go there as the JPEG od.records stores; ``stage=None`` only checks."""
    from od.data.images import prepare_image

    images: list[LabelledImage] = []
    problems: list[Problem] = []
    reencoded: list[str] = []
    staged: set[str] = set()
    taken = {it.image_name for it in plan.items}
    for it in plan.items:
        progress(1)
        li, found, data = _prepare_one(it, prepare_image)
        if li is not None and data is None:  # copied as is: od.records' re-encoding note does not apply
            found = [p for p in found if not (p.action == FIXED and _REENCODE_NOTE in p.problem)]
        problems += found
        if li is None:
            continue
        if data is not None:
            name = _jpeg_name(it.image_name, taken)
            taken.add(name)
            notes = [p.problem for p in found if p.action == FIXED and p.file == it.image_report]
            problems.append(Problem(it.image_report, f"written as {name}, the JPEG od.records stores, not copied "
                                    "(od.records changes its pixels" + (f": {'; '.join(notes)}" if notes else "")
                                    + "), so that boxes and pixels agree", FIXED))
            src = it.image_path
            if stage is not None:
                src = str(stage / f"{it.index}.jpg")
                with open(src, "wb") as f:
                    f.write(data)
                staged.add(src)
            li = LabelledImage(src, name, li.width, li.height, li.boxes, li.split)
            reencoded.append(name)
        li, found = _crowd_rule(li, fmt, it.xml_name)
        problems += found
        images.append(li)
    return images, problems, reencoded, staged


def _crowd_rule(li: LabelledImage, fmt: str, name: str) -> tuple[LabelledImage, list[Problem]]:
    """COCO crowd boxes in a format without a crowd flag: VOC marks them difficult (its "do not
    count this region"; the VOC writer does so); YOLO and CSV have neither, so they are dropped
    (as an ordinary box a crowd would be learnt as one object)."""
    crowd = sum(b.is_crowd for b in li.boxes)
    if not crowd or fmt == "coco":
        return li, []
    what = f"{crowd} crowd box{'es' if crowd > 1 else ''} (iscrowd)"
    if fmt == "voc":
        return li, [Problem(name, f"{what} written as difficult: VOC has no crowd flag", FIXED)]
    kept = tuple(b for b in li.boxes if not b.is_crowd)
    return (LabelledImage(li.image_path, li.image_name, li.width, li.height, kept, li.split),
            [Problem(name, f"{what} dropped: {FORMAT_NAMES[fmt]} has no crowd flag", DROPPED_BOX)])


def _prepare_one(it: Item, prepare_image) -> tuple[LabelledImage | None, list[Problem], bytes | None]:
    """(the image to write or None, its problems, od's JPEG bytes when they replace the file's)."""
    prep = prepare_image(it.image_path, it.xml_size, it.image_report)
    if prep.data is None:
        return None, list(prep.problems), None
    boxes, box_problems = apply_box_rules(it.boxes, prep.width, prep.height, it.xml_name)
    li = LabelledImage(it.image_path, it.image_name, prep.width, prep.height, tuple(boxes), it.split)
    data = None if _pixels_kept(it.image_path, prep) else prep.data
    return li, list(prep.problems) + list(box_problems), data


# --------------------------------------------------------------------------- writing


def image_placer(mode: str, root: Path, staged: set[str], counts: Counter) -> Callable[[str, Path], None]:
    """The ``copy_image(source, destination)`` of a writer: copy, hardlink or symlink ``source``
    (a hardlink that cannot be made is a copy, counted in ``counts["copied_instead"]``); a staged
    file (od's pixels) is moved. Destinations must lie inside ``root``."""
    real_root = os.path.realpath(root)

    def place(source: str, dest: Path) -> None:
        dest = Path(dest)
        if not _inside(os.path.realpath(dest.parent), real_root) or os.path.lexists(dest):
            raise ValueError(f"writer placed an image at {dest}: outside the output or twice")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source in staged:
            os.replace(source, dest)
            staged.discard(source)
        elif mode == "symlink":
            os.symlink(os.path.abspath(source), dest)
        elif mode == "hardlink":
            try:
                os.link(source, dest)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
                _copy(source, dest)
                counts["copied_instead"] += 1
        else:
            _copy(source, dest)
        counts["placed"] += 1

    return place


def _copy(source: str, dest: Path) -> None:
    with open_regular(source) as src, open(dest, "xb") as dst:  # a regular file only: never waits on a FIFO
        shutil.copyfileobj(src, dst, 1 << 20)


def _check_read_back(tmp: Path, fmt: str, images: Sequence[LabelledImage], follow_links: bool) -> None:
    """The output read the way od.records reads it: the same images and boxes per split, the same classes."""
    layout = detect_layout(tmp, kind=fmt)
    plan = read_dataset(layout, follow_links=follow_links)
    want = Counter((im.split, len(im.boxes)) for im in images)
    got = Counter((it.split, len(it.boxes)) for it in plan.items)
    want_classes = sorted({b.name for im in images for b in im.boxes})
    got_classes = sorted({b.name for it in plan.items for b in it.boxes})
    if want != got or want_classes != got_classes:
        def per_split(c: Counter) -> str:
            splits = sorted({s for s, _ in c})
            return ", ".join(f"{s}: {sum(n for (t, _), n in c.items() if t == s)} images / "
                             f"{sum(k * n for (t, k), n in c.items() if t == s)} boxes" for s in splits) or "nothing"
        detail = "; ".join(str(p) for p in plan.problems[:3])
        raise ReadBackError(f"the {FORMAT_NAMES[fmt]} files written read back as {per_split(got)} "
                            f"(classes {got_classes}), not {per_split(want)} (classes {want_classes})"
                            + (f"; first problems: {detail}" if detail else ""))


def _commit(tmp: Path, out: Path, replace_earlier: bool) -> None:
    """``tmp`` becomes ``out``: a rename; an earlier od.convert output is moved aside first, then removed."""
    if replace_earlier:
        old = _temp_dir(out, "old")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)  # links are removed, never followed
        return
    if os.path.isdir(out) and not out.is_symlink():
        os.rmdir(out)  # empty (checked): a rename cannot replace a folder that another run fills meanwhile
    os.replace(tmp, out)


def convert_dataset(
    layout: Layout,
    out: str | os.PathLike,
    fmt: str,
    *,
    images: str = "copy",
    force: bool = False,
    strict: bool = False,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = 0.0,
    follow_links: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    source: str = "",
    progress: Callable[[int], None] = lambda n: None,
    plan: Plan | None = None,
) -> Result:
    """Write ``layout``'s dataset in ``fmt`` under ``out``; never raises for bad input files.

    ``images``: how images get there (copy | hardlink | symlink; od's re-encoded pixels are
    always new files). ``strict``: any problem -> nothing written (``Result.written`` False).
    ``inputs``: folders ``out`` must not overlap (the layout's are always checked). Raises
    ConvertError for usage problems, ReadBackError when the output does not read back, and
    OSError when the output cannot be written; in all three ``out`` is as it was."""
    if fmt not in FORMATS:
        raise ConvertError(f"--to {fmt}: not one of {', '.join(FORMATS)}")
    if images not in IMAGE_MODES:
        raise ConvertError(f"--images {images}: not one of {', '.join(IMAGE_MODES)}")
    out = Path(out)
    folders = [Path(p) for p in inputs] + [layout.root, *layout.explicit]
    replace_earlier = check_out(out, folders, force)
    write = writer(fmt)  # an unknown or missing writer fails here, before any work
    plan = plan or read_dataset(layout, val_fraction=val_fraction, test_fraction=test_fraction,
                                follow_links=follow_links)
    res = Result(fmt, out, classes=[n for _, n in plan.label_map.items], num_inputs=plan.num_xml,
                 not_listed=list(plan.not_listed), splits_source=plan.splits_source)
    if strict or not plan.items:
        res.images, found, res.reencoded, _ = prepare_items(plan, fmt, None, progress)
        res.problems = sorted(plan.problems + found, key=lambda p: p.file)
        if res.problems or not res.images:
            return res
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = _temp_dir(out, "tmp")
    os.mkdir(tmp)
    try:
        stage = tmp / ".od-staged"
        stage.mkdir()
        imgs, found, res.reencoded, staged = prepare_items(plan, fmt, stage, progress)
        res.images = imgs
        res.problems = sorted(plan.problems + found, key=lambda p: p.file)
        if not imgs:
            shutil.rmtree(tmp, ignore_errors=True)
            return res
        counts: Counter = Counter()
        write(sorted(imgs, key=lambda i: i.image_name), res.classes, tmp, image_placer(images, tmp, staged, counts))
        if staged or counts["placed"] != len(imgs):
            raise ReadBackError(f"the {FORMAT_NAMES[fmt]} writer placed {counts['placed']} of {len(imgs)} images")
        stage.rmdir()
        res.copied_instead = counts["copied_instead"]
        _check_read_back(tmp, fmt, imgs, follow_links=images == "symlink")
        res.files = _files_under(tmp)
        manifest = {"written_by": "od.convert", "format": fmt, "source": source or str(layout.root),
                    "images": images, "files": res.files}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=1) + "\n")
        if replace_earlier:
            check_out(out, folders, force)  # again, just before: nothing foreign arrived meanwhile
        _commit(tmp, out, replace_earlier)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.written = True
    res.replaced_earlier = replace_earlier
    return res


def split_counts(images: Sequence[LabelledImage]) -> dict[str, tuple[int, int, int]]:
    """split -> (images, boxes, negatives), in train/val/test order."""
    out: dict[str, tuple[int, int, int]] = {}
    for split in ("train", "val", "test"):
        these = [im for im in images if im.split == split]
        if these:
            out[split] = (len(these), sum(len(im.boxes) for im in these), sum(not im.boxes for im in these))
    return out

