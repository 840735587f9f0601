"""Which model to run: an od export, a plain SavedModel or a TF Hub handle, and its class names.

No TensorFlow here: finding the model and its label map is instant, so a wrong ``--model``
is reported before the seconds a model load takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from od.console import note_default, warn
from od.io.schema import MODEL_FILE, SchemaError, model_classes, read_model_json
from od.model.errors import ModelError

DEFAULT_EXPORTS = Path("exported")
TFLITE_FILE = "model.tflite"
RUNTIMES = ("auto", "savedmodel", "tflite")
_HUB_RE = re.compile(r"^(https?://|gs://|tfhub\.dev/|www\.kaggle\.com/|kaggle\.com/)", re.IGNORECASE)


@dataclass
class ModelSource:
    """Where the detector comes from: a SavedModel dir (maybe inside an od export) or a hub handle."""

    ref: str  # what to show the user
    saved_model: str  # path or hub handle passed to the loader
    is_hub: bool = False
    export_dir: Path | None = None
    model_json: dict = field(default_factory=dict)
    tflite: Path | None = None  # the export's model.tflite, when it has one (or the .tflite file given)

    def runtime(self, choice: str = "auto") -> str:
        """``tflite`` or ``savedmodel``: auto runs the .tflite file when the export holds one."""
        if choice == "tflite" and self.tflite is None:
            raise ModelError(f"--runtime tflite: {self.ref} holds no {TFLITE_FILE} (export with --tflite MODE)")
        if choice == "savedmodel" and not self.saved_model:
            raise ModelError(f"--runtime savedmodel: {self.ref} is a .tflite file, not a SavedModel")
        if choice == "auto":
            return "tflite" if self.tflite is not None else "savedmodel"
        return choice


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
    """The export's model.json (checked by the schema); a broken one is named and left out."""
    try:
        return read_model_json(export_dir) or {}
    except SchemaError as e:
        warn(f"{e}; going on without it")
        return {}


def _tflite_in(export_dir: Path) -> Path | None:
    f = export_dir / TFLITE_FILE
    return f if f.is_file() else None


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
    if p.is_file() and p.suffix == ".tflite":
        parent = p.parent
        if not (parent / MODEL_FILE).is_file():
            raise ModelError(f"{arg}: a .tflite file needs its export's {MODEL_FILE} beside it (how to prepare its input)")
        sm = parent / "saved_model"
        return ModelSource(ref=str(p), saved_model=str(sm) if (sm / "saved_model.pb").is_file() else "",
                           export_dir=parent, model_json=_read_model_json(parent), tflite=p)
    if p.is_file():
        raise ModelError(f"model {arg} is a file; pass the export folder (exported/<name>) or a SavedModel folder")
    if (p / "saved_model" / "saved_model.pb").is_file():
        return ModelSource(ref=str(p), saved_model=str(p / "saved_model"), export_dir=p, model_json=_read_model_json(p),
                           tflite=_tflite_in(p))
    if (p / "saved_model.pb").is_file():
        parent = p.parent
        if p.name == "saved_model" and ((parent / "model.json").is_file() or (parent / "label_map.pbtxt").is_file()):
            return ModelSource(ref=str(parent), saved_model=str(p), export_dir=parent, model_json=_read_model_json(parent),
                               tflite=_tflite_in(parent))
        return ModelSource(ref=str(p), saved_model=str(p))
    if (p / "pipeline.yaml").is_file() or any(p.glob("ckpt-*.index")):
        raise ModelError(
            f"{arg} is a training model dir, not an export; run `make export MODEL_DIR={arg}` "
            f"(python -m od.export --model-dir {arg}) and pass exported/<name>"
        )
    raise ModelError(f"{arg} holds no saved_model.pb (not a SavedModel or od export); {_exports_hint(exports_root)}")


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
    mapping = model_classes(source.model_json) if source.model_json else {}
    if mapping:
        return mapping, f"{source.export_dir}/{MODEL_FILE}"
    warn(
        f"no label map for model {source.ref} (pass --label-map label_map.pbtxt); "
        "boxes are labelled with numeric class ids"
    )
    return {}, ""
