"""``python -m od.evaluate`` — detection metrics and plots for a trained model dir or an export.

The CLI reads the split's records, runs the model (a checkpoint through Model Garden's own
inference path, or an exported SavedModel's ``serving_default`` signature), computes the
metrics with :func:`od.metrics.detection.compute_metrics` (pure numpy/pycocotools; its
conventions are written into metrics.json under ``notes``), then writes ``eval/metrics.json``
and the PNGs of :mod:`od.viz.evaluation`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from od.console import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, error, note_default, print_table, warn
from od.io.files import atomic_write_text
from od.metrics.boxes import ImageGroundTruth, ImagePredictions
from od.metrics.detection import PER_CLASS_HEADERS, compute_metrics, per_class_rows, public_metrics
from od.options import (add_common, add_force, add_gallery, add_max_detections, add_score_threshold, fraction,
                        positive_int, quiet_tensorflow)
from od.viz.evaluation import GalleryItem, write_plots

METRICS_VERSION = 1


# --------------------------------------------------------------------------------------
# Records, checkpoints, inference (TensorFlow imported lazily, after argument parsing)
# --------------------------------------------------------------------------------------


class EvalError(Exception):
    """A problem with the user's input; the message says what to do."""


@dataclass
class EvalData:
    ground_truths: list[ImageGroundTruth]
    predictions: list[ImagePredictions]
    gallery: list[GalleryItem]
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    dropped_predictions: int = 0


def _glob_chars(s: str) -> bool:
    return any(c in s for c in "*?[")


def find_split_files(records: str, split: str) -> list[str]:
    """Record files of ``split``: DIR holds ``{split}-NNNNN-of-MMMMM.tfrecord`` shards; a file or
    glob is taken as is (e.g. a ``test.record`` written by the OD API tools)."""
    if _glob_chars(records):
        files = sorted(glob.glob(records))
    elif Path(records).is_file():
        files = [records]
    elif Path(records).is_dir():
        from od.io.schema import shard_pattern

        files = sorted(glob.glob(os.path.join(records, shard_pattern(split))))
        if not files:
            present = sorted(p.name for p in Path(records).iterdir() if p.suffix in (".tfrecord", ".record"))
            raise EvalError(
                f"no {split} records ({shard_pattern(split)}) in {records}"
                + (f"; found {', '.join(present[:6])}" if present else "")
                + "; write them with `python -m od.records`, or pass --records FILE_OR_GLOB"
            )
    else:
        raise EvalError(f"{records}: no such records directory, file or glob")
    if not files:
        raise EvalError(f"{records}: matches no record files")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty:
        raise EvalError(f"empty record file(s): {', '.join(empty)}; re-run `python -m od.records`")
    return files


def list_checkpoints(model_dir: str) -> list[str]:
    return sorted(
        (str(p)[: -len(".index")] for p in Path(model_dir).glob("**/*.index")),
        key=lambda s: (len(s), s),
    )


def resolve_checkpoint(model_dir: str, choice: str | None) -> tuple[str, str]:
    """-> (checkpoint prefix, how it was chosen). ``best`` is Model Garden's best_ckpt/ (AP50)."""
    import tensorflow as tf

    best_dir = os.path.join(model_dir, "best_ckpt")
    if choice in (None, "best"):
        best = tf.train.latest_checkpoint(best_dir) if os.path.isdir(best_dir) else None
        if best:
            if choice is None:
                note_default("checkpoint", f"best ({best})")
            return best, "best"
        if choice == "best":
            raise EvalError(
                f"no best checkpoint in {best_dir} (it is written when validation runs during training); "
                "use --checkpoint latest or a path"
            )
    if choice in (None, "latest", "best"):
        latest = tf.train.latest_checkpoint(model_dir)
        if not latest:
            raise EvalError(
                f"no checkpoint in {model_dir}; train first (`python -m od.train`) or pass --checkpoint PATH"
            )
        if choice is None:
            note_default("checkpoint", f"latest ({latest}; no best_ckpt/ yet)")
        return latest, "latest"
    path = choice
    if os.path.isdir(path):
        found = tf.train.latest_checkpoint(path)
        if not found:
            raise EvalError(f"{path}: directory holds no checkpoint (no 'checkpoint' file / ckpt-N.index)")
        return found, "path"
    if not os.path.exists(path + ".index"):
        have = list_checkpoints(model_dir)
        raise EvalError(
            f"checkpoint {path} not found (no {path}.index)"
            + (f"; checkpoints in {model_dir}: {', '.join(have[-6:])}" if have else "")
        )
    return path, "path"


