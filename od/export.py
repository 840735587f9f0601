"""``python -m od.export``: a model dir's checkpoint -> a SavedModel that speaks the OD API.

Model Garden's ``DetectionModule`` does the preprocessing (normalise, resize keeping the
aspect ratio, pad) and the forward pass; it returns boxes in pixels of the resized,
padded model input plus ``image_info``. Tools written for the OD API expect boxes
normalised to the *original* image, float class ids and a float ``num_detections``, so
the exported signatures convert inside the graph (``ODDetectionModule.serve``). Every
consumer (od.detect, od.evaluate --model, other OD API tools) then needs no
Model Garden knowledge.

TFLite: Model Garden's TFLite detection post-processing (the ``TFLite_Detection_PostProcess``
custom op) exists for the RetinaNet family only. The ``.tflite`` model takes a uint8
``[1, H, W, 3]`` canvas at the model's padded input size (the image resized to fit the
input size keeping its aspect ratio, pasted top-left, the rest filled with the mean
colour: see :func:`tflite_canvas`) and returns boxes normalised to that canvas.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from od.console import EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.io.files import atomic_dir
from od.options import (
    add_common,
    add_force,
    add_max_detections,
    add_score_threshold,
    positive_int,
    quiet_tensorflow,
)

# Signature name -> Model Garden input type. ``serving_default`` is the uint8 tensor one.
SIGNATURES = {"serving_default": "image_tensor", "image_bytes": "image_bytes", "tf_example": "tf_example"}
# Same input name as the OD API's exporter, so OD API clients call od exports unchanged.
INPUT_NAME = "input_tensor"
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
TFLITE_MODES = ("float32", "float16", "int8")
# od templates whose architecture Model Garden can export to TFLite (RetinaNet family).
TFLITE_TEMPLATES = ("retinanet_resnet50_fpn",)
TFLITE_FILE = "model.tflite"
# Mean RGB Model Garden subtracts; a canvas padded with it is zero after normalisation,
# exactly like Model Garden's own padding.
PAD_RGB = (124, 116, 104)
FORMAT_VERSION = 1


class ExportError(Exception):
    """A problem the user can fix; the message says what and where."""


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m od.export",
        description="Export a trained model dir to exported/<name>/ (SavedModel with OD API outputs, "
        "label map, pipeline.yaml, model.json; optionally a .tflite file).",
    )
    p.add_argument("--model-dir", required=True, help="training run dir (runs/<name>) with pipeline.yaml and checkpoints")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="best (default: <model_dir>/best_ckpt, else the latest with a note), latest, "
        "or a checkpoint path/prefix (e.g. runs/x/ckpt-500) or a dir holding checkpoints",
    )
    p.add_argument("--out", default=None, help="export dir (default: exported/<model dir name>)")
    add_force(p, "an existing export dir")
    p.add_argument("--tflite", choices=TFLITE_MODES, default=None, help="also write model.tflite (RetinaNet family only)")
    p.add_argument(
        "--calibration-records",
        default=None,
        help="dir (or file/glob) of TFRecords for int8 calibration (default: the run's records dir, train split)",
    )
    p.add_argument("--calibration-images", type=positive_int, default=100,
                   help="images used for int8 calibration (default 100)")
    add_max_detections(p, "baked into the exported model (default: the config's)")
    add_score_threshold(p, None, "baked into the exported model, boxes below it are never returned "
                        "(default: the config's)")
    add_common(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(args.verbose)
    model_dir = Path(args.model_dir)
    if args.out is None:
        out = Path("exported") / model_dir.resolve().name
        note_default("export dir", out)
    else:
        out = Path(args.out)
    if args.checkpoint is None:
        note_default("checkpoint", "best")
    try:
        result = export_model(
            model_dir,
            out,
            checkpoint=args.checkpoint or "best",
            force=args.force,
            tflite=args.tflite,
            calibration_records=args.calibration_records,
            calibration_images=args.calibration_images,
            max_detections=args.max_detections,
            score_threshold=args.score_threshold,
        )
    except ExportError as e:
        error(str(e))
        return EXIT_USAGE
    print_summary(result)
    return EXIT_OK


# --------------------------------------------------------------------------- model dir


@dataclass(frozen=True)
class CheckpointChoice:
    path: str  # checkpoint prefix (…/ckpt-500)
    kind: str  # best | latest | path
    step: int | None


def _model_dirs_hint(model_dir: Path) -> str:
    parent = model_dir.parent if str(model_dir.parent) not in ("", ".") else Path("runs")
    if not parent.is_dir():
        parent = Path("runs")
    found = sorted(p.name for p in parent.glob("*") if (p / "pipeline.yaml").is_file()) if parent.is_dir() else []
    if found:
        return f"; model dirs under {parent}/: {', '.join(found)}"
    return "; train one first with `python -m od.train` (make train)"


def check_model_dir(model_dir: Path) -> None:
    """Fail fast, before TensorFlow is imported, with a message that says what to do."""
    if not model_dir.exists():
        raise ExportError(f"model dir {model_dir} does not exist{_model_dirs_hint(model_dir)}")
    if not model_dir.is_dir():
        raise ExportError(f"model dir {model_dir} is not a directory")
    if not (model_dir / "pipeline.yaml").is_file():
        raise ExportError(
            f"{model_dir} has no pipeline.yaml: not an od model dir (od.train writes one per run){_model_dirs_hint(model_dir)}"
        )
    if not (model_dir / "od.yaml").is_file():
        raise ExportError(f"{model_dir} has no od.yaml: not a model dir written by od.train")
    if not (model_dir / "label_map.pbtxt").is_file():
        raise ExportError(f"{model_dir} has no label_map.pbtxt (od.train copies the label map into the model dir)")


def load_model_dir(model_dir: Path) -> tuple[Any, dict]:
    """(params, header) via od.model.model_dir, its errors turned into ExportError."""
    from od.model.model_dir import load_model_dir as _load

    try:
        return _load(model_dir)
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"cannot rebuild the config of {model_dir}: {e}") from e


def _checkpoint_step(path: str) -> int | None:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for key in ("global_step/.ATTRIBUTES/VARIABLE_VALUE", "step/.ATTRIBUTES/VARIABLE_VALUE"):
            if reader.has_tensor(key):
                return int(reader.get_tensor(key))
    except (tf.errors.OpError, ValueError):
        pass
    m = re.search(r"-(\d+)$", path)
    return int(m.group(1)) if m else None


def resolve_checkpoint(model_dir: Path, which: str) -> CheckpointChoice:
    """``best`` -> best_ckpt/ (else latest, with a note), ``latest``, or an explicit path."""
    import tensorflow as tf

    def latest_in(d: Path) -> str | None:
        return tf.train.latest_checkpoint(str(d)) if d.is_dir() else None

    if which == "best":
        best_dir = model_dir / "best_ckpt"
        path = latest_in(best_dir)
        if path:
            return CheckpointChoice(path, "best", _checkpoint_step(path))
        path = latest_in(model_dir)
        if not path:
            raise ExportError(f"no checkpoint in {model_dir} (no best_ckpt/ and no ckpt-N): train first")
        print(
            f"od: note: {best_dir} has no best checkpoint (validation has not run yet?); "
            f"exporting the latest checkpoint {Path(path).name}",
            file=sys.stderr,
        )
        return CheckpointChoice(path, "latest", _checkpoint_step(path))
    if which == "latest":
        path = latest_in(model_dir)
        if not path:
            raise ExportError(f"no checkpoint (ckpt-N) in {model_dir}: train first")
        return CheckpointChoice(path, "latest", _checkpoint_step(path))
    p = Path(which)
    if p.is_dir():
        path = latest_in(p)
        if not path:
            raise ExportError(f"--checkpoint {which}: no checkpoint in that directory")
        return CheckpointChoice(path, "path", _checkpoint_step(path))
    if Path(str(p) + ".index").is_file():
        return CheckpointChoice(str(p), "path", _checkpoint_step(str(p)))
    raise ExportError(
        f"--checkpoint {which}: no such checkpoint (expected best, latest, a dir, or a prefix like "
        f"{model_dir}/ckpt-100 with a .index file beside it)"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warn(f"cannot read {path}: {e}; leaving it out of model.json")
        return None


_METRIC_KEYS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "voc_mAP50",
    "num_images", "num_gt_boxes", "split", "step", "checkpoint", "created",
)  # fmt: skip


def _metrics_summary(metrics: Any) -> Any:
    """The headline numbers of od.evaluate's metrics.json (plots data and matrices left out)."""
    if not isinstance(metrics, dict):
        return metrics
    out = {k: metrics[k] for k in _METRIC_KEYS if k in metrics}
    per_class = metrics.get("per_class")
    if isinstance(per_class, list):
        out["per_class"] = [
            {k: c[k] for k in ("id", "name", "AP", "AP50", "voc_AP50") if k in c} for c in per_class if isinstance(c, dict)
        ]
    return out or metrics


