"""TFLite export of RetinaNet-family models, and the canvas its ``.tflite`` file takes.

Model Garden's TFLite detection post-processing (the ``TFLite_Detection_PostProcess`` custom op)
exists for the RetinaNet family only. The ``.tflite`` model takes a uint8 ``[1, H, W, 3]`` canvas
at the model's padded input size (the image resized to fit the input size keeping its aspect
ratio, pasted top-left, the rest filled with the mean colour: :func:`tflite_canvas`) and returns
boxes normalised to that canvas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from od.console import warn
from od.model.errors import ConfigError
from od.model.serving import INPUT_NAME, build_module
from od.model.source import TFLITE_FILE  # noqa: F401 - od.export writes it under this name

TFLITE_MODES = ("float32", "float16", "int8")
# od templates whose architecture Model Garden can export to TFLite (RetinaNet family).
TFLITE_TEMPLATES = ("retinanet_mobilenetv2_fpn_cpu", "retinanet_resnet50_fpn")
# Mean RGB Model Garden subtracts; a canvas padded with it is zero after normalisation,
# exactly like Model Garden's own padding.
PAD_RGB = (124, 116, 104)


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



def canvas_boxes_to_original(boxes: np.ndarray, scale: float, canvas_size: Sequence[int], height: int,
                             width: int) -> np.ndarray:
    """Normalised yxyx boxes on a :func:`tflite_canvas` -> normalised to the ``height`` x ``width`` original."""
    hc, wc = canvas_size
    sy, sx = hc / (scale * height), wc / (scale * width)
    return np.clip(np.asarray(boxes, np.float64) * np.array([sy, sx, sy, sx]), 0.0, 1.0)

def calibration_files(spec: str) -> list[str]:
    """The train shards of a records folder (or a file / glob) for int8 calibration."""
    from od.io.schema import SchemaError, split_files

    try:
        return split_files(spec, "train")
    except SchemaError as e:
        raise ConfigError(f"--calibration-records: {e}") from None


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
        raise ConfigError(f"no usable images for int8 calibration in {', '.join(files)}")


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
            raise ConfigError("--tflite int8 needs calibration images (--calibration-records DIR)")
        images = list(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([im] for im in images)
    try:
        return converter.convert()
    except Exception as e:  # the converter raises many types; name the step
        raise ConfigError(f"TFLite conversion ({mode}) failed: {e}") from e
