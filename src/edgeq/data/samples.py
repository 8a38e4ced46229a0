"""Real photographs available offline: the sample images that scikit-image ships.

Used by ``edgeq demo`` to calibrate without any dataset. Each photo gives ten
deterministic crops: centre and four corners of the resized image, and their mirror
images (with ImageNet's preprocessing: 224x224 crops of the 256-resized photo).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from edgeq.data.decode import read_rgb
from edgeq.data.errors import DataError
from edgeq.data.preprocess import Preprocess

# photographs of everyday objects, the kind of image an ImageNet classifier is for
# (textures, astronomy, microscopy and text pages are left out: the FP32 model's own
# predictions on them are near chance, which makes a poor calibration and check set)
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "coins.png",
)


def sample_photo_paths() -> list[Path]:
    try:
        import skimage.data
    except ImportError as e:
        raise DataError("scikit-image is not installed (pip install scikit-image)") from e
    root = Path(skimage.data.__file__).parent
    paths = [root / n for n in PHOTOS if (root / n).is_file()]
    if not paths:
        raise DataError(f"{root}: scikit-image's sample photographs are missing")
    return paths


def sample_photo_batch(preprocess: Preprocess | None = None) -> torch.Tensor:
    """``[N, 3, H, W]`` crops of the sample photographs (N = 10 x photos).

    Args:
        preprocess: resize, crop size and normalization (`Preprocess.imagenet()` by
            default: 224x224 crops of the 256-resized photos).

    Raises:
        DataError: scikit-image or its photographs are missing, or ``preprocess`` has
            no crop (the photographs differ in size).
    """
    p = preprocess or Preprocess.imagenet()
    if p.crop_hw is None:
        raise DataError(
            f"sample photographs need a crop size (got {p.describe()}): they differ in size"
        )
    crops = []
    for path in sample_photo_paths():
        img = p.resize_image(read_rgb(path))
        for crop in transforms.FiveCrop(p.crop_hw)(img):
            crops.append(p.normalize_image(crop))
            crops.append(p.normalize_image(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    return torch.stack(crops)
