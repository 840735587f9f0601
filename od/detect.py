"""``python -m od.detect``: run an exported detector on photos and draw what it finds.

Reads what ``od.export`` wrote (``exported/<name>/{saved_model,label_map.pbtxt,model.json}``)
or any OD-API-style detection SavedModel / TF Hub handle. Writes one annotated image per
input under ``--out`` (default ``detections/``), plus optional JSON, Pascal VOC pre-labels
(the active-learning loop: correct them in LabelImg, then ``od.records``) and crops.

TensorFlow is imported only after the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from od.core import Box, Detection
from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.io.files import atomic_write_bytes, atomic_write_text, file_problem, read_file, shown
from od.options import add_common, add_force, add_max_detections, add_score_threshold, quiet_tensorflow

if TYPE_CHECKING:  # imported lazily at run time (numpy/PIL/TF are slow to import)
    import numpy as np
    from PIL import Image

DEFAULT_EXPORTS = Path("exported")
DEFAULT_OUT = Path("detections")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes")
COMBINED_JSON = "detections"  # <out>/detections.json (per-image JSONs never take this name)
RESERVED_DIRS = ("voc", "crops")  # <out>/voc/, <out>/crops/
_HUB_RE = re.compile(r"^(https?://|gs://|tfhub\.dev/|www\.kaggle\.com/|kaggle\.com/)", re.IGNORECASE)


class ModelError(Exception):
    """The model cannot be found or used; the message says what exists and what to do."""


# --------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m od.detect",
        description=(
            "Detect objects in images with an exported model and write annotated copies\n"
            "(the inputs are never modified). Folders are searched recursively."
        ),
        epilog=(
            "Examples:\n"
            "  python -m od.detect photos/                      # newest model under exported/\n"
            "  python -m od.detect 'shots/*.jpg' --model exported/raccoon --score-threshold 0.3\n"
            "  python -m od.detect new/ --save-voc              # pre-labels in detections/voc/ for LabelImg\n"
            "Exit codes: 0 all images done, 1 some images failed, 2 usage error (bad flag, no model)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="image files, folders (recursive) or glob patterns")
    p.add_argument(
        "--model",
        metavar="PATH|NAME|HANDLE",
        help="export dir (exported/<name>), its name, a SavedModel dir, or a TF Hub handle "
        "(default: the newest export under exported/)",
    )
    p.add_argument("--label-map", metavar="PATH", help="label_map.pbtxt (default: the one inside the export; else numeric class ids)")
    add_score_threshold(p, 0.5, "boxes below it are not kept (default 0.5)")
    add_max_detections(p, "default: all the model returns")
    p.add_argument("--classes", metavar="NAMES", help="comma-separated class names (or ids) to keep, e.g. raccoon,dog")
    p.add_argument("--out", default=None, metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--save-json", action="store_true", help="write <out>/<image>.json per image and <out>/detections.json")
    p.add_argument(
        "--save-voc",
        action="store_true",
        help="write Pascal VOC pre-labels + image copies to <out>/voc/ (open in LabelImg; feed to od.records)",
    )
    p.add_argument("--save-crops", action="store_true", help="write each kept box as <out>/crops/<class>/<image>_<n>.jpg")
    add_force(p, "VOC XMLs already in <out>/voc/ (maybe hand-corrected; kept otherwise)")
    add_common(p)
    return p


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """One image to process and the unique key its outputs are named by (posix, no suffix)."""

    path: Path
    key: str


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _natural(name: str) -> list:
    """Sort key: img2 before img10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _walk_images(folder: Path, exclude: Path | None) -> list[Path]:
    """Entries named like images under ``folder`` (recursive, natural order), skipping hidden entries
    and ``exclude``. They need not be regular files (``run`` reports a FIFO or socket without opening
    it); a folder named like an image is searched, and listed itself when no image is found in it."""
    found: list[Path] = []
    image_named_dirs: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        dirs[:] = sorted(
            (d for d in dirs if not d.startswith(".") and (exclude is None or (rootp / d).resolve() != exclude)),
            key=_natural,
        )
        image_named_dirs += [rootp / d for d in dirs if _is_image(Path(d))]
        found += [rootp / f for f in sorted(files, key=_natural) if not f.startswith(".") and _is_image(Path(f))]
    if image_named_dirs:
        holding = {parent for f in found for parent in f.parents}
        found += [d for d in image_named_dirs if d not in holding]
    return found


