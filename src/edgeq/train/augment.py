"""Training augmentation on tensors: random resized crop and horizontal flip.

Each sample's randomness comes from its own `torch.Generator`, seeded from
``(seed, epoch, index)`` alone, where ``index`` is the sample's position in the whole
data set. So the augmented images do not depend on the global RNG, on the batch a
sample lands in, or on the torchrun rank that processes it: a 2-process run sees
exactly the images a single-process run sees.

The crop follows torchvision's ``RandomResizedCrop``: an area fraction drawn from
``scale``, a log-uniform aspect ratio in ``ratio``, ten tries to fit it in the image,
then a centre crop; resized back to the input size with bilinear interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["CropFlip", "apply_crop_flip", "augment_batch", "crop_flip_params", "sample_seed"]

DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class CropFlip:
    """One sample's augmentation: the crop box (in pixels) and whether to flip it."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one sample in one epoch: a hash of the three numbers, so
    that neighbouring seeds, epochs and indices give unrelated streams."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ epoch) ^ index)


def crop_flip_params(
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> CropFlip:
    """Draw a crop box of area fraction in ``scale`` and aspect ratio in ``ratio``
    (torchvision's ``RandomResizedCrop.get_params``), then a flip with p = 0.5.

    Args:
        height, width: the image size.
        generator: the only source of randomness.
        scale: (min, max) fraction of the image area the crop covers.
        ratio: (min, max) width / height of the crop.

    Returns:
        The crop box and the flip decision.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    box: tuple[int, int, int, int] | None = None
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            box = (top, left, h, w)
            break
    if box is None:  # no try fitted: the largest centre crop within the ratio range
        w, h = width, height
        if width / height < ratio[0]:
            h = round(width / ratio[0])
        elif width / height > ratio[1]:
            w = round(height * ratio[1])
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(torch.rand(1, generator=generator, dtype=torch.float64).item() < 0.5)
    return CropFlip(*box, flip=flip)


def apply_crop_flip(image: torch.Tensor, params: CropFlip) -> torch.Tensor:
    """Crop ``image`` (C, H, W) to ``params``' box, resize it back to (H, W) with
    bilinear interpolation, and flip it left-right when ``params.flip``. Returns a new
    tensor; ``image`` is not changed. A crop of the whole image is copied exactly."""
    h, w = image.shape[-2:]
    p = params
    crop = image[:, p.top : p.top + p.height, p.left : p.left + p.width]
    if (p.height, p.width) != (h, w):
        # the crop is never larger than the image: upsampling, so no antialiasing
        crop = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    out = crop.flip(-1) if p.flip else crop.clone()
    return out.to(image.dtype)


def augment_batch(
    images: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    epoch: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> torch.Tensor:
    """Random resized crop + horizontal flip of every image in a batch.

    Args:
        images: (B, C, H, W) float images.
        indices: (B,) each image's index in the whole data set.
        seed, epoch: with the index, the only inputs of each image's randomness.
        scale, ratio: as in `crop_flip_params`.

    Returns:
        A new (B, C, H, W) tensor; ``images`` is not changed.

    Raises:
        ValueError: ``images`` is not 4-D floating point, or ``indices`` does not hold
            one index per image.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"augmentation needs (B, C, H, W) float images; got shape {tuple(images.shape)} "
            f"{images.dtype}"
        )
    if indices.shape != (images.shape[0],):
        raise ValueError(
            f"indices must have shape ({images.shape[0]},), one per image; "
            f"got {tuple(indices.shape)}"
        )
    h, w = images.shape[-2:]
    out = []
    for image, index in zip(images, indices.tolist(), strict=True):
        g = torch.Generator().manual_seed(sample_seed(seed, epoch, int(index)))
        out.append(apply_crop_flip(image, crop_flip_params(h, w, g, scale=scale, ratio=ratio)))
    return torch.stack(out)
