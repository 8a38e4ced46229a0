"""The offline sample photographs: the default crops are those edgeq always gave (bit
for bit), and a Preprocess changes their size and normalization."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms

from edgeq.data import DataError, Preprocess
from edgeq.data.samples import sample_photo_batch, sample_photo_paths

pytest.importorskip("skimage")


def _reference_batch() -> torch.Tensor:
    """sample_photo_batch before Preprocess existed."""
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


def test_default_crops_are_unchanged():
    x = sample_photo_batch()
    assert x.shape == (80, 3, 224, 224)
    assert torch.equal(x, _reference_batch())


def test_preprocess_sets_size_and_normalization():
    p = Preprocess(resize=160, crop=(128, 144), mean=(0, 0, 0), std=(1, 1, 1), channel_order="bgr")
    x = sample_photo_batch(p)
    assert x.shape == (80, 3, 128, 144)
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0


def test_no_crop_is_an_error():
    with pytest.raises(DataError, match=r"sample photographs need a crop size \(got resize 256"):
        sample_photo_batch(Preprocess(crop=None))


def test_missing_scikit_image_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "skimage.data", None)  # import fails
    with pytest.raises(DataError, match=r"scikit-image is not installed \(pip install"):
        sample_photo_paths()


def test_missing_photographs_are_named(monkeypatch):
    import edgeq.data.samples as samples

    monkeypatch.setattr(samples, "PHOTOS", ("no_such_photo.png",))
    with pytest.raises(DataError, match=r"scikit-image's sample photographs are missing"):
        sample_photo_paths()
