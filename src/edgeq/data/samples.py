"""Real photographs available offline: the sample images that scikit-image ships.

Used by ``edgeq demo`` to calibrate without any dataset. Each photo gives several
deterministic 224x224 crops (centre, four corners of the 256-resized image, and their
mirror images), normalized like ImageNet.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from edgeq.data.images import DataError

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


def sample_photo_batch() -> torch.Tensor:
    """``[N, 3, 224, 224]`` normalized crops of the sample photographs (N = 10 x photos)."""
    norm = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    crops = []
    for path in sample_photo_paths():
        with Image.open(path) as img:
            img = transforms.Resize(256)(img.convert("RGB"))
        for crop in transforms.FiveCrop(224)(img):
            crops.append(norm(crop))
            crops.append(norm(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    return torch.stack(crops)
