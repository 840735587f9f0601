"""``python -m od.export``: a model dir's checkpoint -> exported/<name>/ (SavedModel speaking the OD API,
label map, pipeline.yaml, model.json; optionally a .tflite file).

The serving graph is :mod:`od.model.serving` (Model Garden's ``DetectionModule`` with OD API outputs),
TFLite is :mod:`od.model.tflite`; this module checks, assembles the folder atomically and says what it wrote.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from od.console import EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.io.files import atomic_dir, read_file
from od.io.schema import METRICS_FILE, MODEL_FILE, SchemaError, metrics_summary, read_metrics, write_model_json
from od.model.errors import ConfigError
from od.model.templates import task_of
from od.model.model_dir import BEST_DIR, EVAL_DIR
from od.model.serving import INPUT_NAME, SIGNATURES
from od.model.tflite import PAD_RGB, TFLITE_FILE, TFLITE_MODES
from od.options import (
    add_common,
    add_force,
    add_max_detections,
    add_score_threshold,
    positive_int,
    quiet_tensorflow,
)


LABELS_FILE = "labels.txt"


class ExportError(ConfigError):
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
    try:
        result = export_model(
            model_dir,
            out,
            checkpoint=args.checkpoint,
            force=args.force,
            tflite=args.tflite,
            calibration_records=args.calibration_records,
            calibration_images=args.calibration_images,
            max_detections=args.max_detections,
            score_threshold=args.score_threshold,
        )
    except (ConfigError, SchemaError) as e:
        error(str(e))
        return EXIT_USAGE
    print_summary(result)
    return EXIT_OK


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
    checkpoint: str | None = None,
    force: bool = False,
    tflite: str | None = None,
    calibration_records: str | None = None,
    calibration_images: int = 100,
    max_detections: int | None = None,
    score_threshold: float | None = None,
) -> dict:
    """Write ``out`` (atomically) and return the model.json dict plus ``export_dir``."""
    from od.model.model_dir import check_model_dir, choose_checkpoint, load_model_dir
    from od.model.serving import build_module, export_params, is_retinanet, padded_size
    from od.model.tflite import calibration_files, convert_tflite, iter_calibration_canvases, tflite_unsupported_message

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
    classifier = task_of(params) == "classification"
    retinanet = not classifier and is_retinanet(params)
    if tflite and classifier:
        raise ExportError(f"--tflite is for detection exports; {model_dir} is a classifier (its SavedModel is exported)")
    if tflite and not retinanet:
        raise ExportError(tflite_unsupported_message(model_dir, header))
    mg_classes = int(params.task.model.num_classes)
    if classifier and label_map.num_classes != mg_classes:
        raise ExportError(
            f"{model_dir / 'label_map.pbtxt'} has {label_map.num_classes} classes but the classifier predicts "
            f"{mg_classes}: label map and run do not match"
        )
    if not classifier and label_map.num_classes >= mg_classes:
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
        calib_files = calibration_files(str(spec))

    ckpt = choose_checkpoint(model_dir, checkpoint)
    info: dict[str, Any] = {
        "name": out.resolve().name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": str(model_dir.resolve()),
        "template": header.get("template"),
        "task": "classification" if classifier else "detection",
    }
    if classifier:
        if max_detections is not None or score_threshold is not None:
            raise ExportError("--max-detections / --score-threshold are detection settings; a classifier returns "
                              "every class's probability (od.classify --top-k / --score-threshold choose what to show)")
        from od.model.classifier import build_classification_module

        eparams = params
        module = build_classification_module(params)
        input_size = [int(v) for v in params.task.model.input_size[:2]]
        info.update(architecture=f"classifier ({params.task.model.backbone.type})", input_size=input_size,
                    labels_file=LABELS_FILE)
        outputs = {
            "probabilities": "float32 [batch, num_classes] softmax; column i is labels.txt line i (label-map id i+1)",
            "classes": "int64 [batch] the most likely column (labels.txt line, label-map id - 1)",
        }
        preprocess = f"centre crop {params.task.validation_data.center_crop_fraction} of the shorter side, resize to " \
                     f"{input_size[0]}x{input_size[1]} (bilinear), in the graph"
        info["preprocess"] = preprocess
    else:
        eparams = export_params(params, max_detections, score_threshold)
        module = build_module(eparams)
        input_size = [int(v) for v in eparams.task.model.input_size[:2]]
        canvas = padded_size(eparams)
        gen = eparams.task.model.detection_generator
        info.update(
            architecture="retinanet" if retinanet else "faster_rcnn",
            input_size=input_size,
            padded_input_size=canvas,
            keep_aspect_ratio=bool(eparams.task.train_data.parser.keep_aspect_ratio),
            max_detections=int(gen.max_num_detections),
            score_threshold=float(gen.pre_nms_score_threshold),
            nms_iou_threshold=float(gen.nms_iou_threshold),
        )
        outputs = {
            "detection_boxes": "float32 [batch, max_detections, 4] ymin, xmin, ymax, xmax normalised to the original image",
            "detection_scores": "float32 [batch, max_detections], sorted high to low",
            "detection_classes": "float32 [batch, max_detections] label-map ids",
            "num_detections": "float32 [batch] valid entries in the arrays above",
        }
    info.update({
        "classes": [{"id": i, "name": n} for i, n in label_map.items],
        "num_classes": len(label_map),
        "checkpoint": {"path": str(Path(ckpt.path).resolve()), "kind": ckpt.kind, "step": ckpt.step},
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
        "outputs": outputs,
        "versions": _versions(),
    })
    metrics_file = model_dir / EVAL_DIR / METRICS_FILE
    if metrics_file.is_file():
        try:
            info["val_metrics"] = metrics_summary(read_metrics(metrics_file))
        except SchemaError as e:
            warn(f"{e}; model.json gets no val metrics")
            info["val_metrics"] = None
        mstep = (info["val_metrics"] or {}).get("step")
        if mstep is not None and ckpt.step is not None and mstep != ckpt.step:
            warn(
                f"{metrics_file} is for step {mstep} but the exported checkpoint is step {ckpt.step}; "
                f"re-run od.evaluate (or od.evaluate --model {out}) for metrics of this export"
            )
    else:
        info["val_metrics"] = None
        print(f"od: note: {metrics_file} not found (run od.evaluate); model.json has no val metrics", file=sys.stderr)
    best_info = model_dir / BEST_DIR / "info.json"  # Model Garden's note of the best evaluation
    if ckpt.kind == "best" and best_info.is_file():
        try:
            info["best_checkpoint_eval"] = json.loads(read_file(best_info))
        except (OSError, ValueError) as e:
            warn(f"cannot read {best_info}: {e}; leaving it out of model.json")

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
            if classifier:  # what label_image.py reads: one class a line, in label order
                (tmp / LABELS_FILE).write_text("".join(f"{n}\n" for _, n in label_map.items), encoding="utf-8")
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
            write_model_json(tmp / MODEL_FILE, info)
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
        ("outputs", ", ".join(info["outputs"])),
    ]
    if info.get("task") == "classification":
        rows.append(("labels", f"{info['labels_file']} (line i = probabilities column i)"))
    else:
        rows += [("max detections", info["max_detections"]), ("score threshold", info["score_threshold"])]
    vm = info.get("val_metrics")
    if isinstance(vm, dict):
        for key in ("top1", "top5", "AP50", "AP"):
            if isinstance(vm.get(key), (int, float)):
                rows.append((f"val {key}", f"{vm[key]:.4f}"))
    if info.get("tflite"):
        rows.append(("tflite", f"{info['tflite']['file']} ({info['tflite']['mode']})"))
    print_table(["item", "value"], rows)


if __name__ == "__main__":
    sys.exit(main())
