"""od's one inference path: a detection model called on a uint8 image, OD API outputs -> Detections.

The model is either an exported SavedModel (``serving_default``: od's exports, OD API exports,
TF Hub detectors) or a checkpoint in a model dir run through the same serving graph od.export
saves (:mod:`od.model.serving`), so od.evaluate measures exactly what od.export ships and
od.detect runs. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from od.console import warn
from od.core import Box, Detection
from od.model.errors import ModelError
from od.model.source import ModelSource, resolve_labels, resolve_model

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes")


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
    def load(cls, source: ModelSource, id_to_name: dict[int, str], runtime: str = "auto") -> "Detector":
        """Load with TensorFlow (imported here), or the export's .tflite file with the TFLite runtime
        (``runtime``: auto picks it when the export holds one). Raises ModelError with a clear message."""
        if source.runtime(runtime) == "tflite":
            from od.model.tflite_runner import TFLiteDetector

            return TFLiteDetector(source.tflite, source.model_json, id_to_name, source.ref)
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

    @classmethod
    def from_checkpoint(cls, params, checkpoint: str, id_to_name: dict[int, str]) -> "Detector":
        """A model dir's checkpoint through the serving graph od.export saves (same preprocessing,
        same outputs), without writing a SavedModel."""
        import tensorflow as tf

        from od.model.serving import build_module, export_params

        module = build_module(export_params(params, None, None))
        try:
            status = tf.train.Checkpoint(model=module.model).read(checkpoint).expect_partial()
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise ModelError(
                f"checkpoint {checkpoint} does not fit the model in pipeline.yaml "
                f"(was the model dir trained with a different config?): {str(e)[:300]}"
            ) from None
        fn = tf.function(module.serve, input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        return cls(fn, None, tf.uint8, None, id_to_name, checkpoint)

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
        score_threshold: float = 0.5,
        class_ids: set[int] | None = None,
        max_detections: int | None = None,
    ) -> list[Detection]:
        """Filter (score, class, count) and convert normalised yxyx boxes to pixel Detections."""
        import numpy as np

        boxes, scores, classes = valid_outputs(raw)
        keep = scores >= score_threshold
        if class_ids is not None:
            keep &= np.isin(classes, np.fromiter(class_ids, dtype=np.int64))
        idx = np.nonzero(keep)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        if max_detections is not None:
            idx = idx[:max_detections]
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
        score_threshold: float = 0.5,
        class_ids: set[int] | None = None,
        max_detections: int | None = None,
    ) -> list[Detection]:
        """Detections in pixels of ``image`` (an RGB PIL image or HxWx3 uint8 array)."""
        import numpy as np

        arr = image if isinstance(image, np.ndarray) else np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        h, w = arr.shape[:2]
        return self.postprocess(self.raw(arr), w, h, score_threshold, class_ids, max_detections)


def valid_outputs(raw: dict[str, "np.ndarray"]) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """The first ``num_detections`` entries of OD API outputs: normalised yxyx boxes and scores as
    float64, class ids as int64 (float ids rounded)."""
    import numpy as np

    boxes = np.asarray(raw["detection_boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(raw["detection_scores"], dtype=np.float64).reshape(-1)
    classes = np.rint(np.asarray(raw["detection_classes"], dtype=np.float64).reshape(-1)).astype(np.int64)
    n = len(scores)
    if "num_detections" in raw:
        n = min(n, int(np.asarray(raw["num_detections"]).reshape(-1)[0]))
    return boxes[:n], scores[:n], classes[:n]


def load_detector(model: str | None = None, label_map: str | None = None, runtime: str = "auto") -> Detector:
    """Resolve + load a model the way the CLI does (for the benchmark and the demo pipeline)."""
    source = resolve_model(model)
    id_to_name, _ = resolve_labels(source, label_map)
    return Detector.load(source, id_to_name, runtime)


def iter_record_images(files: Sequence[str]) -> Iterator[tuple[bytes, "np.ndarray"]]:
    """(serialized example, uint8 RGB image) of every record whose image decodes; an undecodable
    image drops its own record only (callers count what is missing)."""
    import tensorflow as tf

    def decode(serialized):
        feats = tf.io.parse_single_example(serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        image = tf.io.decode_image(feats["image/encoded"], channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return serialized, image

    ds = tf.data.TFRecordDataset(list(files)).map(decode, num_parallel_calls=2, deterministic=True)
    for serialized, image in ds.ignore_errors().prefetch(2):
        yield bytes(serialized.numpy()), image.numpy()