# --------------------------------------------------------------------------- TF graph pieces


def _is_retinanet(params) -> bool:
    from official.vision import configs

    return isinstance(params.task.model, configs.retinanet.RetinaNet)


def export_params(params, max_detections: int | None, score_threshold: float | None):
    """The run's config with od's export settings: raw pixel outputs (od converts), overrides applied."""
    gen: dict[str, Any] = {}
    if max_detections is not None:
        gen["max_num_detections"] = max_detections
    if score_threshold is not None:
        gen["pre_nms_score_threshold"] = score_threshold
    task: dict[str, Any] = {"model": {"detection_generator": gen}} if gen else {}
    if _is_retinanet(params):
        task["export_config"] = {
            "output_normalized_coordinates": False,
            "cast_num_detections_to_float": False,
            "cast_detection_classes_to_float": False,
            "output_intermediate_features": False,
        }
    return params.replace(task=task) if task else params.replace()


def _module_class():
    """``ODDetectionModule`` (defined lazily: its base class imports TensorFlow)."""
    global _OD_MODULE
    if _OD_MODULE is not None:
        return _OD_MODULE
    import tensorflow as tf
    from official.vision.modeling.layers import detection_generator as dg
    from official.vision.ops import preprocess_ops
    from official.vision.serving import detection

    class ODDetectionModule(detection.DetectionModule):
        """Model Garden's detection export module with OD API outputs."""

        def serve(self, images):
            if self._input_type == "tflite":
                return self._serve_tflite(images)
            out = super().serve(images)
            image_info = out["image_info"]
            # Pixels of the resized input -> original pixels (/ scale) -> [0, 1] (/ original size).
            out = self._normalize_coordinates(out, ["detection_boxes"], image_info)
            return {
                "detection_boxes": out["detection_boxes"],
                "detection_scores": out["detection_scores"],
                "detection_classes": tf.cast(out["detection_classes"], tf.float32),
                "num_detections": tf.cast(out["num_detections"], tf.float32),
            }

        def _serve_tflite(self, images):
            """uint8 canvas -> detections via TFLite's NMS op, background column removed."""
            x = tf.cast(images, tf.float32)
            x = preprocess_ops.normalize_image(x, offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB)
            h, w = self._padded_size
            anchors = self._build_anchor_boxes()
            raw = self.model.call(
                images=x,
                image_shape=tf.constant([[h, w]], tf.float32),
                anchor_boxes=anchors,
                training=False,
            )
            mp = self.params.task.model
            num_classes = mp.num_classes
            scores = {}
            for level, s in raw["cls_outputs"].items():
                fh, fw = s.shape[1], s.shape[2]
                a = s.shape[3] // num_classes
                s = tf.reshape(s, [1, fh, fw, a, num_classes])[..., 1:]  # column 0 = background
                scores[level] = tf.reshape(s, [1, fh, fw, a * (num_classes - 1)])
            gen = mp.detection_generator
            cfg = dict(gen.tflite_post_processing.as_dict())
            cfg.update(
                max_detections=int(gen.max_num_detections),
                max_classes_per_detection=1,
                detections_per_class=int(gen.max_num_detections),
                use_regular_nms=True,  # per-class NMS, like the SavedModel's
                nms_score_threshold=float(gen.pre_nms_score_threshold),
                nms_iou_threshold=float(gen.nms_iou_threshold),
                normalize_anchor_coordinates=False,
                omit_nms=False,
            )
            boxes, classes, det_scores, num = dg._generate_detections_tflite(  # noqa: SLF001
                raw["box_outputs"], scores, anchors, cfg, gen.box_coder_weights
            )
            scale = tf.constant([h, w, h, w], tf.float32)
            return {
                "detection_boxes": tf.clip_by_value(boxes / scale, 0.0, 1.0),
                "detection_scores": det_scores,
                "detection_classes": classes + 1.0,  # label-map ids (background column dropped)
                "num_detections": num,
            }

    _OD_MODULE = ODDetectionModule
    return ODDetectionModule


