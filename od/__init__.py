"""od: Pascal VOC photos -> TFRecords -> a trained, exported object detector.

Kept import-light (no TensorFlow, no numpy): every CLI imports this package before parsing ``--help``.
"""

__version__ = "0.1.0"
