"""Running an od ``.tflite`` export: the same outputs as the SavedModel, so od.detect and od.evaluate
treat both alike.

The ``.tflite`` model takes a fixed uint8 canvas (:func:`od.model.tflite.tflite_canvas`: the image
resized to fit the input keeping its aspect ratio, pasted top-left on a mean-colour canvas) and returns
OD API outputs with boxes normalised to that canvas; :meth:`TFLiteDetector.raw` maps them back to the
original image, so :meth:`Detector.postprocess` (thresholds, classes, pixels) is shared unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from od.model.errors import ModelError
from od.model.inference import OUTPUT_KEYS, Detector
from od.model.tflite import canvas_boxes_to_original, tflite_canvas

if TYPE_CHECKING:
    import numpy as np


def cpu_threads() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def nms_safe_threads(threads: int, num_classes: int) -> int:
    """Threads for the interpreter that TFLite's per-class NMS kernel handles correctly.

    LiteRT's ``TFLite_Detection_PostProcess`` (regular NMS, as od exports it) shares classes among T > 1
    threads and never runs class index T when there are more than T classes (measured with LiteRT 2.20:
    a 3-class model on 2 threads loses every box of its third class; 1, 3 or more threads find them).
    So with more classes than threads the interpreter gets one thread; on these small models one thread
    costs little (the edge template: 11 vs 12 ms per image on 2 cores).
    """
    return threads if threads == 1 or num_classes <= threads else 1


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter  # TFLite's runtime, TF 2.20's recommended one
    except ImportError:  # pragma: no cover - older environments: the interpreter inside TensorFlow
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteDetector(Detector):
    """A ``model.tflite`` of an od export, called through its ``serving_default`` signature."""

    def __init__(self, path: Path, model_json: dict, id_to_name: dict[int, str], ref: str, threads: int | None = None):
        info = model_json.get("tflite") or {}
        try:
            self.input_size = tuple(int(v) for v in model_json["input_size"])
            self.canvas_size = tuple(int(v) for v in model_json.get("padded_input_size") or model_json["input_size"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{ref}: model.json has no input_size; od needs it to prepare the .tflite input") from None
        try:
            num_classes = int(model_json.get("num_classes") or len(model_json.get("classes") or ()) or 1)
            self.threads = nms_safe_threads(threads or cpu_threads(), num_classes)
            it = _interpreter_class()(model_path=str(path), num_threads=self.threads)
            runner = it.get_signature_runner("serving_default")
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load TFLite model {path}: {e}") from None
        self.mode = info.get("mode")
        super().__init__(runner, info.get("input") or "input_tensor", None, None, id_to_name, ref)

    def raw(self, array: "np.ndarray") -> dict[str, "np.ndarray"]:
        import numpy as np

        h, w = array.shape[:2]
        canvas, scale = tflite_canvas(array, self.input_size, self.canvas_size)
        try:
            out = self._fn(**{self._input_key: canvas[None]})
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.ref}: TFLite model failed on a {w}x{h} image: {e}") from None
        missing = [k for k in OUTPUT_KEYS if k not in out]
        if missing:
            raise ModelError(f"{self.ref}: TFLite model outputs {sorted(out)}; missing {missing}")
        res = {k: np.asarray(out[k])[0] for k in OUTPUT_KEYS}
        res["detection_boxes"] = canvas_boxes_to_original(res["detection_boxes"], scale, self.canvas_size, h, w)
        if "num_detections" in out:
            res["num_detections"] = np.asarray(out["num_detections"])
        return res
