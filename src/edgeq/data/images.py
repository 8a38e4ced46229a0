"""Image folders: ``images/`` + ``labels.csv`` (file,label[,...]) or one subfolder per class.

Preprocessing is a `Preprocess` (ImageNet's by default: shorter side to 256, centre
crop 224, [0, 1], ImageNet mean/std). Images that fail to decode, or whose header
declares a size over the limits of `edgeq.data.decode`, raise an error naming the
file (a corrupt calibration set should not silently shrink).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from edgeq.data.decode import read_rgb
from edgeq.data.errors import DataError
from edgeq.data.listing import read_class_folders, read_labels_csv
from edgeq.data.preprocess import Preprocess

__all__ = ["DataError", "LabeledImages", "load_labeled_images"]


@dataclass
class LabeledImages:
    """Image files with integer labels; ``origins[i]`` says where label i was read."""

    files: list[Path]
    labels: list[int]
    origins: list[str]
    preprocess: Preprocess = field(default_factory=Preprocess.imagenet)
    _transform: Callable[[Image.Image], torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._transform = self.preprocess.transform()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> torch.Tensor:
        """Image i as a ``[3, H, W]`` tensor.

        Raises:
            DataError: it cannot be decoded or is too large, naming the file.
        """
        return self._transform(read_rgb(self.files[i]))

    def tensors(
        self, indices: range | list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (stacked) and labels at ``indices`` (all by default).

        Raises:
            DataError: no index, an image that cannot be read, or images whose
                tensors differ in size (no crop in the preprocessing).
        """
        idx = list(range(len(self))) if indices is None else list(indices)
        if not idx:
            raise DataError("no images selected")
        xs = [self.load(i) for i in idx]
        for i, x in zip(idx, xs, strict=True):
            if x.shape != xs[0].shape:
                raise DataError(
                    f"{self.files[i]}: gives a {tuple(x.shape)} tensor, {self.files[idx[0]]} "
                    f"{tuple(xs[0].shape)}; set a crop in the preprocessing to batch them"
                )
        y = torch.tensor([self.labels[i] for i in idx])
        return torch.stack(xs), y

    def check_labels(self, num_classes: int) -> None:
        """Every label is a class of a model with ``num_classes`` outputs.

        Raises:
            DataError: naming the first label outside ``[0, num_classes)`` and where it
                was read.
        """
        for label, origin in zip(self.labels, self.origins, strict=True):
            if not 0 <= label < num_classes:
                raise DataError(
                    f"{origin}: label {label} is not a class of the model, which has "
                    f"{num_classes} outputs (labels 0 to {num_classes - 1})"
                )


def load_labeled_images(folder: str | Path, preprocess: Preprocess | None = None) -> LabeledImages:
    """Read a labeled image folder in either layout, files in sorted order.

    Files are listed, not decoded: decoding happens in `LabeledImages.load`.

    Args:
        folder: ``images/`` + ``labels.csv`` (columns file,label), or one subfolder
            per class (labels: the sorted folder names' indices).
        preprocess: how images become tensors; `Preprocess.imagenet()` by default.

    Raises:
        DataError: the folder does not exist or holds no images, or labels.csv is
            malformed, lists a file twice or a file outside ``images/`` (naming the
            line), or a class folder holds a symlink to outside the folder.

    Example:
        >>> images = load_labeled_images("val", Preprocess(resize=232))  # doctest: +SKIP
        >>> x, y = images.tensors(range(8))  # doctest: +SKIP
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    has_csv = (root / "labels.csv").is_file()
    listing = read_labels_csv(root) if has_csv else read_class_folders(root)
    if not listing.files:
        raise DataError(
            f"{root}: no images found (expected images/ + labels.csv or class subfolders)"
        )
    return LabeledImages(
        listing.files, listing.labels, listing.origins, preprocess or Preprocess.imagenet()
    )