def checkpoint_step(path: str) -> int | None:
    import tensorflow as tf

    try:
        for name, _ in tf.train.list_variables(path):
            if name.startswith("global_step/"):
                return int(tf.train.load_variable(path, name))
    except (tf.errors.OpError, ValueError):
        pass
    tail = os.path.basename(path).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _model_input(params) -> tuple[list[int], list[int], bool]:
    from official.vision.ops import preprocess_ops

    model = params.task.model
    size = list(model.input_size[:2])
    parser = params.task.validation_data.parser
    pad = getattr(parser, "pad", True)
    padded = preprocess_ops.compute_padded_size(size, 2 ** model.max_level) if pad else size
    return size, [int(v) for v in padded], bool(getattr(parser, "keep_aspect_ratio", True))


class CheckpointPredictor:
    """Model Garden's inference path on a restored checkpoint: the eval parser's normalise +
    resize-and-pad, the model at ``training=False``, boxes mapped back to original pixels."""

    def __init__(self, params, checkpoint: str):
        import tensorflow as tf
        from official.core import task_factory
        from official.vision.ops import anchor, preprocess_ops

        self.params = params
        task = task_factory.get_task(params.task)
        self.model = task.build_model()
        try:
            status = tf.train.Checkpoint(model=self.model).read(checkpoint).expect_partial()
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise EvalError(
                f"checkpoint {checkpoint} does not fit the model in pipeline.yaml "
                f"(was the model dir trained with a different config?): {str(e)[:300]}"
            ) from None
        size, padded, keep_ar = _model_input(params)
        m = params.task.model
        anchors = anchor.build_anchor_generator(
            min_level=m.min_level, max_level=m.max_level, num_scales=m.anchor.num_scales,
            aspect_ratios=m.anchor.aspect_ratios, anchor_size=m.anchor.anchor_size,
        )(image_size=padded)

        def preprocess(serialized):
            feats = tf.io.parse_single_example(serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            image = tf.io.decode_image(feats["image/encoded"], channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            # Float pixels in [0, 255] need the 0-255 mean/std (the default pair is for [0, 1]).
            x = preprocess_ops.normalize_image(
                tf.cast(image, tf.float32), offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB
            )
            x, info = preprocess_ops.resize_and_crop_image(
                x, size, padded_size=padded, aug_scale_min=1.0, aug_scale_max=1.0, keep_aspect_ratio=keep_ar
            )
            x.set_shape(padded + [3])
            return serialized, x, info

        self.preprocess = preprocess

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, *padded, 3], tf.float32),
                tf.TensorSpec([None, 4, 2], tf.float32),
            ]
        )
        def infer(images, image_info):
            n = tf.shape(images)[0]
            batch_anchors = {
                k: tf.tile(tf.expand_dims(v, 0), [n, 1, 1, 1]) for k, v in anchors.items()
            }
            out = self.model(
                images, image_shape=image_info[:, 1, :], anchor_boxes=batch_anchors, training=False
            )
            # Boxes are in the resized image's pixels: divide by the scale -> original pixels.
            scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
            boxes = out["detection_boxes"] / scale
            hw = tf.tile(image_info[:, 0:1, :], [1, 1, 2])
            boxes = tf.clip_by_value(boxes, 0.0, hw)
            return boxes, out["detection_scores"], out["detection_classes"], out["num_detections"]

        self.infer = infer

    def run(self, files: Sequence[str], batch_size: int):
        """Yield (serialized example, original height, width, yxyx px boxes, scores, classes)."""
        import tensorflow as tf

        ds = tf.data.TFRecordDataset(list(files)).map(self.preprocess, num_parallel_calls=2, deterministic=True)
        # An undecodable image drops its own record only (counted by collect()).
        ds = ds.ignore_errors().batch(batch_size).prefetch(1)
        for serialized, images, info in ds:
            boxes, scores, classes, num = self.infer(images, info)
            boxes, scores, classes, num = boxes.numpy(), scores.numpy(), classes.numpy(), num.numpy()
            info = info.numpy()
            for i in range(len(num)):
                k = int(num[i])
                yield (
                    bytes(serialized[i].numpy()),
                    int(round(info[i, 0, 0])),
                    int(round(info[i, 0, 1])),
                    boxes[i, :k],
                    scores[i, :k],
                    classes[i, :k].astype(np.int64),
                )


