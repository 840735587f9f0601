"""Writing what ``od.detect`` (and ``od.classify``) produce: annotated images, JSON, VOC pre-labels,
crops, and the manifest of what the step wrote, named after it (``.od-detect.json``,
``.od-classify.json``), so each step replaces only its own earlier outputs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from od.console import warn
from od.core import Box, Detection
from od.io.files import atomic_write_text, read_file, shown

if TYPE_CHECKING:  # imported lazily at run time (PIL is slow to import)
    from PIL import Image

def manifest_names(step: str) -> tuple[str, str]:
    """``(manifest, journal)`` file names of ``step`` ("od.detect" -> .od-detect.json, .od-detect.journal)."""
    stem = "." + step.replace(".", "-")
    return stem + ".json", stem + ".journal"


# <out>/.od-detect.json: every file od.detect wrote there; the journal is appended before each
# image's files are written and folded into the manifest at the end
MANIFEST, JOURNAL = manifest_names("od.detect")


class InputImage(Protocol):
    """One input (od.detect's InputImage): where it is and the key its outputs are named by."""

    path: Path
    key: str


@dataclass
class Result:
    """What happened to one image."""

    image: InputImage
    width: int = 0
    height: int = 0
    detections: list[Detection] = field(default_factory=list)
    annotated: Path | None = None
    error: str | None = None
    kept_voc: bool = False
    kept_yolo: bool = False


class OutputError(Exception):
    """The output folder cannot be used; the message says why and what to do."""


def check_out_dir(out: Path, flag: str = "--out") -> str | None:
    """Why ``out`` (given as ``flag``) cannot be the output folder (a file, under a file, not
    writable), or None. Cheap and TensorFlow-free, so main() says it before the model loads."""
    p = out
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    where = "" if p == out else f"{shown(p)} "
    if not p.is_dir():
        return f"{flag} {shown(out)}: {where or 'it '}is a file, not a folder; pass another {flag}"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{flag} {shown(out)}: {where or 'it '}is not writable; pass another {flag}"
    return None


class Manifest:
    """The files one step (od.detect, od.classify) wrote in one output folder, so a re-run replaces
    its own earlier outputs and never a file the user put there. Kept in ``<out>/.od-detect.json``
    (rewritten atomically at the end of a run) plus ``<out>/.od-detect.journal``, one JSON line
    appended *before* each image's files are written: a run that crashes midway still knows every
    file it wrote."""

    def __init__(self, out: Path, files: set[str] | None = None, step: str = "od.detect"):
        self.out = out
        self.files: set[str] = files or set()
        self.step = step
        self.name, self.journal = manifest_names(step)
        self._journal: int | None = None  # fd, opened on the first add

    @classmethod
    def load(cls, out: Path, force: bool = False, step: str = "od.detect") -> Manifest:
        """The manifest (and any journal a crashed run left) of ``out``; empty when there is none.
        OutputError when the manifest is not the step's (kept unless ``force``)."""
        name, journal = manifest_names(step)
        path = out / name
        files: set[str] = set()
        try:
            data = json.loads(read_file(path).decode("utf-8"))
            if not (isinstance(data, dict) and isinstance(data.get("files"), list)
                    and all(isinstance(f, str) for f in data["files"])):
                raise ValueError(f"not a list of files written by {step}")
            files.update(data["files"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            if not force:
                raise OutputError(
                    f"{shown(path)}: cannot read {step}'s list of outputs ({getattr(e, 'strerror', None) or e}); "
                    "move it, choose another --out, or pass --force to start a new list"
                ) from None
        try:
            lines = read_file(out / journal).decode("utf-8", "replace").splitlines()
        except OSError:  # none (the usual case), or unreadable: the manifest is all there is
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a crash: its files were never renamed into place
                continue
            if isinstance(entry, list):
                files.update(f for f in entry if isinstance(f, str))
        return cls(out, files, step)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def owns(self, path: Path) -> bool:
        return self.rel(path) in self.files

    def add(self, paths: Iterable[Path]) -> None:
        """Record ``paths`` as od's (in the journal first, then in memory); call before writing them."""
        rels = [self.rel(p) for p in paths]
        if self._journal is None:
            self.out.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
            self._journal = os.open(self.out / self.journal, flags, 0o666)  # never appends through a link or to a FIFO
            if not stat.S_ISREG(os.fstat(self._journal).st_mode):
                os.close(self._journal)
                self._journal = None
                raise OSError(f"{shown(self.out / self.journal)} is not a regular file")
        line = json.dumps(rels) + "\n"  # ensure_ascii: names that are not UTF-8 survive as \udcNN
        os.write(self._journal, line.encode("ascii"))
        self.files.update(rels)

    def save(self) -> None:
        """Write the manifest atomically (only files that still exist), then drop the journal."""
        if self._journal is None and not os.path.lexists(self.out / self.journal):
            return  # nothing written this run and nothing left by a crashed one
        kept = sorted(f for f in self.files if os.path.lexists(self.out / f))
        try:
            atomic_write_text(self.out / self.name, json.dumps({"written_by": self.step, "files": kept}, indent=1) + "\n")
        except OSError as e:  # the journal stays and still lists every file: the next run reads it
            warn(f"{shown(self.out / self.name)}: cannot write ({e.strerror or e}); {self.journal} keeps the list")
            return
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.out / self.journal)


class OutputWriter:
    """Writes everything for one image under ``out``: all of it or none of it, never onto an input
    file, and never onto a file the step did not write (see ``Manifest``) unless ``force``."""

    def __init__(self, out: Path, inputs: Iterable[Path], save_json: bool, save_voc: bool, save_crops: bool,
                 force: bool, meta: dict, manifest: Manifest | None = None, *, save_yolo: bool = False,
                 yolo_classes: Iterable[str] = (), yolo_scores: bool = False):
        self.out = out
        self.save_yolo, self.yolo_scores = save_yolo, yolo_scores
        self.yolo_classes: list[str] = list(yolo_classes)  # index = YOLO class; names not in it are appended
        self._inputs = {p.resolve() for p in inputs}
        self.save_json, self.save_voc, self.save_crops, self.force = save_json, save_voc, save_crops, force
        self.meta = meta
        self.manifest = manifest if manifest is not None else Manifest.load(out, force)

    def _target(self, path: Path) -> Path:
        """``path`` unless it is one of the inputs (e.g. --out is the input folder): then ``x.od.jpg``."""
        if path.resolve() in self._inputs:
            path = path.with_name(f"{path.stem}.od{path.suffix}")
            if path.resolve() in self._inputs:
                raise OSError(f"refusing to overwrite input {path}")
        return path

    def annotated_path(self, item: InputImage) -> Path:
        suffix = item.path.suffix.lower() if item.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        return self._target(self.out / f"{item.key}{suffix}")

    def write(self, item: InputImage, image: Image.Image, detections: list[Detection]) -> Result:
        """Render and encode every output in memory, check every target, then write them all.
        A target that cannot be written is reported in ``Result.error`` and nothing is written;
        an OSError while writing removes what was written for this image, then propagates."""
        from od.viz.draw import draw_detections

        res = Result(item, image.width, image.height, detections)
        path = self.annotated_path(item)
        files = {path: encode_image(draw_detections(image, detections), path)}
        res.annotated = path
        if self.save_json:
            files[self._target(self.out / f"{item.key}.json")] = _json_bytes(self.record(res))
        if self.save_crops:
            files.update(self._crops(item, image, detections))
        if self.save_voc:
            voc = self._voc(item, image, detections)
            res.kept_voc = not voc
            files.update(voc)
        if self.save_yolo:
            yolo = self._yolo(item, image, detections)
            res.kept_yolo = not yolo
            files.update(yolo)
        problem = self.check(files)
        if problem:
            res.annotated, res.error = None, f"{shown(item.path)}: {problem}"
            return res
        self.commit(files)
        return res

    def write_file(self, path: Path, data: bytes) -> str | None:
        """One output not tied to an image (``detections.json``): why it was not written, or None."""
        problem = self.check({path: data})
        if problem is not None:
            return problem
        try:
            self.commit({path: data})
        except OSError as e:
            return f"{shown(path)}: cannot write: {e.strerror or e}"
        return None

    def check(self, files: dict[Path, bytes]) -> str | None:
        """Why these files cannot be written, or None: a file where a folder is needed, a folder
        in the way, or a file the step did not write (unless --force)."""
        foreign: list[Path] = []
        for path in files:
            rel = self.manifest.rel(path)
            if rel in (self.manifest.name, self.manifest.journal):
                return f"{shown(path)} is {self.manifest.step}'s own list of outputs; rename the input"
            for parent in reversed(path.parents):
                inside = parent == self.out or self.out in parent.parents
                if inside and os.path.lexists(parent) and not parent.is_dir():
                    return (f"{shown(parent)} is a file where a folder is needed; "
                            "move it or choose another --out")
            if path.is_dir():
                return f"{shown(path)} is a folder where an output file goes; move it or choose another --out"
            if os.path.lexists(path) and not self.force and not self.manifest.owns(path):
                foreign.append(path)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            return (f"{shown(foreign[0])}{more} already exists and {self.manifest.step} did not write it; "
                    "pass --force to replace it, or choose another --out")
        return None

    def commit(self, files: dict[Path, bytes]) -> None:
        """Write ``files`` under temp names, then rename them into place. On any failure, every
        temp file, every file already renamed and every folder made here are removed again."""
        self.manifest.add(files)  # first: a crash after this still knows these files are od's
        made: list[Path] = []
        temps: dict[Path, Path] = {}
        placed: list[Path] = []
        try:
            for path, data in files.items():
                _make_dirs(path.parent, made)
                temps[path] = _write_temp(path, data)
            for path, tmp in temps.items():
                os.replace(tmp, path)
                placed.append(path)
        except BaseException:
            for f in [*temps.values(), *placed]:
                with contextlib.suppress(OSError):
                    os.unlink(f)
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only when empty: another image's outputs stay
            raise

    def finish(self) -> None:
        """Save the manifest (call once at the end of a run, also after a failure)."""
        self.manifest.save()

    def record(self, res: Result) -> dict:
        return {
            "image": shown(res.image.path),
            "width": res.width,
            "height": res.height,
            "annotated": shown(res.annotated) if res.annotated else None,
            **self.meta,
            "detections": [d.to_dict() for d in res.detections],
        }

    def _crops(self, item: InputImage, image: Image.Image, detections: list[Detection]) -> dict[Path, bytes]:
        files: dict[Path, bytes] = {}
        for n, d in enumerate(detections, start=1):
            b = d.box  # float32 model outputs: round, so 79.9999 and 80.0001 both mean pixel edge 80
            x0, y0 = max(0, round(b.xmin)), max(0, round(b.ymin))
            x1, y1 = min(image.width, round(b.xmax)), min(image.height, round(b.ymax))
            if x1 <= x0 or y1 <= y0:
                continue
            path = self._target(self.out / "crops" / safe_name(d.class_name) / f"{item.key}_{n}.jpg")
            files[path] = encode_image(image.crop((x0, y0, x1, y1)), path)
        return files

    def _voc(self, item: InputImage, image: Image.Image, detections: list[Detection]) -> dict[Path, bytes]:
        """XML + the exact pixels detected on, side by side in <out>/voc/ (LabelImg and od.records
        both find the image next to its XML). Empty when an existing XML is kept (maybe
        hand-corrected: replaced only with --force, even though od wrote it).
        XML holds text only: a name that is not UTF-8 is written as ``\\xNN`` (file names and the
        <filename> inside alike, so the pair still matches)."""
        from od.data.voc import format_voc

        key = shown(item.key)
        xml = self._target(self.out / "voc" / f"{key}.xml")
        if os.path.lexists(xml) and not self.force:
            return {}
        img_path, img_data = self._voc_image(item, image, key)
        boxes = [
            Box(round(d.box.xmin), round(d.box.ymin), round(d.box.xmax), round(d.box.ymax), name=d.class_name)
            for d in detections
            if round(d.box.xmax) > round(d.box.xmin) and round(d.box.ymax) > round(d.box.ymin)
        ]
        xml_data = format_voc(image_path=img_path.resolve(), width=image.width, height=image.height, boxes=boxes,
                              depth=3, folder=xml.parent.name)
        return {img_path: img_data, xml: xml_data}

    def yolo_label(self, item: InputImage) -> Path:
        return self._target(self.out / "yolo" / "labels" / "train" / f"{shown(item.key)}.txt")

    def _yolo(self, item: InputImage, image: Image.Image, detections: list[Detection]) -> dict[Path, bytes]:
        """YOLO pre-labels in the Ultralytics layout: <out>/yolo/labels/train/<key>.txt beside
        <out>/yolo/images/train/<key>.<ext> (the pixels detected on, as for --save-voc); data.yaml and
        classes.txt come at the end of the run (``write_yolo_names``). Empty when an existing txt is
        kept (maybe hand-corrected: replaced only with --force). Scores only with ``yolo_scores``."""
        from od.data.yolo import format_yolo

        txt = self.yolo_label(item)
        if os.path.lexists(txt) and not self.force:
            return {}
        for d in detections:
            if d.class_name not in self.yolo_classes:
                self.yolo_classes.append(d.class_name)
        index = {n: i for i, n in enumerate(self.yolo_classes)}
        img_path, img_data = self._voc_image(item, image, shown(item.key), folder="yolo/images/train")
        text = format_yolo([d.box for d in detections], image.width, image.height, index,
                           [d.score for d in detections] if self.yolo_scores else None)
        return {img_path: img_data, txt: text.encode("utf-8")}

    def write_yolo_names(self) -> str | None:
        """<out>/yolo/data.yaml + classes.txt naming the classes of the txt files (why not written, or None)."""
        from od.data.yolo import format_classes_txt, format_data_yaml

        # val: the same images (Ultralytics wants a val:); od.records then splits them by hash
        files = {self.out / "yolo" / "data.yaml":
                 format_data_yaml(self.yolo_classes, {"train": "images/train", "val": "images/train"}).encode(),
                 self.out / "yolo" / "classes.txt": format_classes_txt(self.yolo_classes).encode()}
        problem = self.check(files)
        if problem is not None:
            return problem
        try:
            self.commit(files)
        except OSError as e:
            return f"{shown(self.out / 'yolo')}: cannot write data.yaml: {e.strerror or e}"
        return None

    def _voc_image(self, item: InputImage, image: Image.Image, key: str, folder: str = "voc") -> tuple[Path, bytes]:
        """Copy the input byte for byte when its pixels are what was detected on (JPEG/PNG with
        no EXIF rotation); otherwise store the RGB pixels the boxes refer to as JPEG."""
        import io

        from PIL import Image

        suffix = item.path.suffix.lower()
        copy_ok = False
        if suffix in (".jpg", ".jpeg", ".png"):
            try:
                data = read_file(item.path)  # regular files only, never blocks; checked and copied as read
                with Image.open(io.BytesIO(data)) as raw:
                    copy_ok = raw.size == image.size and raw.getexif().get(0x0112, 1) in (1, None)
            except Exception:  # noqa: BLE001 - then store the decoded pixels instead
                copy_ok = False
        if copy_ok:
            return self._target(self.out / folder / f"{key}{suffix}"), data
        dest = self._target(self.out / folder / f"{key}.jpg")
        return dest, encode_image(image, dest, quality=95)


def safe_name(name: str) -> str:
    cleaned = re.sub(r"[^\w.\- ]+", "_", name).strip(" .") or "class"
    return cleaned[:100]


def encode_image(image: Image.Image, path: Path, quality: int = 92) -> bytes:
    """The image encoded in memory as ``path``'s suffix says: JPEG, else PNG."""
    import io

    buf = io.BytesIO()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _make_dirs(folder: Path, made: list[Path]) -> None:
    """``mkdir -p folder``, adding the folders it makes to ``made`` (outermost first) as it goes."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            if not d.is_dir():
                raise


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new hidden temp file beside ``path`` (normal permissions: 0666 less the umask)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp
