"""The preprocessing a model declares, so that calibration and evaluation feed it the
inputs it was trained on.

Two sources, in this order:

- an ``edgeq_preprocess`` attribute on the model: a dict accepted by
  `Preprocess.from_dict`. This is how a factory (``package.module:factory``) declares
  its preprocessing::

      def build():
          model = MyNet()
          model.edgeq_preprocess = {"resize": 160, "crop": 128, "mean": [0.5] * 3,
                                    "std": [0.5] * 3, "interpolation": "bicubic"}
          return model

- a torchvision architecture (``edgeq_source == {"kind": "torchvision", "name": NAME}``):
  the preset of its weights in torchvision's metadata (``get_model_weights(NAME)``);
  nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgeq.data.preprocess import Preprocess, PreprocessError


def declared_preprocess(
    model: nn.Module, *, weights: str | Path | None = None
) -> Preprocess | None:
    """The preprocessing ``model`` declares, or None when it declares none.

    Args:
        model: a model from `edgeq.load_model` (or any module with
            ``edgeq_preprocess``).
        weights: the weights file loaded into a torchvision architecture. When its
            name is that of one of torchvision's checkpoints (``mobilenet_v2-b0353104.pth``
            is MobileNet_V2_Weights.IMAGENET1K_V1: 256 / 224), that checkpoint's preset
            is used; otherwise the architecture's DEFAULT weights' preset.

    Raises:
        PreprocessError: ``edgeq_preprocess`` is not a valid preprocessing dict
            (naming the model and the field).

    Example:
        >>> declared_preprocess(edgeq.load_model("torchvision:mobilenet_v2")).describe()
        ... # doctest: +SKIP
        'resize 232 (bilinear), centre crop 224, RGB, mean [...], std [...]'
    """
    declared = getattr(model, "edgeq_preprocess", None)
    if declared is not None:
        try:
            return Preprocess.from_dict(declared)
        except PreprocessError as e:
            raise PreprocessError(f"{type(model).__name__}.edgeq_preprocess: {e}") from e
    source = getattr(model, "edgeq_source", None)
    if isinstance(source, dict) and source.get("kind") == "torchvision":
        return _torchvision_preset(str(source.get("name")), weights)
    return None


def _torchvision_preset(name: str, weights: str | Path | None) -> Preprocess | None:
    from torchvision.models import get_model_weights

    # the preset class of every classification checkpoint (torchvision is pinned)
    from torchvision.transforms._presets import ImageClassification

    try:
        members = get_model_weights(name)
    except (ValueError, KeyError):  # not a registered architecture
        return None
    chosen = members.DEFAULT  # type: ignore[attr-defined]
    if weights is not None:
        for member in members:  # type: ignore[attr-defined]
            if Path(member.url).name == Path(weights).name:
                chosen = member
    preset = chosen.transforms()
    if not isinstance(preset, ImageClassification):
        return None  # detection, segmentation, video, optical flow: not edgeq's inputs
    return Preprocess(
        resize=preset.resize_size[0],  # a classification preset's is always [shorter side]
        crop=_single(preset.crop_size),
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        interpolation=preset.interpolation.value,
    )


def _single(size: list[int]) -> int | tuple[int, int]:
    return size[0] if len(size) == 1 else (size[0], size[1])
