"""Image folders: ``images/`` + ``labels.csv`` (file,label[,...]) or one subfolder per class.

Standard ImageNet preprocessing by default: shorter side to 256, centre crop 224,
[0, 1], normalized with ImageNet mean/std. Images that fail to decode raise an error
naming the file (a corrupt calibration set should not silently shrink).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class DataError(ValueError):
    """A data folder or file cannot be read."""


def imagenet_transform() -> Callable[[Image.Image], torch.Tensor]:
    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )


@dataclass
class LabeledImages:
    files: list[Path]
    labels: list[int]
    transform: Callable[[Image.Image], torch.Tensor]

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            with Image.open(path) as img:
                return self.transform(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: cannot decode image ({e})") from e

    def tensors(
        self, indices: range | list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = list(range(len(self))) if indices is None else list(indices)
        if not idx:
            raise DataError("no images selected")
        x = torch.stack([self.load(i) for i in idx])
        y = torch.tensor([self.labels[i] for i in idx])
        return x, y


def load_labeled_images(folder: str | Path, transform: Callable | None = None) -> LabeledImages:
    """Read a labeled image folder in either layout, files in sorted order.

    Raises:
        DataError: the folder does not exist, holds no images, or labels.csv is
            malformed (naming the line).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    transform = transform or imagenet_transform()
    csv_path = root / "labels.csv"
    if csv_path.is_file():
        files, labels = [], []
        with csv_path.open(newline="") as f:
            for lineno, row in enumerate(csv.DictReader(f), start=2):
                try:
                    files.append(root / "images" / row["file"])
                    labels.append(int(row["label"]))
                except (KeyError, TypeError, ValueError) as e:
                    raise DataError(
                        f"{csv_path}:{lineno}: expected columns file,label ({e})"
                    ) from e
        order = sorted(range(len(files)), key=lambda i: files[i].name)
        files, labels = [files[i] for i in order], [labels[i] for i in order]
    else:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        files, labels = [], []
        for label, cls in enumerate(classes):
            for p in sorted((root / cls).iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(p)
                    labels.append(label)
    if not files:
        raise DataError(
            f"{root}: no images found (expected images/ + labels.csv or class subfolders)"
        )
    return LabeledImages(files, labels, transform)