class ExportedPredictor:
    """An exported SavedModel's ``serving_default``: uint8 [1,H,W,3] in, OD API outputs
    (normalised yxyx boxes relative to the input image, label-map ids) out."""

    def __init__(self, export_dir: str):
        import tensorflow as tf

        sm = os.path.join(export_dir, "saved_model")
        if not os.path.isdir(sm):
            sm = export_dir
        if not tf.saved_model.contains_saved_model(sm):
            raise EvalError(f"{export_dir}: no SavedModel (expected {os.path.join(export_dir, 'saved_model')})")
        self.loaded = tf.saved_model.load(sm)
        if "serving_default" not in self.loaded.signatures:
            raise EvalError(f"{sm}: no serving_default signature (has {sorted(self.loaded.signatures)})")
        self.fn = self.loaded.signatures["serving_default"]
        _, kwargs = self.fn.structured_input_signature
        if len(kwargs) != 1:
            raise EvalError(f"{sm}: serving_default takes {sorted(kwargs)}; expected one uint8 image input")
        self.input_name = next(iter(kwargs))
        self.input_dtype = kwargs[self.input_name].dtype
        missing = {"detection_boxes", "detection_scores", "detection_classes"} - set(self.fn.structured_outputs)
        if missing:
            raise EvalError(f"{sm}: serving_default lacks outputs {sorted(missing)} (not an OD API style model)")

    def run(self, files: Sequence[str], batch_size: int = 1):
        import tensorflow as tf

        def decode(serialized):
            feats = tf.io.parse_single_example(serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            image = tf.io.decode_image(feats["image/encoded"], channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return serialized, image

        ds = tf.data.TFRecordDataset(list(files)).map(decode, num_parallel_calls=2, deterministic=True)
        ds = ds.ignore_errors().prefetch(2)
        for serialized, image in ds:
            h, w = int(image.shape[0]), int(image.shape[1])
            out = self.fn(**{self.input_name: tf.cast(image[None], self.input_dtype)})
            boxes = out["detection_boxes"].numpy()[0].astype(np.float64)
            scores = out["detection_scores"].numpy()[0]
            classes = np.rint(out["detection_classes"].numpy()[0]).astype(np.int64)
            k = int(out["num_detections"].numpy().reshape(-1)[0]) if "num_detections" in out else len(scores)
            boxes = boxes[:k] * np.array([h, w, h, w], dtype=np.float64)
            yield bytes(serialized.numpy()), h, w, boxes, scores[:k], classes[:k]


def collect(
    predictor,
    files: Sequence[str],
    classes: Mapping[int, str],
    *,
    batch_size: int = 4,
    gallery_size: int = 6,
    progress: bool = True,
) -> EvalData:
    """Run ``predictor`` over the records; ground truth decoded from the same records."""
    from od.io.example import decode_example

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
    from od.io.example import ExampleError

    for n, (serialized, h, w, yxyx, scores, cls) in enumerate(predictor.run(files, batch_size)):
        if bar is not None:
            bar.update(1)
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


def count_records(files: Sequence[str]) -> int:
    """Records in the files, counting up to the first unreadable byte of a damaged file."""
    import tensorflow as tf

    return int(tf.data.TFRecordDataset(list(files)).ignore_errors().reduce(0, lambda n, _: n + 1))


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


def write_metrics_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")


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
    ap.add_argument("--records", help="records dir (default: the one the model was trained on), or a file/glob")
    ap.add_argument("--split", default="val", choices=("val", "test", "train"), help="which split's shards (default val)")
    ap.add_argument("--label-map", help="label map (default: the model dir's / export's label_map.pbtxt)")
    ap.add_argument("--out", help="output dir (default MODEL_DIR/eval, or MODEL/eval with --model)")
    add_force(ap, "an evaluation in --out of another model, checkpoint or records (one of the same is refreshed)")
    ap.add_argument("--batch-size", type=positive_int, default=4, help="images per inference batch (checkpoint path)")
    add_score_threshold(ap, 0.5, "for the confusion matrix and gallery; AP uses every box (default 0.5)")
    add_max_detections(ap, "applied before computing the metrics (default: all the model returns)")
    ap.add_argument("--iou-threshold", type=fraction(lo_open=True), default=0.5,
                    help="VOC AP / confusion matrix IoU, in (0, 1] (default 0.5)")
    add_gallery(ap, 6, "gallery.png")
    ap.add_argument("--no-plots", action="store_true", help="metrics.json only")
    ap.add_argument("--save-predictions", action="store_true", help="also write predictions.json (pixel boxes)")
    add_common(ap)
    return ap


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_SAME_RUN = ("model_dir", "exported", "checkpoint", "split", "records")


def _check_earlier(out_dir: Path, info: Mapping[str, Any], force: bool) -> None:
    """An earlier metrics.json of another model, checkpoint or records is replaced only with --force."""
    earlier = _load_json(str(out_dir / "metrics.json"))
    if not earlier:
        return
    if all(earlier.get(k) == info[k] for k in _SAME_RUN):
        print(f"od: refreshing the earlier evaluation of the same model and records in {out_dir}", file=sys.stderr)
        return
    was = earlier.get("exported") or f"{earlier.get('checkpoint')} (step {earlier.get('step')})"
    if not force:
        raise EvalError(f"{out_dir / 'metrics.json'} holds the evaluation of {was} on other records or of "
                        "another model; pass --force to replace it, or --out DIR to keep both")
    warn(f"--force: replacing the evaluation of {was} in {out_dir}")


def _top(p: ImagePredictions, n: int) -> ImagePredictions:
    """--max-detections: the ``n`` highest-scoring boxes of one image."""
    keep = np.argsort(-p.scores, kind="stable")[:n]
    return ImagePredictions(p.image_id, p.boxes[keep], p.scores[keep], p.class_ids[keep])


def _run(args: argparse.Namespace) -> int:
    from od.io.label_map import LabelMapError, read_label_map

    model_dir = args.model_dir
    export_dir = args.model
    params = header = None
    if export_dir:
        if not os.path.isdir(export_dir):
            parent = Path(export_dir).parent
            have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            raise EvalError(f"{export_dir}: no such export" + (f"; exports in {parent}: {', '.join(have)}" if have else ""))
        model_json = _load_json(os.path.join(export_dir, "model.json"))
        if not model_dir and model_json.get("model_dir") and os.path.isdir(str(model_json["model_dir"])):
            model_dir = str(model_json["model_dir"])
    if model_dir:
        from od.model.errors import ConfigError
        from od.model.model_dir import load_model_dir

        try:
            params, header = load_model_dir(model_dir)
        except ConfigError as e:
            if not export_dir:
                raise EvalError(str(e)) from None
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
        raise EvalError(f"no label map found (tried {', '.join(candidates) or 'nothing'}); pass --label-map PATH")
    if not args.label_map:
        note_default("label map", lm_path)
    try:
        label_map = read_label_map(lm_path)
    except (LabelMapError, OSError) as e:
        raise EvalError(str(e)) from None
    classes = dict(label_map.items)
    if params is not None and not export_dir and params.task.model.num_classes != label_map.num_classes + 1:
        raise EvalError(
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
            raise EvalError("which records? pass --records DIR")
        note_default("records", records)
    files = find_split_files(records, args.split)

    out_dir = Path(args.out) if args.out else Path(export_dir or model_dir) / "eval"
    if not args.out:
        note_default("output dir", out_dir)

    info: dict[str, Any] = {
        "version": METRICS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_dir": model_dir,
        "exported": export_dir,
        "checkpoint": None,
        "checkpoint_choice": None,
        "step": None,
        "split": args.split if Path(records).is_dir() else None,  # a file/glob is taken whole
        "records": files,
        "label_map": lm_path,
        "classes": [{"id": i, "name": n} for i, n in label_map.items],
    }
    if export_dir:
        predictor = ExportedPredictor(export_dir)
        ck = _load_json(os.path.join(export_dir, "model.json")).get("checkpoint")
        if isinstance(ck, Mapping):  # od.export's model.json: {"path", "kind", "step"}
            info.update(checkpoint=ck.get("path"), checkpoint_choice=ck.get("kind"), step=ck.get("step"))
    else:
        ckpt, how = resolve_checkpoint(model_dir, args.checkpoint)
        info.update(checkpoint=ckpt, checkpoint_choice=how, step=checkpoint_step(ckpt))
        predictor = CheckpointPredictor(params, ckpt)

    _check_earlier(out_dir, info, args.force)
    data = collect(
        predictor, files, classes, batch_size=max(1, args.batch_size),
        gallery_size=0 if args.no_plots else max(0, args.gallery), progress=not args.quiet,
    )
    if args.max_detections:
        data.predictions = [_top(p, args.max_detections) for p in data.predictions]
    for s in data.skipped:
        warn(f"skipped {s}")
    if data.dropped_predictions:
        warn(f"dropped {data.dropped_predictions} predictions with class ids not in {lm_path}")
    if not data.ground_truths:
        raise EvalError(f"no usable images in {', '.join(files)}")

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
        atomic_write_text(out_dir / "predictions.json", json.dumps(predictions_json(data, classes), indent=1) + "\n")
    write_metrics_json(out_dir / "metrics.json", result)

    what = f"export {export_dir}" if export_dir else f"{info['checkpoint']} (step {info['step']})"
    split = f"{args.split} images" if Path(records).is_dir() else f"images of {records}"
    print(f"od: {what} on {len(data.ground_truths)} {split} ({result['images_per_second']} img/s)")
    print_table(PER_CLASS_HEADERS, per_class_rows(metrics))
    print(f"od: AR@100 {_fmt(metrics['AR100'])}; wrote {out_dir / 'metrics.json'}"
          + (f" and {len(result.get('plots', {}))} plots" if not args.no_plots else ""))
    return EXIT_FAILURES if data.skipped else EXIT_OK


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
    except EvalError as e:
        error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
