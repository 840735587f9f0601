"""Model Garden's detection export module with OD API outputs: the one place od builds a serving graph.

``DetectionModule`` does the preprocessing (normalise, resize keeping the aspect ratio, pad) and
the forward pass; it returns boxes in pixels of the resized, padded model input plus
``image_info``. Tools written for the OD API expect boxes normalised to the *original* image,
float class ids and a float ``num_detections``, so :class:`ODDetectionModule` converts inside the
graph. od.export saves it, and od.evaluate runs it on a restored checkpoint (``od.model.inference``),
so a checkpoint and its export go through the same preprocessing.
"""

from __future__ import annotations

from typing import Any

# Signature name -> Model Garden input type. ``serving_default`` is the uint8 tensor one.
SIGNATURES = {"serving_default": "image_tensor", "image_bytes": "image_bytes", "tf_example": "tf_example"}
# Same input name as the OD API's exporter, so OD API clients call od exports unchanged.
INPUT_NAME = "input_tensor"
OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def is_retinanet(params) -> bool:
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
    if is_retinanet(params):
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