_OD_MODULE = None


def build_module(params, input_type: str = "image_tensor", batch_size: int | None = None):
    """An ``ODDetectionModule`` (model built by Model Garden for serving, weights not loaded)."""
    input_size = list(params.task.model.input_size[:2])
    cls = _module_class()
    return cls(
        params=params,
        batch_size=batch_size,
        input_image_size=input_size,
        input_type=input_type,
        input_name=INPUT_NAME,
    )


def padded_size(params) -> list[int]:
    from official.vision.ops import preprocess_ops

    size = list(params.task.model.input_size[:2])
    if params.task.train_data.parser.pad:
        return [int(v) for v in preprocess_ops.compute_padded_size(size, 2**params.task.model.max_level)]
    return size


def raw_to_original_normalized(boxes_px: np.ndarray, image_info: np.ndarray) -> np.ndarray:
    """NumPy twin of the in-graph conversion (tests and callers of raw Model Garden output).

    ``boxes_px`` [B, N, 4] yxyx in pixels of the resized model input; ``image_info`` [B, 4, 2]
    rows (original hw, resized hw, scale yx, offset yx).
    """
    scale = np.tile(image_info[:, 2:3, :], (1, 1, 2))
    orig = np.tile(image_info[:, 0:1, :], (1, 1, 2))
    return np.clip(boxes_px / scale / orig, 0.0, 1.0)


