"""od's one classification path: Model Garden's ``ClassificationModule`` with named outputs, and the
:class:`Classifier` that runs it from a checkpoint or an export.

The module does the preprocessing Model Garden's eval parser does (centre crop, resize, normalise),
so od.evaluate on a checkpoint measures what od.export ships and od.classify runs. Outputs:
``probabilities`` float32 ``[batch, num_classes]`` (softmax) and ``classes`` int64 ``[batch]``, the top-1
label, which is the line of ``labels.txt`` (label-map id - 1). TensorFlow is imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from od.model.errors import ModelError
from od.model.serving import INPUT_NAME

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

OUTPUT_KEYS = ("probabilities", "classes")


@dataclass(frozen=True)
class Prediction:
    """One class of one image: label index (line of labels.txt), label-map id, name, score."""

    index: int
    name: str
    score: float

    @property
    def class_id(self) -> int:
        return self.index + 1


def _module_class():
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    import tensorflow as tf
    from official.vision.serving import image_classification

    class ODClassificationModule(image_classification.ClassificationModule):
        """Model Garden's classification export module with od's output names."""

        def serve(self, images):
            probs = super().serve(images)["probs"]
            return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1, output_type=tf.int64)}

        def _decode_image(self, encoded_image_bytes):
            """Decode only. Model Garden's also crops, resizes and truncates to uint8 here, expecting a
            module per input type; od saves one (built for ``image_tensor``) whose ``serve`` crops and
            resizes again, so image_bytes / tf_example saw a twice-cropped image. Now all three
            signatures give the same numbers for the same pixels (one image size per batch)."""
            image = tf.image.decode_image(encoded_image_bytes, channels=3, expand_animations=False)
            image.set_shape((None, None, 3))
            return image

    _MODULE = ODClassificationModule
    return ODClassificationModule


_MODULE = None


def build_classification_module(params, input_type: str = "image_tensor", batch_size: int | None = None):
    """An ``ODClassificationModule`` (model built for serving, weights not loaded)."""
    return _module_class()(
        params=params,
        batch_size=batch_size,
        input_image_size=list(params.task.model.input_size[:2]),
        input_type=input_type,
        input_name=INPUT_NAME,
    )


def labels_from_classes(id_to_name: dict[int, str], num_classes: int | None = None) -> list[str]:
    """Label index -> name (index = label-map id - 1); a missing id is shown as its number."""
    n = num_classes if num_classes is not None else max(id_to_name, default=0)
    return [id_to_name.get(i + 1, str(i + 1)) for i in range(n)]


class Classifier:
    """A classifier (export or checkpoint) and its label names; one call per image."""

    def __init__(self, fn: Callable[..., Any], input_key: str | None, labels: Sequence[str], ref: str):
        self._fn = fn
        self._input_key = input_key
        self.labels = list(labels)
        self.ref = ref

    @classmethod
    def load(cls, source, id_to_name: dict[int, str]) -> "Classifier":
        """An od classification export (or any SavedModel whose ``serving_default`` takes a uint8
        image batch and returns ``probabilities``)."""
        import tensorflow as tf

        if source.is_hub:
            raise ModelError(f"{source.ref}: od.classify runs od classification exports (python -m od.export)")
        try:
            obj = tf.saved_model.load(source.saved_model)
        except Exception as e:  # noqa: BLE001 - corrupt/incompatible SavedModels raise many kinds
            raise ModelError(f"cannot load SavedModel {source.saved_model}: {type(e).__name__}: {e}") from None
        fn = (getattr(obj, "signatures", None) or {}).get("serving_default")
        if fn is None:
            raise ModelError(f"{source.ref}: no serving_default signature; not an od classification export")
        _, kw = fn.structured_input_signature
        if len(kw) != 1:
            raise ModelError(f"{source.ref}: serving_default takes {sorted(kw)}; expected one image tensor input")
        key, spec = next(iter(kw.items()))
        if spec.dtype != tf.uint8:
            raise ModelError(f"{source.ref}: serving_default takes {spec.dtype.name}; expected a uint8 image tensor")
        outputs = set(fn.structured_outputs)
        if "probabilities" not in outputs:
            hint = " (it is a detector: use python -m od.detect)" if "detection_boxes" in outputs else ""
            raise ModelError(f"{source.ref}: outputs {sorted(outputs)}, no 'probabilities'{hint}")
        n = int(fn.structured_outputs["probabilities"].shape[-1] or 0) or None
        return cls(fn, key, labels_from_classes(id_to_name, n), source.ref)

    @classmethod
    def from_checkpoint(cls, params, checkpoint: str, id_to_name: dict[int, str]) -> "Classifier":
        """A model dir's checkpoint through the serving graph od.export saves, no SavedModel written."""
        import tensorflow as tf

        module = build_classification_module(params)
        try:
            status = tf.train.Checkpoint(model=module.model).read(checkpoint).expect_partial()
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise ModelError(
                f"checkpoint {checkpoint} does not fit the model in pipeline.yaml "
                f"(was the model dir trained with a different config?): {str(e)[:300]}"
            ) from None
        fn = tf.function(module.serve, input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        return cls(fn, None, labels_from_classes(id_to_name, int(params.task.model.num_classes)), checkpoint)

    def probabilities(self, image: "Image.Image | np.ndarray") -> "np.ndarray":
        """Class probabilities (float64, one per label) of one RGB image or HxWx3 uint8 array."""
        import numpy as np
        import tensorflow as tf

        arr = image if isinstance(image, np.ndarray) else np.asarray(image.convert("RGB"))
        t = tf.constant(arr[None].astype(np.uint8, copy=False))
        out = self._fn(**{self._input_key: t}) if self._input_key else self._fn(t)
        return np.asarray(out["probabilities"].numpy()[0], dtype=np.float64)

    def top_k(self, probabilities: "np.ndarray", k: int) -> list[Prediction]:
        """The ``k`` most likely classes, highest first (ties: lower index first)."""
        import numpy as np

        order = np.argsort(-probabilities, kind="stable")[: max(1, k)]
        return [Prediction(int(i), self._name(int(i)), float(probabilities[i])) for i in order]

    def _name(self, i: int) -> str:
        return self.labels[i] if i < len(self.labels) else str(i + 1)