def collect_inputs(specs: Sequence[str], out_dir: Path) -> tuple[list[InputImage], list[str]]:
    """Expand files/folders/globs into images with unique output keys; returns (images, problems).

    Keys: a file's stem, or its path relative to the folder argument (so ``a/x.jpg`` and
    ``a/sub/x.jpg`` stay apart); clashes between arguments get the folder's name, then ``_2``...
    The output folder is never searched (a second run must not detect on its own outputs).
    """
    out_resolved = out_dir.resolve()
    problems: list[str] = []
    candidates: list[tuple[Path, str, str]] = []  # (path, preferred key, fallback prefix)
    for spec in specs:
        p = Path(spec)
        found = _walk_images(p, out_resolved if out_resolved != p.resolve() else None) if p.is_dir() else []
        if found:
            for f in found:
                rel = f.relative_to(p).with_suffix("").as_posix()
                candidates.append((f, rel, p.resolve().name or "root"))
        elif (p.exists() and not p.is_dir()) or (p.is_dir() and _is_image(p)):
            # a file (a FIFO too: reported by run, never opened), or a folder named like an image
            # that holds none
            candidates.append((p, p.stem, p.resolve().parent.name))
        elif p.is_dir():
            continue
        elif any(c in spec for c in "*?["):
            matches = sorted(glob.glob(spec, recursive=True), key=_natural)
            files: list[Path] = []
            for m in matches:
                mp = Path(m)
                inside = _walk_images(mp, out_resolved) if mp.is_dir() else []
                files += inside
                if not inside and _is_image(mp):
                    files.append(mp)
            if not files:
                problems.append(f"{spec}: no images match this pattern")
            for f in files:
                candidates.append((f, f.stem, f.resolve().parent.name))
        else:
            problems.append(f"{spec}: no such file or folder")

    seen_paths: set[Path] = set()
    taken: set[str] = {COMBINED_JSON}
    images: list[InputImage] = []
    for path, key, prefix in candidates:
        rp = path.resolve()
        if rp in seen_paths:  # same file named twice (e.g. a folder and a glob)
            continue
        seen_paths.add(rp)
        options = [key, f"{prefix}/{key}" if prefix else key]
        chosen = next((k for k in options if _key_ok(k, taken)), None)
        n = 2
        while chosen is None:
            if _key_ok(f"{key}_{n}", taken):
                chosen = f"{key}_{n}"
            n += 1
        taken.add(chosen.lower())
        images.append(InputImage(path, chosen))
    return images, problems


def _key_ok(key: str, taken: set[str]) -> bool:
    first = key.split("/", 1)[0]
    if "/" in key and first.lower() in RESERVED_DIRS:
        return False
    return key.lower() not in taken


# --------------------------------------------------------------------------- model + labels


@dataclass
class ModelSource:
    """Where the detector comes from: a SavedModel dir (maybe inside an od export) or a hub handle."""

    ref: str  # what to show the user
    saved_model: str  # path or hub handle passed to the loader
    is_hub: bool = False
    export_dir: Path | None = None
    model_json: dict = field(default_factory=dict)


def list_exports(root: Path = DEFAULT_EXPORTS) -> list[Path]:
    """Export dirs under ``root`` that hold a SavedModel, newest ``model.json`` first."""
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "saved_model" / "saved_model.pb").is_file()]

    def mtime(d: Path) -> float:
        for f in (d / "model.json", d / "saved_model" / "saved_model.pb"):
            if f.is_file():
                return f.stat().st_mtime
        return 0.0

    return sorted(found, key=lambda d: (mtime(d), d.name), reverse=True)


def _exports_hint(root: Path = DEFAULT_EXPORTS) -> str:
    exports = list_exports(root)
    if exports:
        return "models under {}/: {}".format(root, ", ".join(str(d) for d in exports))
    return f"no models under {root}/ — run `make export` (or `python -m od.export`) first, or pass --model"


