"""``python -m od.evaluate`` — detection metrics and plots for a trained model dir or an export.

The CLI reads the split's records, runs the model through :mod:`od.model.inference` (a checkpoint
in the serving graph od.export saves, or an export's ``serving_default``), computes the
metrics with :func:`od.metrics.detection.compute_metrics` (pure numpy/pycocotools; its
conventions are written into metrics.json under ``notes``), then writes ``eval/metrics.json``
and the PNGs of :mod:`od.viz.evaluation`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.io.schema import METRICS_FILE, SchemaError, classes_list, read_metrics, split_files, write_json, write_metrics
from od.metrics.boxes import ImageGroundTruth, ImagePredictions
from od.metrics.detection import PER_CLASS_HEADERS, compute_metrics, per_class_rows, public_metrics
from od.model.errors import ConfigError
from od.model.inference import Detector
from od.model.model_dir import EVAL_DIR
from od.model.source import resolve_model
from od.options import (add_common, add_force, add_gallery, add_max_detections, add_runtime, add_score_threshold, fraction,
                        quiet_tensorflow)
from od.viz.evaluation import GalleryItem, write_plots


@dataclass
class EvalData:
    ground_truths: list[ImageGroundTruth]
    predictions: list[ImagePredictions]
    gallery: list[GalleryItem]
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    dropped_predictions: int = 0


def collect(
    detector: Detector,
    files: Sequence[str],
    classes: Mapping[int, str],
    *,
    gallery_size: int = 6,
    progress: bool = True,
) -> EvalData:
    """Run ``detector`` over the records; ground truth decoded from the same records."""
    from od.io.example import ExampleError, decode_example
    from od.io.tfrecord import count_records
    from od.model.inference import iter_record_images, valid_outputs

    gts: list[ImageGroundTruth] = []
    preds: list[ImagePredictions] = []
    gallery: list[GalleryItem] = []
    skipped: list[str] = []
    dropped = 0
    seen: set[str] = set()
    by_name = {name: cid for cid, name in classes.items()}
    total = count_records(files)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="od: evaluating", unit="img", file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    for n, (serialized, image) in enumerate(iter_record_images(files)):
        if bar is not None:
            bar.update(1)
        h, w = image.shape[:2]
        yxyx, scores, cls = valid_outputs(detector.raw(image))
        yxyx = yxyx * np.array([h, w, h, w], np.float64)
        try:
            ex = decode_example(serialized)
        except ExampleError as e:
            skipped.append(f"record #{n}: {e}")
            continue
        image_id = ex.source_id or ex.filename or f"#{n}"
        if image_id in seen:
            image_id = f"{image_id}#{n}"
        seen.add(image_id)
        label = ex.filename or image_id
        if ex.width > 0 and ex.height > 0 and (ex.width, ex.height) != (w, h):
            warn(f"{label}: record says {ex.width}x{ex.height}, image decodes to {w}x{h}; using the image")
        yx = ex.boxes_yxyx.astype(np.float64)
        gt_boxes = np.stack([yx[:, 1] * w, yx[:, 0] * h, yx[:, 3] * w, yx[:, 2] * h], axis=1) if len(yx) else np.zeros((0, 4))
        class_ids = ex.class_ids
        if (class_ids == 0).any():  # records without labels (old tools): take the class text
            class_ids = np.array(
                [by_name.get(t, 0) if c == 0 else c for c, t in zip(class_ids, ex.class_texts)], dtype=np.int64
            )
        unknown = sorted({int(c) for c in class_ids} - set(classes))
        if unknown:
            skipped.append(f"{label}: class ids {unknown} not in the label map")
            continue
        gt = ImageGroundTruth(image_id, gt_boxes, class_ids, ex.difficult, width=w, height=h)
        ok = np.isin(cls, list(classes))
        dropped += int((~ok).sum())
        yxyx, scores, cls = np.asarray(yxyx)[ok], np.asarray(scores)[ok], np.asarray(cls)[ok]
        px = np.stack([yxyx[:, 1], yxyx[:, 0], yxyx[:, 3], yxyx[:, 2]], axis=1) if len(yxyx) else np.zeros((0, 4))
        pred = ImagePredictions(image_id, px, scores, cls)
        gts.append(gt)
        preds.append(pred)
        if len(gallery) < gallery_size:
            gallery.append(GalleryItem(label, ex.image_bytes, gt, pred))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    seen_records = len(gts) + len(skipped)
    if total > seen_records:
        skipped.append(
            f"{total - seen_records} of {total} records: image could not be decoded "
            "(check them with `python -m od.inspect`)"
        )
    return EvalData(gts, preds, gallery, seconds, skipped, dropped)


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


def predictions_json(data: EvalData, classes: Mapping[int, str]) -> dict:
    return {
        "boxes": "pixels xmin ymin xmax ymax of the original image",
        "images": [
            {
                "image_id": p.image_id,
                "width": g.width,
                "height": g.height,
                "detections": [
                    {"class_id": int(c), "class_name": classes.get(int(c), str(c)), "score": round(float(s), 6),
                     "box": [round(float(v), 3) for v in b]}
                    for b, s, c in zip(p.boxes, p.scores, p.class_ids)
                ],
            }
            for g, p in zip(data.ground_truths, data.predictions)
        ],
    }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m od.evaluate",
        description="COCO AP/AP50/AP75/AR@100, per-class AP and Pascal VOC AP@0.5 of a trained model "
        "(checkpoint in a model dir, or an exported SavedModel) on the val/test records; writes "
        "metrics.json and plots (learning curves, PR curves, confusion matrix, gallery).",
    )
    ap.add_argument("--model-dir", help="od model dir (runs/NAME) with pipeline.yaml and checkpoints")
    ap.add_argument("--checkpoint", help="best (default when best_ckpt/ exists), latest, or a checkpoint path")
    ap.add_argument("--model", help="evaluate an exported model (exported/NAME) instead of a checkpoint")
    add_runtime(ap)
    ap.add_argument("--records", help="records dir (default: the one the model was trained on), or a file/glob")
    ap.add_argument("--split", default="val", choices=("val", "test", "train"), help="which split's shards (default val)")
    ap.add_argument("--label-map", help="label map (default: the model dir's / export's label_map.pbtxt)")
    ap.add_argument("--out", help="output dir (default MODEL_DIR/eval, or MODEL/eval with --model)")
    add_force(ap, "an evaluation in --out of another model, checkpoint or records (one of the same is refreshed)")
    add_score_threshold(ap, 0.5, "for the confusion matrix and gallery; AP uses every box (default 0.5)")
    add_max_detections(ap, "applied before computing the metrics (default: all the model returns)")
    ap.add_argument("--iou-threshold", type=fraction(lo_open=True), default=0.5,
                    help="VOC AP / confusion matrix IoU, in (0, 1] (default 0.5)")
    add_gallery(ap, 6, "gallery.png")
    ap.add_argument("--no-plots", action="store_true", help="metrics.json only")
    ap.add_argument("--save-predictions", action="store_true", help="also write predictions.json (pixel boxes)")
    add_common(ap)
    return ap


_SAME_RUN = ("model_dir", "exported", "runtime", "checkpoint", "split", "records")


def _check_earlier(out_dir: Path, info: Mapping[str, Any], force: bool) -> None:
    """An earlier metrics.json of another model, checkpoint or records is replaced only with --force."""
    try:
        earlier = read_metrics(out_dir / METRICS_FILE) if (out_dir / METRICS_FILE).exists() else None
    except SchemaError:
        earlier = None  # not od.evaluate's: only --force replaces it
        if not force:
            raise ConfigError(f"{out_dir / METRICS_FILE} was not written by od.evaluate; pass --force to replace "
                              "it, or --out DIR") from None
    if not earlier:
        return
    if all(earlier.get(k) == info.get(k) for k in _SAME_RUN):
        print(f"od: refreshing the earlier evaluation of the same model and records in {out_dir}", file=sys.stderr)
        return
    was = earlier.get("exported") or f"{earlier.get('checkpoint')} (step {earlier.get('step')})"
    if not force:
        raise ConfigError(f"{out_dir / METRICS_FILE} holds the evaluation of {was} on other records or of "
                        "another model; pass --force to replace it, or --out DIR to keep both")
    warn(f"--force: replacing the evaluation of {was} in {out_dir}")


def _top(p: ImagePredictions, n: int) -> ImagePredictions:
    """--max-detections: the ``n`` highest-scoring boxes of one image."""
    keep = np.argsort(-p.scores, kind="stable")[:n]
    return ImagePredictions(p.image_id, p.boxes[keep], p.scores[keep], p.class_ids[keep])


def _run(args: argparse.Namespace) -> int:
    from od.io.label_map import LabelMapError, read_label_map

    from od.model.model_dir import load_model_dir

    model_dir = args.model_dir
    export_dir = args.model
    params = header = None
    source = model_json = None
    runtime = None
    if export_dir:
        source = resolve_model(export_dir)
        runtime = source.runtime(args.runtime)
        export_dir = str(source.export_dir or source.saved_model)
        model_json = source.model_json
        if not model_dir and model_json.get("model_dir") and os.path.isdir(model_json["model_dir"]):
            model_dir = model_json["model_dir"]
    if model_dir:
        try:
            params, header = load_model_dir(model_dir)
        except ConfigError as e:
            if not export_dir:
                raise
            warn(f"{e}; evaluating the export without it (no learning curves)")
            model_dir = None

    # Label map: --label-map, then the export's / model dir's copy, then the header's.
    candidates = [args.label_map] if args.label_map else [
        *( [os.path.join(export_dir, "label_map.pbtxt")] if export_dir else []),
        *( [os.path.join(model_dir, "label_map.pbtxt")] if model_dir else []),
        *( [str(header["label_map"])] if header and header.get("label_map") else []),
    ]
    lm_path = next((c for c in candidates if c and os.path.isfile(c)), None)
    if lm_path is None:
        raise ConfigError(f"no label map found (tried {', '.join(candidates) or 'nothing'}); pass --label-map PATH")
    if not args.label_map:
        note_default("label map", lm_path)
    try:
        label_map = read_label_map(lm_path)
    except (LabelMapError, OSError) as e:
        raise ConfigError(str(e)) from None
    classes = dict(label_map.items)
    from od.model.templates import task_of

    task = task_of(params) if params is not None and not export_dir else (model_json or {}).get("task", "detection")
    if task == "classification" and params is not None and not export_dir:
        if params.task.model.num_classes != label_map.num_classes:
            raise ConfigError(
                f"the classifier has num_classes={params.task.model.num_classes} but {lm_path} has "
                f"{label_map.num_classes} classes; pass the label map the model was trained with (--label-map)"
            )
    elif params is not None and not export_dir and params.task.model.num_classes != label_map.num_classes + 1:
        raise ConfigError(
            f"the model has num_classes={params.task.model.num_classes} but {lm_path} has "
            f"{label_map.num_classes} classes (needs {label_map.num_classes + 1} incl. background); "
            "pass the label map the model was trained with (--label-map)"
        )

    # Records: --records, then the dir the model was trained on.
    records = args.records
    if not records:
        if header and header.get("records"):
            records = str(header["records"])
        elif params is not None and params.task.validation_data.input_path:
            paths = params.task.validation_data.input_path
            first = paths[0] if isinstance(paths, (list, tuple)) else str(paths).split(",")[0]
            records = os.path.dirname(str(first))
        else:
            raise ConfigError("which records? pass --records DIR")
        note_default("records", records)
    files = split_files(records, args.split)

    # The SavedModel and the .tflite file of one export each get their own default folder.
    default_eval = EVAL_DIR + ("-tflite" if runtime == "tflite" else "")
    out_dir = Path(args.out) if args.out else Path(export_dir or model_dir) / default_eval
    if not args.out:
        note_default("output dir", out_dir)

    info: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_dir": model_dir,
        "exported": export_dir,
        "runtime": runtime,
        "checkpoint": None,
        "checkpoint_choice": None,
        "step": None,
        "split": args.split if Path(records).is_dir() else None,  # a file/glob is taken whole
        "records": files,
        "label_map": lm_path,
        "classes": classes_list(label_map.items),
    }
    if source is not None:
        ck = model_json.get("checkpoint")
        if ck:
            info.update(checkpoint=ck["path"], checkpoint_choice=ck.get("kind"), step=ck.get("step"))
    else:
        from od.model.model_dir import choose_checkpoint

        ckpt = choose_checkpoint(model_dir, args.checkpoint)
        info.update(checkpoint=ckpt.path, checkpoint_choice=ckpt.kind, step=ckpt.step)
    _check_earlier(out_dir, info, args.force)  # before the seconds a model load takes
    if task == "classification":
        return _evaluate_classifier(args, source, params, info, classes, out_dir)
    if source is not None:
        detector = Detector.load(source, classes, runtime)
    else:
        detector = Detector.from_checkpoint(params, info["checkpoint"], classes)
    data = collect(
        detector, files, classes, gallery_size=0 if args.no_plots else max(0, args.gallery), progress=not args.quiet,
    )
    if args.max_detections:
        data.predictions = [_top(p, args.max_detections) for p in data.predictions]
    for s in data.skipped:
        warn(f"skipped {s}")
    if data.dropped_predictions:
        warn(f"dropped {data.dropped_predictions} predictions with class ids not in {lm_path}")
    if not data.ground_truths:
        raise ConfigError(f"no usable images in {', '.join(files)}")

    metrics = compute_metrics(
        data.ground_truths, data.predictions, classes,
        iou_threshold=args.iou_threshold, score_threshold=args.score_threshold,
    )
    result = {**info, **public_metrics(metrics)}
    result["seconds"] = round(data.seconds, 2)
    result["images_per_second"] = round(len(data.ground_truths) / data.seconds, 3) if data.seconds > 0 else None
    result["skipped"] = data.skipped

    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        result["plots"] = write_plots(
            metrics, out_dir, model_dir=model_dir, gallery=data.gallery, classes=classes,
            score_threshold=args.score_threshold,
        )
    if args.save_predictions:
        write_json(out_dir / "predictions.json", predictions_json(data, classes))
    write_metrics(out_dir / METRICS_FILE, result)

    what = f"export {export_dir}" if export_dir else f"{info['checkpoint']} (step {info['step']})"
    split = f"{args.split} images" if Path(records).is_dir() else f"images of {records}"
    print(f"od: {what} on {len(data.ground_truths)} {split} ({result['images_per_second']} img/s)")
    print_table(PER_CLASS_HEADERS, per_class_rows(metrics))
    print(f"od: AR@100 {_fmt(metrics['AR100'])}; wrote {out_dir / 'metrics.json'}"
          + (f" and {len(result.get('plots', {}))} plots" if not args.no_plots else ""))
    return EXIT_FAILURES if data.skipped else EXIT_OK


def collect_classifications(classifier, files: Sequence[str], *, progress: bool = True):
    """(true labels, probabilities [N, C], captions, image bytes, skipped) over classification records."""
    from od.io.example import ExampleError, decode_classification_example
    from od.io.tfrecord import count_records
    from od.model.inference import iter_record_images

    labels, probs, captions, images, skipped = [], [], [], [], []
    total = count_records(files)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="od: evaluating", unit="img", file=sys.stderr, dynamic_ncols=True)
    n_classes = len(classifier.labels)
    for n, (serialized, image) in enumerate(iter_record_images(files)):
        if bar is not None:
            bar.update(1)
        try:
            ex = decode_classification_example(serialized)
        except ExampleError as e:
            skipped.append(f"record #{n}: {e}")
            continue
        name = ex.filename or ex.source_id or f"#{n}"
        if not 0 <= ex.label < n_classes:
            skipped.append(f"{name}: label {ex.label} is not one of the model's {n_classes} classes")
            continue
        labels.append(ex.label)
        probs.append(classifier.probabilities(image))
        captions.append(name)
        images.append(ex.image_bytes)
    if bar is not None:
        bar.close()
    seen = len(labels) + len(skipped)
    if total > seen:
        skipped.append(f"{total - seen} of {total} records: image could not be decoded "
                       "(check them with `python -m od.inspect`)")
    return np.asarray(labels, np.int64), np.asarray(probs, np.float64).reshape(len(labels), n_classes), \
        captions, images, skipped


def _evaluate_classifier(args, source, params, info: dict, classes: Mapping[int, str], out_dir: Path) -> int:
    """Top-1 / top-5, per-class precision / recall / F1, confusion matrix, curves and a mistakes-first gallery."""
    from od.metrics.classification import compute_classification_metrics, mistakes_first, per_class_rows
    from od.model.classifier import Classifier
    from od.viz.classification import ClassificationGalleryItem, write_classification_plots

    if source is not None:
        classifier = Classifier.load(source, dict(classes))
    else:
        classifier = Classifier.from_checkpoint(params, info["checkpoint"], dict(classes))
    t0 = time.perf_counter()
    labels, probs, captions, images, skipped = collect_classifications(
        classifier, info["records"], progress=not args.quiet)
    seconds = time.perf_counter() - t0
    for s in skipped:
        warn(f"skipped {s}")
    if not len(labels):
        raise ConfigError(f"no usable images in {', '.join(info['records'])}")
    metrics = compute_classification_metrics(labels, probs, classifier.labels)
    result = {**info, **metrics, "seconds": round(seconds, 2),
              "images_per_second": round(len(labels) / seconds, 3) if seconds > 0 else None, "skipped": skipped}
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        pred = probs.argmax(axis=1)
        gallery = [
            ClassificationGalleryItem(captions[i], images[i], classifier.labels[labels[i]],
                                      classifier.labels[pred[i]], float(probs[i, pred[i]]))
            for i in mistakes_first(labels, probs)[: max(0, args.gallery)]
        ]
        result["plots"] = write_classification_plots(metrics, out_dir, model_dir=info["model_dir"], gallery=gallery)
    if args.save_predictions:
        write_json(out_dir / "predictions.json", {
            "labels": classifier.labels,
            "images": [{"image": c, "label": int(t), "probabilities": [round(float(v), 6) for v in p]}
                       for c, t, p in zip(captions, labels, probs)],
        })
    write_metrics(out_dir / METRICS_FILE, result)
    what = f"export {info['exported']}" if info["exported"] else f"{info['checkpoint']} (step {info['step']})"
    print(f"od: {what} on {len(labels)} {args.split} images ({result['images_per_second']} img/s)")
    headers, rows = per_class_rows(metrics)
    print_table(headers, rows)
    top5 = f", top-5 {_fmt(metrics['top5'])}" if metrics.get("top5") is not None else ""
    print(f"od: top-1 accuracy {_fmt(metrics['top1'])}{top5}; wrote {out_dir / METRICS_FILE}"
          + (f" and {len(result.get('plots', {}))} plots" if not args.no_plots else ""))
    return EXIT_FAILURES if skipped else EXIT_OK


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_tensorflow(args.verbose)
    if not args.model_dir and not args.model:
        error("pass --model-dir runs/NAME (a trained model) or --model exported/NAME (an export)")
        return EXIT_USAGE
    if args.model and args.checkpoint:
        error("--checkpoint applies to --model-dir; an export has its checkpoint baked in")
        return EXIT_USAGE
    try:
        return _run(args)
    except (ConfigError, SchemaError) as e:
        error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
