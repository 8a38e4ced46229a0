"""`Preprocess`: how an image file becomes the model's input tensor.

Resize (shorter side), centre crop, [0, 1] scaling, channel order, then per-channel
normalization. `Preprocess.imagenet()` is torchvision's classic ImageNet recipe
(256 / 224, bilinear, ImageNet mean and std), edgeq's default.

Example:
    >>> p = Preprocess(resize=232, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> p.describe()
    'resize 232 (bilinear), centre crop 224, RGB, mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]'
    >>> Preprocess.from_dict(p.to_dict()) == p
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from PIL import Image
from torchvision import transforms

from edgeq.data.errors import DataError

SCHEMA_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's preset names, which difflib would match to the wrong field
# ("crop_size" is closer to "resize" than to "crop")
_TORCHVISION_KEYS = {"resize_size": "resize", "crop_size": "crop"}


class PreprocessError(DataError):
    """A preprocessing field has a value that is not allowed."""


class Interpolation(StrEnum):
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"


class ChannelOrder(StrEnum):
    RGB = "rgb"
    BGR = "bgr"


def _choice(enum_cls: type[StrEnum], field: str, value: Any) -> Any:
    allowed = [e.value for e in enum_cls]
    if isinstance(value, str) and value.lower() in allowed:
        return enum_cls(value.lower())
    close = difflib.get_close_matches(str(value).lower(), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise PreprocessError(f"{field}={value!r} is not one of {allowed}{hint}")


def _size(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PreprocessError(f"{field}={value!r}: expected a positive number of pixels")
    return value


def _crop(value: Any) -> int | tuple[int, int] | None:
    if value is None or isinstance(value, int):
        return None if value is None else _size("crop", value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return (_size("crop", value[0]), _size("crop", value[1]))
    raise PreprocessError(f"crop={value!r}: expected an int, [height, width] or None")


def _triple(field: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3
    if ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        floats = tuple(float(v) for v in value)
        if all(math.isfinite(v) and (v > 0 or not positive) for v in floats):
            return floats  # type: ignore[return-value]
    what = "positive " if positive else ""
    raise PreprocessError(f"{field}={value!r}: expected 3 finite {what}floats, one per channel")


def _json_value(v: Any) -> Any:
    if isinstance(v, StrEnum):
        return v.value
    return list(v) if isinstance(v, tuple) else v


def _to_bgr(x: torch.Tensor) -> torch.Tensor:
    return x.flip(0)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input.

    Args:
        resize: the shorter side is resized to this many pixels (aspect kept); None
            keeps the image's size.
        crop: centre crop, ``int`` (square) or ``(height, width)``; None: no crop.
            At most ``resize`` (a larger crop would be padded with black).
        mean, std: per-channel normalization of the [0, 1] values, in the order of
            ``channel_order``.
        interpolation: 'bilinear', 'bicubic' or 'nearest' (used by the resize).
        channel_order: 'rgb' or 'bgr' (models trained on OpenCV-decoded images).

    Raises:
        PreprocessError: a field is out of range (naming the field, the value and
            what is allowed).
    """

    resize: int | None = 256
    crop: int | tuple[int, int] | None = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Interpolation = Interpolation.BILINEAR
    channel_order: ChannelOrder = ChannelOrder.RGB

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalize the fields once, here
        if self.resize is not None:
            fix(self, "resize", _size("resize", self.resize))
        fix(self, "crop", _crop(self.crop))
        fix(self, "mean", _triple("mean", self.mean, positive=False))
        fix(self, "std", _triple("std", self.std, positive=True))
        fix(self, "interpolation", _choice(Interpolation, "interpolation", self.interpolation))
        fix(self, "channel_order", _choice(ChannelOrder, "channel_order", self.channel_order))
        largest = max(self.crop_hw) if self.crop_hw else 0
        if self.resize is not None and largest > self.resize:
            raise PreprocessError(
                f"crop={self.crop!r} is larger than resize={self.resize} (the crop would be "
                "padded with black); crop at most the resized shorter side"
            )

    @classmethod
    def imagenet(cls) -> Preprocess:
        """torchvision's classic ImageNet preprocessing: 256, centre 224, bilinear."""
        return cls()

    @property
    def crop_hw(self) -> tuple[int, int] | None:
        """The crop as ``(height, width)``, or None."""
        if self.crop is None or isinstance(self.crop, tuple):
            return self.crop
        return (self.crop, self.crop)

    def resize_image(self, img: Image.Image) -> Image.Image:
        """The image with its shorter side resized (unchanged when ``resize`` is None)."""
        if self.resize is None:
            return img
        mode = transforms.InterpolationMode(self.interpolation.value)
        return transforms.Resize(self.resize, interpolation=mode)(img)

    def normalize_image(self, img: Image.Image) -> torch.Tensor:
        """A (cropped) PIL image as a normalized CHW float tensor."""
        x = transforms.ToTensor()(img)
        if self.channel_order is ChannelOrder.BGR:
            x = _to_bgr(x)
        return transforms.Normalize(self.mean, self.std)(x)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The callable: RGB PIL image -> ``[3, H, W]`` float tensor."""
        steps: list[Callable[..., Any]] = [self.resize_image]
        if self.crop_hw is not None:
            steps.append(transforms.CenterCrop(self.crop_hw))
        steps.append(self.normalize_image)
        return transforms.Compose(steps)

    def describe(self) -> str:
        """One line for reports."""
        parts = []
        if self.resize is not None:
            parts.append(f"resize {self.resize} ({self.interpolation.value})")
        if self.crop_hw is not None:
            h, w = self.crop_hw
            parts.append(f"centre crop {h}" if h == w else f"centre crop {h}x{w}")
        parts.append(self.channel_order.value.upper())
        parts.append(f"mean {list(self.mean)}, std {list(self.std)}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields plus ``schema_version``."""
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = _json_value(v)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """The inverse of `to_dict`; missing fields take their defaults.

        Raises:
            PreprocessError: not a dict, an unknown key (naming the closest valid
                one), an unsupported schema version, or a bad value.
        """
        if not isinstance(data, dict):
            raise PreprocessError(f"expected a dict of preprocessing fields, got {data!r}")
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise PreprocessError(
                f"schema_version={version!r} is not supported (this edgeq reads {SCHEMA_VERSION})"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                close = [_TORCHVISION_KEYS[key]] if key in _TORCHVISION_KEYS else close
                hint = f"; did you mean {close[0]!r}?" if close else f" (valid: {names})"
                raise PreprocessError(f"unknown preprocessing key {key!r}{hint}")
        return cls(**data)