def _read_model_json(export_dir: Path) -> dict:
    f = export_dir / "model.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError) as e:
        warn(f"{f}: cannot read ({e}); going on without it")
        return {}


def resolve_model(arg: str | None, exports_root: Path = DEFAULT_EXPORTS) -> ModelSource:
    """Find the SavedModel to load (no TensorFlow needed). Raises ModelError with the options."""
    if arg is None:
        exports = list_exports(exports_root)
        if not exports:
            raise ModelError(f"no model given and {_exports_hint(exports_root)}")
        note_default("model (newest export)", exports[0])
        arg = str(exports[0])
    if _HUB_RE.match(arg):
        return ModelSource(ref=arg, saved_model=arg, is_hub=True)
    p = Path(arg).expanduser()
    if not p.exists() and not p.is_absolute() and (exports_root / arg).exists():
        p = exports_root / arg  # `--model raccoon` means exported/raccoon
    if not p.exists():
        raise ModelError(f"model {arg} not found; {_exports_hint(exports_root)}")
    if p.is_file():
        raise ModelError(f"model {arg} is a file; pass the export folder (exported/<name>) or a SavedModel folder")
    if (p / "saved_model" / "saved_model.pb").is_file():
        return ModelSource(ref=str(p), saved_model=str(p / "saved_model"), export_dir=p, model_json=_read_model_json(p))
    if (p / "saved_model.pb").is_file():
        parent = p.parent
        if p.name == "saved_model" and ((parent / "model.json").is_file() or (parent / "label_map.pbtxt").is_file()):
            return ModelSource(ref=str(parent), saved_model=str(p), export_dir=parent, model_json=_read_model_json(parent))
        return ModelSource(ref=str(p), saved_model=str(p))
    if (p / "pipeline.yaml").is_file() or any(p.glob("ckpt-*.index")):
        raise ModelError(
            f"{arg} is a training model dir, not an export; run `make export MODEL_DIR={arg}` "
            f"(python -m od.export --model-dir {arg}) and pass exported/<name>"
        )
    raise ModelError(f"{arg} holds no saved_model.pb (not a SavedModel or od export); {_exports_hint(exports_root)}")


def _classes_from_model_json(meta: dict) -> dict[int, str]:
    """model.json ``classes`` in any of the shapes an export may use: [{id,name}], {id: name}, [names]."""
    classes = meta.get("classes")
    out: dict[int, str] = {}
    try:
        if isinstance(classes, dict):
            out = {int(k): str(v) for k, v in classes.items()}
        elif isinstance(classes, list):
            for i, c in enumerate(classes, start=1):
                if isinstance(c, dict) and "id" in c and "name" in c:
                    out[int(c["id"])] = str(c["name"])
                elif isinstance(c, str):
                    out[i] = c
    except (TypeError, ValueError):
        return {}
    return out


def resolve_labels(source: ModelSource, label_map_arg: str | None) -> tuple[dict[int, str], str]:
    """id -> name, and where it came from. An explicit --label-map wins; then the export's
    label_map.pbtxt; then model.json's classes; else numeric ids (with a warning)."""
    from od.io.label_map import LabelMapError, read_label_map

    embedded = source.export_dir / "label_map.pbtxt" if source.export_dir else None
    candidates: list[Path] = []
    if label_map_arg:
        candidates.append(Path(label_map_arg))
    if embedded is not None and embedded.is_file():
        candidates.append(embedded)
    for path in candidates:
        try:
            lm = read_label_map(path)
        except LabelMapError as e:
            warn(f"{e}")
            continue
        mapping = dict(lm.id_to_name)
        if label_map_arg and path == Path(label_map_arg) and embedded is not None and embedded.is_file():
            try:
                if dict(read_label_map(embedded).id_to_name) != mapping:
                    warn(f"--label-map {path} differs from the model's own {embedded}; using {path} as asked")
            except LabelMapError:
                pass
        return mapping, str(path)
    mapping = _classes_from_model_json(source.model_json)
    if mapping:
        return mapping, f"{source.export_dir}/model.json"
    warn(
        f"no label map for model {source.ref} (pass --label-map label_map.pbtxt); "
        "boxes are labelled with numeric class ids"
    )
    return {}, ""