# --------------------------------------------------------------------------- TFLite helpers


def tflite_canvas(image: np.ndarray, input_size: Sequence[int], canvas_size: Sequence[int]) -> tuple[np.ndarray, float]:
    """RGB uint8 image -> (uint8 canvas [Hc, Wc, 3] for the .tflite model, scale applied).

    Resized to fit ``input_size`` keeping the aspect ratio (bilinear, as Model Garden),
    pasted top-left, padding filled with the mean colour. A box normalised to the canvas
    maps back to original pixels as ``box * canvas_size / scale``.
    """
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(input_size[0] / h, input_size[1] / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.empty((canvas_size[0], canvas_size[1], 3), np.uint8)
    canvas[...] = PAD_RGB
    if (nh, nw) == (h, w):
        resized = image
    else:
        resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    canvas[:nh, :nw] = resized[: canvas_size[0], : canvas_size[1]]
    return canvas, scale


def _calibration_files(spec: str) -> list[str]:
    p = Path(spec)
    if p.is_dir():
        files = sorted(str(f) for f in p.glob("train*.tfrecord*")) or sorted(
            str(f) for f in p.glob("*.tfrecord*")
        ) or sorted(str(f) for f in p.glob("*.record*"))
    elif p.is_file():
        files = [str(p)]
    else:
        import glob as _glob

        files = sorted(_glob.glob(spec))
    if not files:
        raise ExportError(f"--calibration-records {spec}: no TFRecord files found (expected e.g. data/records/)")
    return files


def iter_calibration_canvases(
    files: Sequence[str], input_size: Sequence[int], canvas_size: Sequence[int], limit: int
) -> Iterator[np.ndarray]:
    """Canvases [1, Hc, Wc, 3] uint8 from the records (the .tflite input), skipping undecodable ones."""
    import io

    from PIL import Image

    from od.io.example import decode_example
    from od.io.tfrecord import iter_records

    n = 0
    for rec in iter_records(files):
        if n >= limit:
            return
        try:
            ex = decode_example(rec)
            img = np.asarray(Image.open(io.BytesIO(ex.image_bytes)).convert("RGB"))
        except Exception as e:  # one bad record must not stop calibration
            warn(f"calibration: skipping a record in {files[0]}...: {e}")
            continue
        canvas, _ = tflite_canvas(img, input_size, canvas_size)
        n += 1
        yield canvas[None]
    if n == 0:
        raise ExportError(f"no usable images for int8 calibration in {', '.join(files)}")


def tflite_unsupported_message(model_dir: Path, header: dict) -> str:
    template = header.get("template") or header.get("config") or "this run's template"
    return (
        f"--tflite: {model_dir} is a Faster R-CNN model ({template}); Model Garden's TFLite detection "
        f"post-processing exists for the RetinaNet family only. Train with a RetinaNet template "
        f"({', '.join(TFLITE_TEMPLATES)}) to export TFLite; the SavedModel export works for every template."
    )


def convert_tflite(params, ckpt_path: str, mode: str, calibration: Iterator[np.ndarray] | None) -> bytes:
    """A .tflite flatbuffer for a RetinaNet-family config with weights from ``ckpt_path``."""
    import tensorflow as tf

    p = params.replace(task={"model": {"detection_generator": {"apply_nms": False, "decode_boxes": False}}})
    module = build_module(p, input_type="tflite", batch_size=1)
    tf.train.Checkpoint(model=module.model).read(ckpt_path).expect_partial()
    hc, wc = module._padded_size  # noqa: SLF001
    fn = tf.function(module.serve).get_concrete_function(tf.TensorSpec([1, hc, wc, 3], tf.uint8, name=INPUT_NAME))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], module)
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        if calibration is None:
            raise ExportError("--tflite int8 needs calibration images (--calibration-records DIR)")
        images = list(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([im] for im in images)
    try:
        return converter.convert()
    except Exception as e:  # the converter raises many types; name the step
        raise ExportError(f"TFLite conversion ({mode}) failed: {e}") from e


# --------------------------------------------------------------------------- export


def _versions() -> dict[str, str]:
    from importlib import metadata

    import tensorflow as tf

    def ver(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {"od": ver("od"), "tensorflow": tf.__version__, "tf-models-official": ver("tf-models-official")}


def export_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    checkpoint: str = "best",
    force: bool = False,
    tflite: str | None = None,
    calibration_records: str | None = None,
    calibration_images: int = 100,
    max_detections: int | None = None,
    score_threshold: float | None = None,
) -> dict:
    """Write ``out`` (atomically) and return the model.json dict plus ``export_dir``."""
    model_dir = Path(model_dir)
    out = Path(out)
    check_model_dir(model_dir)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it (the old export is left untouched)")
    if tflite is not None and tflite not in TFLITE_MODES:
        raise ExportError(f"--tflite {tflite}: choose one of {', '.join(TFLITE_MODES)}")

    from od.io.label_map import LabelMapError, read_label_map

    try:
        label_map = read_label_map(model_dir / "label_map.pbtxt")
    except LabelMapError as e:
        raise ExportError(str(e)) from e

    import tensorflow as tf
    from official.core import export_base

    params, header = load_model_dir(model_dir)
    retinanet = _is_retinanet(params)
    if tflite and not retinanet:
        raise ExportError(tflite_unsupported_message(model_dir, header))
    mg_classes = int(params.task.model.num_classes)
    if label_map.num_classes >= mg_classes:
        raise ExportError(
            f"{model_dir / 'label_map.pbtxt'} has ids up to {label_map.num_classes} but the model predicts "
            f"{mg_classes - 1} classes (num_classes={mg_classes} with background): label map and run do not match"
        )
    calib_files = None
    if tflite == "int8":
        spec = calibration_records or header.get("records") or header.get("records_dir")
        if not spec:
            raise ExportError("--tflite int8 needs --calibration-records DIR (TFRecords with a few hundred images)")
        if calibration_records is None:
            note_default("calibration records", spec)
        calib_files = _calibration_files(str(spec))

    ckpt = resolve_checkpoint(model_dir, checkpoint)
    eparams = export_params(params, max_detections, score_threshold)
    module = build_module(eparams)
    input_size = [int(v) for v in eparams.task.model.input_size[:2]]
    canvas = padded_size(eparams)
    gen = eparams.task.model.detection_generator

    info: dict[str, Any] = {
        "format": "od-export",
        "format_version": FORMAT_VERSION,
        "name": out.resolve().name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": str(model_dir.resolve()),
        "template": header.get("template"),
        "architecture": "retinanet" if retinanet else "faster_rcnn",
        "classes": [{"id": i, "name": n} for i, n in label_map.items],
        "num_classes": len(label_map),
        "input_size": input_size,
        "padded_input_size": canvas,
        "keep_aspect_ratio": bool(eparams.task.train_data.parser.keep_aspect_ratio),
        "checkpoint": {"path": str(Path(ckpt.path).resolve()), "kind": ckpt.kind, "step": ckpt.step},
        "max_detections": int(gen.max_num_detections),
        "score_threshold": float(gen.pre_nms_score_threshold),
        "nms_iou_threshold": float(gen.nms_iou_threshold),
        "signatures": {
            name: {
                "input": INPUT_NAME,
                "dtype": "uint8" if kind == "image_tensor" else "string",
                "shape": [None, None, None, 3] if kind == "image_tensor" else [None],
                "content": {
                    "image_tensor": "RGB images of one size per batch, any size",
                    "image_bytes": "encoded JPEG/PNG/BMP/GIF images (same size within a batch)",
                    "tf_example": "serialized tf.train.Example with image/encoded (same size within a batch)",
                }[kind],
            }
            for name, kind in SIGNATURES.items()
        },
        "outputs": {
            "detection_boxes": "float32 [batch, max_detections, 4] ymin, xmin, ymax, xmax normalised to the original image",
            "detection_scores": "float32 [batch, max_detections], sorted high to low",
            "detection_classes": "float32 [batch, max_detections] label-map ids",
            "num_detections": "float32 [batch] valid entries in the arrays above",
        },
        "versions": _versions(),
    }
    metrics_file = model_dir / "eval" / "metrics.json"
    if metrics_file.is_file():
        info["val_metrics"] = _metrics_summary(_read_json(metrics_file))
        mstep = (info["val_metrics"] or {}).get("step")
        if mstep is not None and ckpt.step is not None and mstep != ckpt.step:
            warn(
                f"{metrics_file} is for step {mstep} but the exported checkpoint is step {ckpt.step}; "
                f"re-run od.evaluate (or od.evaluate --model {out}) for metrics of this export"
            )
    else:
        info["val_metrics"] = None
        print(f"od: note: {metrics_file} not found (run od.evaluate); model.json has no val metrics", file=sys.stderr)
    best_info = model_dir / "best_ckpt" / "info.json"
    if ckpt.kind == "best" and best_info.is_file():
        info["best_checkpoint_eval"] = _read_json(best_info)

    try:
        with atomic_dir(out, force=force) as tmp:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an export is meant to be shared
            export_base.export(
                module,
                function_keys={kind: name for name, kind in SIGNATURES.items()},
                export_savedmodel_dir=str(tmp / "saved_model"),
                checkpoint_path=ckpt.path,
                timestamped=False,
            )
            shutil.copyfile(model_dir / "label_map.pbtxt", tmp / "label_map.pbtxt")
            shutil.copyfile(model_dir / "pipeline.yaml", tmp / "pipeline.yaml")
            if tflite:
                calib = None
                if calib_files is not None:
                    calib = iter_calibration_canvases(calib_files, input_size, canvas, calibration_images)
                blob = convert_tflite(eparams, ckpt.path, tflite, calib)
                (tmp / TFLITE_FILE).write_bytes(blob)
                info["tflite"] = {
                    "file": TFLITE_FILE,
                    "mode": tflite,
                    "input": INPUT_NAME,
                    "input_dtype": "uint8",
                    "input_shape": [1, canvas[0], canvas[1], 3],
                    "preprocess": (
                        f"resize the RGB image to fit {input_size[0]}x{input_size[1]} keeping its aspect ratio "
                        f"(bilinear), paste it top-left on a {canvas[0]}x{canvas[1]} canvas filled with "
                        f"RGB {list(PAD_RGB)} (od.export.tflite_canvas)"
                    ),
                    "boxes": "normalised to the canvas: original pixels = box * canvas size / resize scale",
                    "calibration_images": calibration_images if tflite == "int8" else None,
                }
            else:
                info["tflite"] = None
            (tmp / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    except FileExistsError as e:
        raise ExportError(f"{e} (the old export is left untouched)") from e
    except AssertionError as e:
        raise ExportError(
            f"checkpoint {ckpt.path} does not fit the model in {model_dir / 'pipeline.yaml'}: {str(e)[:300]}"
        ) from e
    except tf.errors.OpError as e:
        raise ExportError(f"cannot read checkpoint {ckpt.path}: {e.message[:300]}") from e
    info["export_dir"] = str(out)
    return info


def print_summary(info: dict) -> None:
    ck = info["checkpoint"]
    rows = [
        ("export", info["export_dir"]),
        ("architecture", info["architecture"]),
        ("checkpoint", f"{Path(ck['path']).name} ({ck['kind']}, step {ck['step']})"),
        ("classes", ", ".join(f"{c['id']}:{c['name']}" for c in info["classes"])),
        ("input size", "x".join(map(str, info["input_size"])) + " (any image size accepted)"),
        ("signatures", ", ".join(info["signatures"]) + f" (input: {INPUT_NAME})"),
        ("max detections", info["max_detections"]),
        ("score threshold", info["score_threshold"]),
    ]
    vm = info.get("val_metrics")
    if isinstance(vm, dict):
        for key in ("AP50", "AP", "ap50", "ap"):
            if isinstance(vm.get(key), (int, float)):
                rows.append((f"val {key}", f"{vm[key]:.4f}"))
    if info.get("tflite"):
        rows.append(("tflite", f"{info['tflite']['file']} ({info['tflite']['mode']})"))
    print_table(["item", "value"], rows)


if __name__ == "__main__":
    sys.exit(main())
