"""Shared test setup: quiet TensorFlow, and the optional real dataset beside the checkout."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RACCOON = SHARED / "datasets" / "raccoon"


@pytest.fixture
def raccoon_dir() -> Path:
    """The real raccoon VOC dataset in ../shared; tests using it skip when it is absent."""
    if not (RACCOON / "annotations").is_dir():
        pytest.skip("../shared/datasets/raccoon not present")
    return RACCOON