def parse_class_filter(spec: str | None, id_to_name: dict[int, str]) -> set[int] | None:
    """``--classes a,b,3`` -> class ids; ValueError naming unknown classes and the known ones."""
    if not spec:
        return None
    name_to_id = {n: i for i, n in id_to_name.items()}
    lower = {n.lower(): i for n, i in name_to_id.items()}
    ids: set[int] = set()
    unknown: list[str] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item in name_to_id:
            ids.add(name_to_id[item])
        elif item.lower() in lower:
            ids.add(lower[item.lower()])
        elif item.isdigit():
            ids.add(int(item))
        else:
            unknown.append(item)
    if unknown:
        known = ", ".join(f"{n} ({i})" for i, n in sorted(id_to_name.items())) or "none (no label map; use numeric ids)"
        raise ValueError(f"--classes: unknown class {', '.join(unknown)}; known classes: {known}")
    if not ids:
        raise ValueError("--classes is empty")
    return ids


# --------------------------------------------------------------------------- inference


class Detector:
    """A loaded detection SavedModel and its label names; ``detect`` is od's inference path.

    The signature is called directly with one uint8 tensor, and its outputs are converted to
    numpy once, so the path adds next to nothing to the model's own time.
    """

    def __init__(self, fn: Callable[..., Any], input_key: str | None, input_dtype: Any, fixed_hw: tuple[int, int] | None,
                 id_to_name: dict[int, str], ref: str):
        self._fn = fn
        self._input_key = input_key
        self._input_dtype = input_dtype
        self._fixed_hw = fixed_hw
        self.id_to_name = dict(id_to_name)
        self.ref = ref
        self._unknown_warned: set[int] = set()

    @classmethod
    def load(cls, source: ModelSource, id_to_name: dict[int, str]) -> "Detector":
        """Load with TensorFlow (imported here). Raises ModelError with a clear message."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if source.is_hub:
            try:
                import tensorflow_hub as hub
            except ImportError as e:  # pragma: no cover - it is a dependency
                raise ModelError(f"TF Hub handle {source.ref} needs tensorflow_hub: pip install tensorflow-hub ({e})")
            try:
                obj = hub.load(source.saved_model)
            except Exception as e:  # noqa: BLE001 - hub raises many kinds for network trouble
                raise ModelError(
                    f"cannot load TF Hub model {source.ref}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
                    "  TF Hub models are downloaded on first use; this machine could not fetch it (no internet?). "
                    "Download it elsewhere (or set TFHUB_CACHE_DIR to a cache holding it), then pass the "
                    "unpacked SavedModel folder with --model PATH."
                ) from None
        else:
            try:
                obj = tf.saved_model.load(source.saved_model)
            except Exception as e:  # noqa: BLE001 - corrupt/incompatible SavedModels raise many kinds
                raise ModelError(f"cannot load SavedModel {source.saved_model}: {type(e).__name__}: {e}") from None

        sigs = getattr(obj, "signatures", None) or {}
        if "serving_default" in sigs:
            fn = sigs["serving_default"]
            _, kw = fn.structured_input_signature
            if len(kw) != 1:
                raise ModelError(
                    f"{source.ref}: serving_default takes {sorted(kw)}; expected one image tensor input"
                )
            key, spec = next(iter(kw.items()))
            shape = spec.shape.as_list() if spec.shape.rank is not None else [None] * 4
            if len(shape) != 4 or shape[-1] not in (3, None):
                raise ModelError(f"{source.ref}: serving_default input {key} has shape {shape}; expected [batch, H, W, 3]")
            if spec.dtype == tf.string:
                raise ModelError(f"{source.ref}: serving_default takes encoded strings; od.detect needs an image-tensor signature")
            fixed = (shape[1], shape[2]) if shape[1] and shape[2] else None
            return cls(fn, key, spec.dtype, fixed, id_to_name, source.ref)
        if callable(obj):  # TF2 hub detectors without signatures: call the object with the tensor
            return cls(obj, None, tf.uint8, None, id_to_name, source.ref)
        raise ModelError(f"{source.ref}: no serving_default signature and not callable; not a detection SavedModel")

    def raw(self, array: "np.ndarray") -> dict[str, "np.ndarray"]:
        """Run the model on one HxWx3 uint8 array; the OD API outputs as numpy, batch dim removed."""
        import numpy as np
        import tensorflow as tf

        x = array
        if self._fixed_hw is not None and tuple(x.shape[:2]) != self._fixed_hw:
            from PIL import Image

            # Fixed-size models: a plain resize keeps normalised boxes valid for the original.
            x = np.asarray(Image.fromarray(x).resize((self._fixed_hw[1], self._fixed_hw[0]), Image.BILINEAR))
        t = tf.constant(x[None])
        if t.dtype != self._input_dtype:
            t = tf.cast(t, self._input_dtype)
        out = self._fn(**{self._input_key: t}) if self._input_key else self._fn(t)
        missing = [k for k in OUTPUT_KEYS if k not in out]
        if missing:
            raise ModelError(
                f"{self.ref}: model outputs {sorted(out)}; missing {missing} (expected OD API detection outputs)"
            )
        res = {k: out[k].numpy() for k in (*OUTPUT_KEYS, "num_detections") if k in out}
        return {k: (v[0] if v.ndim and v.shape[0] == 1 and k != "num_detections" else v) for k, v in res.items()}

    def postprocess(
        self,
        raw: dict[str, "np.ndarray"],
        width: int,
        height: int,
        threshold: float = 0.5,
        class_ids: set[int] | None = None,
        max_boxes: int | None = None,
    ) -> list[Detection]:
        """Filter (score, class, count) and convert normalised yxyx boxes to pixel Detections."""
        import numpy as np

        boxes = np.asarray(raw["detection_boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(raw["detection_scores"], dtype=np.float64).reshape(-1)
        classes = np.rint(np.asarray(raw["detection_classes"], dtype=np.float64).reshape(-1)).astype(np.int64)
        n = len(scores)
        if "num_detections" in raw:
            n = min(n, int(np.asarray(raw["num_detections"]).reshape(-1)[0]))
        boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
        keep = scores >= threshold
        if class_ids is not None:
            keep &= np.isin(classes, np.fromiter(class_ids, dtype=np.int64))
        idx = np.nonzero(keep)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        if max_boxes is not None:
            idx = idx[:max_boxes]
        px = boxes[idx] * np.array([height, width, height, width], dtype=np.float64)
        px[:, 0::2] = np.clip(px[:, 0::2], 0, height)
        px[:, 1::2] = np.clip(px[:, 1::2], 0, width)
        dets: list[Detection] = []
        for (y0, x0, y1, x1), s, c in zip(px.tolist(), scores[idx].tolist(), classes[idx].tolist()):
            name = self.id_to_name.get(c)
            if name is None:
                name = str(c)
                if self.id_to_name and c not in self._unknown_warned:
                    self._unknown_warned.add(c)
                    warn(f"model predicted class id {c}, which the label map does not have; shown as {c}")
            dets.append(Detection(Box(x0, y0, x1, y1, name=name), c, name, s))
        return dets

    def detect(
        self,
        image: "Image.Image | np.ndarray",
        threshold: float = 0.5,
        class_ids: set[int] | None = None,
        max_boxes: int | None = None,
    ) -> list[Detection]:
        """Detections in pixels of ``image`` (an RGB PIL image or HxWx3 uint8 array)."""
        import numpy as np

        arr = image if isinstance(image, np.ndarray) else np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        h, w = arr.shape[:2]
        return self.postprocess(self.raw(arr), w, h, threshold, class_ids, max_boxes)


def load_detector(model: str | None = None, label_map: str | None = None) -> Detector:
    """Resolve + load a model the way the CLI does (for the benchmark and the demo pipeline)."""
    source = resolve_model(model)
    id_to_name, _ = resolve_labels(source, label_map)
    return Detector.load(source, id_to_name)


# --------------------------------------------------------------------------- outputs


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

    def write(self, item: InputImage, image: "Image.Image", detections: list[Detection]) -> Result:
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

    def _write_crops(self, item: InputImage, image: "Image.Image", detections: list[Detection]) -> None:
        for n, d in enumerate(detections, start=1):
            b = d.box  # float32 model outputs: round, so 79.9999 and 80.0001 both mean pixel edge 80
            x0, y0 = max(0, round(b.xmin)), max(0, round(b.ymin))
            x1, y1 = min(image.width, round(b.xmax)), min(image.height, round(b.ymax))
            if x1 <= x0 or y1 <= y0:
                continue
            folder = _safe_name(d.class_name)
            _save_image(image.crop((x0, y0, x1, y1)), self._target(self.out / "crops" / folder / f"{item.key}_{n}.jpg"))

    def _write_voc(self, item: InputImage, image: "Image.Image", detections: list[Detection]) -> bool:
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

    def _voc_image(self, item: InputImage, image: "Image.Image", key: str) -> Path:
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


def _save_image(image: "Image.Image", path: Path, quality: int = 92) -> None:
    """Encode in memory, then write atomically (a crash never leaves half an image)."""
    import io

    buf = io.BytesIO()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(path, buf.getvalue())


def _summary_line(res: Result) -> str:
    counts = Counter(d.class_name for d in res.detections)
    what = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "no detections"
    return f"{shown(res.image.path)}: {what}"


# --------------------------------------------------------------------------- the run


def run(
    detector: Detector,
    images: Sequence[InputImage],
    writer: OutputWriter,
    threshold: float,
    class_ids: set[int] | None,
    max_boxes: int | None,
    progress: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Detect on every image: the next image is decoded and the previous one drawn and saved in
    background threads while the model runs, so the model is rarely idle. One bad image is
    reported and skipped; the rest go on."""
    from tqdm import tqdm

    from od.data.images import open_image_rgb

    def load(item: InputImage):
        why = file_problem(item.path)
        if why is not None:
            return item, None, None, f"{shown(item.path)}: {why}"
        try:
            import numpy as np

            img = open_image_rgb(item.path)
            return item, img, np.asarray(img), None
        except Exception as e:  # noqa: BLE001 - ImageError, plus anything odd a decoder raises
            msg = str(e) if str(item.path) in str(e) else f"{item.path}: {e}"
            return item, None, None, shown(msg)  # names that are not UTF-8 as \xNN, printable

    results: list[Result] = []
    # disable=None: a bar on terminals only (logs and pipes get the per-image lines alone)
    bar = tqdm(total=len(images), unit="img", disable=None if progress and len(images) > 1 else True,
               file=sys.stderr, dynamic_ncols=True)

    def emit(res: Result) -> None:
        if res.error:
            error(res.error)
        else:
            line = _summary_line(res)
            if res.kept_voc:
                line += f" (kept existing {shown(writer.out / 'voc' / (res.image.key + '.xml'))}; --force replaces it)"
            if bar.disable:
                print(line, flush=True)
            else:
                tqdm.write(line, file=sys.stdout)
        results.append(res)
        bar.update(1)
        if on_result:
            on_result(res)

    def save(item: InputImage, img, dets: list[Detection]) -> Result:
        try:
            return writer.write(item, img, dets)
        except Exception as e:  # noqa: BLE001 - disk full, permissions...: report, go on
            return Result(item, img.width, img.height, dets, error=shown(f"{item.path}: cannot write outputs: {e}"))

    with ThreadPoolExecutor(1, thread_name_prefix="od-load") as loader, ThreadPoolExecutor(1, thread_name_prefix="od-save") as saver:
        queue = iter(images)
        loading: deque[Future] = deque()
        saving: deque[Future] = deque()
        for item in (next(queue, None) for _ in range(2)):
            if item is not None:
                loading.append(loader.submit(load, item))
        while loading:
            item, img, arr, err = loading.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                loading.append(loader.submit(load, nxt))
            if err is not None:
                emit(Result(item, error=err))
                continue
            try:
                dets = detector.postprocess(detector.raw(arr), img.width, img.height, threshold, class_ids, max_boxes)
            except ModelError:
                raise
            except Exception as e:  # noqa: BLE001 - one image the model chokes on must not stop the batch
                emit(Result(item, img.width, img.height, error=shown(f"{item.path}: detection failed: {type(e).__name__}: {e}")))
                continue
            saving.append(saver.submit(save, item, img, dets))
            while saving and (saving[0].done() or len(saving) > 2):
                emit(saving.popleft().result())
        while saving:
            emit(saving.popleft().result())
    bar.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)

    out = Path(args.out) if args.out else DEFAULT_OUT
    if not args.out:
        note_default("output folder", f"{out}/")
    if out.exists() and not out.is_dir():
        error(f"--out {out} is a file, not a folder")
        return EXIT_USAGE
    try:
        source = resolve_model(args.model)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE

    images, input_problems = collect_inputs(args.inputs, out)
    input_problems = [shown(p) for p in input_problems]
    for p in input_problems:
        error(p)
    if not images:
        error("no images to process (" + ", ".join(shown(i) for i in args.inputs) + ")")
        return EXIT_USAGE

    id_to_name, labels_from = resolve_labels(source, args.label_map)
    if labels_from and labels_from != args.label_map:
        note_default("label map", labels_from)
    try:
        class_ids = parse_class_filter(args.classes, id_to_name)
    except ValueError as e:
        error(str(e))
        return EXIT_USAGE

    t0 = time.perf_counter()
    try:
        detector = Detector.load(source, id_to_name)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE
    load_s = time.perf_counter() - t0

    meta = {
        "model": source.ref,
        "label_map": labels_from or None,
        "threshold": args.score_threshold,
        "classes": sorted(id_to_name.get(i, str(i)) for i in class_ids) if class_ids else None,
        "max_boxes": args.max_detections,
    }
    writer = OutputWriter(out, [i.path for i in images], args.save_json, args.save_voc, args.save_crops, args.force, meta)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error(f"cannot create output folder {out}: {e.strerror or e}")
        return EXIT_USAGE
    print(f"od.detect: {len(images)} image(s), model {source.ref} (TensorFlow + model loaded in {load_s:.1f}s), score threshold {args.score_threshold}", file=sys.stderr)
    t1 = time.perf_counter()
    try:
        results = run(detector, images, writer, args.score_threshold, class_ids, args.max_detections,
                      progress=not args.quiet)
    except ModelError as e:
        error(str(e))
        return EXIT_USAGE
    elapsed = time.perf_counter() - t1

    done = [r for r in results if not r.error]
    failed = [r for r in results if r.error]
    if args.save_json:
        combined = {**meta, "images": [writer.record(r) for r in done],
                    "failed": [{"image": shown(r.image.path), "error": r.error} for r in failed]}
        atomic_write_text(out / f"{COMBINED_JSON}.json", json.dumps(combined, indent=2) + "\n")

    per_class: dict[str, list[int]] = {}
    for r in done:
        counts = Counter(d.class_name for d in r.detections)
        for c, n in counts.items():
            row = per_class.setdefault(c, [0, 0])
            row[0] += 1
            row[1] += n
    print()
    if per_class:
        print_table(["class", "images", "boxes"], [[c, v[0], v[1]] for c, v in sorted(per_class.items())])
    rate = len(done) / elapsed if elapsed > 0 else 0.0
    print(f"{len(done)} image(s) done, {len(failed) + len(input_problems)} failed, {rate:.2f} img/s; outputs in {shown(out)}/")
    extras = [f"{shown(out)}/{k}/" for k, on in (("voc", args.save_voc), ("crops", args.save_crops)) if on]
    if args.save_json:
        extras.append(f"{shown(out)}/{COMBINED_JSON}.json")
    if extras:
        print("also wrote: " + ", ".join(extras))
    kept = [r for r in done if r.kept_voc]
    if kept:
        warn(f"{len(kept)} VOC XML(s) already in {out}/voc/ were kept (maybe hand-corrected); --force replaces them")
    if failed or input_problems:
        for msg in [*input_problems, *(r.error for r in failed)]:
            print(f"  failed: {msg}", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


def cli() -> None:
    """Console entry point: ``main`` then a fast exit. With a detector loaded, TensorFlow's
    teardown at interpreter exit takes seconds; by the time ``main`` returns every output is
    written (atomically) and every thread joined, so skip it."""
    rc = main()
    if "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    cli()
