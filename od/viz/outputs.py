"""Writing what ``od.detect`` produces: annotated images, JSON, VOC pre-labels, crops, and the
manifest of what it wrote."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from od.core import Box, Detection
from od.io.files import atomic_write_bytes, atomic_write_text, read_file, shown

if TYPE_CHECKING:  # imported lazily at run time (PIL is slow to import)
    from PIL import Image

COMBINED_JSON = "detections"  # <out>/detections.json (per-image JSONs never take this name)
RESERVED_DIRS = ("voc", "crops")  # <out>/voc/, <out>/crops/


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


class OutputWriter:
    """Writes everything for one image under ``out``; never writes onto an input file."""

    def __init__(self, out: Path, inputs: Iterable[Path], save_json: bool, save_voc: bool, save_crops: bool,
                 force: bool, meta: dict):
        self.out = out
        self._inputs = {p.resolve() for p in inputs}
        self.save_json, self.save_voc, self.save_crops, self.force = save_json, save_voc, save_crops, force
        self.meta = meta

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
        from od.viz.draw import draw_detections

        res = Result(item, image.width, image.height, detections)
        annotated = draw_detections(image, detections)
        path = self.annotated_path(item)
        _save_image(annotated, path)
        res.annotated = path
        if self.save_json:
            atomic_write_text(self._target(self.out / f"{item.key}.json"), json.dumps(self.record(res), indent=2) + "\n")
        if self.save_crops:
            self._write_crops(item, image, detections)
        if self.save_voc:
            res.kept_voc = not self._write_voc(item, image, detections)
        return res

    def record(self, res: Result) -> dict:
        return {
            "image": shown(res.image.path),
            "width": res.width,
            "height": res.height,
            "annotated": shown(res.annotated) if res.annotated else None,
            **self.meta,
            "detections": [d.to_dict() for d in res.detections],
        }

    def _write_crops(self, item: InputImage, image: Image.Image, detections: list[Detection]) -> None:
        for n, d in enumerate(detections, start=1):
            b = d.box  # float32 model outputs: round, so 79.9999 and 80.0001 both mean pixel edge 80
            x0, y0 = max(0, round(b.xmin)), max(0, round(b.ymin))
            x1, y1 = min(image.width, round(b.xmax)), min(image.height, round(b.ymax))
            if x1 <= x0 or y1 <= y0:
                continue
            folder = _safe_name(d.class_name)
            _save_image(image.crop((x0, y0, x1, y1)), self._target(self.out / "crops" / folder / f"{item.key}_{n}.jpg"))

    def _write_voc(self, item: InputImage, image: Image.Image, detections: list[Detection]) -> bool:
        """XML + the exact pixels detected on, side by side in <out>/voc/ (LabelImg and od.records
        both find the image next to its XML). Returns False when an existing XML was kept.
        XML holds text only: a name that is not UTF-8 is written as ``\\xNN`` (file names and the
        <filename> inside alike, so the pair still matches)."""
        from od.data.voc import write_voc

        key = shown(item.key)
        xml = self._target(self.out / "voc" / f"{key}.xml")
        if xml.exists() and not self.force:
            return False
        img_path = self._voc_image(item, image, key)
        boxes = [
            Box(round(d.box.xmin), round(d.box.ymin), round(d.box.xmax), round(d.box.ymax), name=d.class_name)
            for d in detections
            if round(d.box.xmax) > round(d.box.xmin) and round(d.box.ymax) > round(d.box.ymin)
        ]
        write_voc(xml, image_path=img_path.resolve(), width=image.width, height=image.height, boxes=boxes,
                  depth=3, folder=xml.parent.name)
        return True

    def _voc_image(self, item: InputImage, image: Image.Image, key: str) -> Path:
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
            dest = self._target(self.out / "voc" / f"{key}{suffix}")
            atomic_write_bytes(dest, data)
        else:
            dest = self._target(self.out / "voc" / f"{key}.jpg")
            _save_image(image, dest, quality=95)
        return dest


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^\w.\- ]+", "_", name).strip(" .") or "class"
    return cleaned[:100]


def _save_image(image: Image.Image, path: Path, quality: int = 92) -> None:
    """Encode in memory, then write atomically (a crash never leaves half an image)."""
    import io

    buf = io.BytesIO()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(path, buf.getvalue())
