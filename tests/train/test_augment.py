"""Random resized crop + flip: known answers, determinism per (seed, epoch, index)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeq.train.augment import (
    CropFlip,
    apply_crop_flip,
    augment_batch,
    crop_flip_params,
    sample_seed,
)


def _images(n: int = 8, size: int = 12) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_flip_of_a_known_tensor_reverses_the_columns() -> None:
    image = torch.arange(12.0).reshape(1, 3, 4)
    out = apply_crop_flip(image, CropFlip(top=0, left=0, height=3, width=4, flip=True))
    assert out.tolist() == [[[3.0, 2.0, 1.0, 0.0], [7.0, 6.0, 5.0, 4.0], [11.0, 10.0, 9.0, 8.0]]]
    # the input is not changed, and a whole-image crop without flip is an exact copy
    assert image.tolist() == torch.arange(12.0).reshape(1, 3, 4).tolist()
    same = apply_crop_flip(image, CropFlip(0, 0, 3, 4, flip=False))
    assert torch.equal(same, image)
    assert same.data_ptr() != image.data_ptr()


def test_crop_is_resized_bilinearly_to_the_input_size() -> None:
    image = torch.arange(36.0).reshape(1, 6, 6)
    box = CropFlip(top=1, left=2, height=3, width=3, flip=False)
    out = apply_crop_flip(image, box)
    reference = F.interpolate(
        image[None, :, 1:4, 2:5], size=(6, 6), mode="bilinear", align_corners=False
    )[0]
    assert out.shape == (1, 6, 6)
    assert torch.equal(out, reference)
    # the crop's corners are the crop's corner pixels (bilinear upsampling clamps there)
    assert out[0, 0, 0].item() == image[0, 1, 2].item()
    assert out[0, -1, -1].item() == image[0, 3, 4].item()


def test_full_scale_on_a_square_image_is_the_image_or_its_mirror() -> None:
    images = _images(64)
    out = augment_batch(images, torch.arange(64), seed=0, epoch=0, scale=(1.0, 1.0))
    flipped = [torch.equal(o, x.flip(-1)) for o, x in zip(out, images, strict=True)]
    kept = [torch.equal(o, x) for o, x in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    # p = 0.5: 64 draws give 32 +- 12 flips (3 standard deviations)
    assert 20 <= sum(flipped) <= 44, sum(flipped)


def test_crop_boxes_respect_scale_ratio_and_bounds() -> None:
    h = w = 64
    areas, flips = [], 0
    for i in range(300):
        g = torch.Generator().manual_seed(sample_seed(7, 0, i))
        p = crop_flip_params(h, w, g, scale=(0.35, 1.0))
        assert p.top >= 0
        assert p.top + p.height <= h
        assert p.left >= 0
        assert p.left + p.width <= w
        # rounding each side to whole pixels moves the area and ratio by a little
        assert 0.35 * 0.95 <= p.height * p.width / (h * w) <= 1.0
        assert 3 / 4 * 0.95 <= p.width / p.height <= 4 / 3 * 1.05
        areas.append(p.height * p.width / (h * w))
        flips += p.flip
    assert min(areas) < 0.45
    assert max(areas) > 0.9
    assert 120 <= flips <= 180


def test_same_seed_epoch_index_same_image_whatever_the_batch() -> None:
    images = _images(8)
    a = augment_batch(images, torch.arange(8), seed=5, epoch=2, scale=(0.35, 1.0))
    # the same samples, in another order and in other batches
    perm = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    b = augment_batch(images[perm], perm, seed=5, epoch=2, scale=(0.35, 1.0))
    assert torch.equal(b, a[perm])
    c = augment_batch(images[:3], torch.arange(3), seed=5, epoch=2, scale=(0.35, 1.0))
    assert torch.equal(c, a[:3])


def test_global_rng_does_not_matter() -> None:
    images = _images(4)
    torch.manual_seed(0)
    a = augment_batch(images, torch.arange(4), seed=1, epoch=0, scale=(0.35, 1.0))
    torch.manual_seed(12345)
    torch.rand(100)
    b = augment_batch(images, torch.arange(4), seed=1, epoch=0, scale=(0.35, 1.0))
    assert torch.equal(a, b)


@pytest.mark.parametrize(("seed", "epoch"), [(1, 1), (2, 0)], ids=["another-epoch", "another-seed"])
def test_another_epoch_or_seed_gives_other_images(seed: int, epoch: int) -> None:
    images = _images(8)
    base = augment_batch(images, torch.arange(8), seed=1, epoch=0, scale=(0.35, 1.0))
    other = augment_batch(images, torch.arange(8), seed=seed, epoch=epoch, scale=(0.35, 1.0))
    differing = sum(not torch.equal(x, y) for x, y in zip(base, other, strict=True))
    assert differing >= 7, differing


def test_sample_seeds_are_distinct_for_neighbours() -> None:
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(100)}
    assert len(seeds) == 900
    assert all(0 <= s < 2**64 for s in seeds)


def test_batch_is_not_modified_and_keeps_dtype() -> None:
    images = _images(4).double()
    before = images.clone()
    out = augment_batch(images, torch.arange(4), seed=0, epoch=0, scale=(0.35, 1.0))
    assert torch.equal(images, before)
    assert out.dtype == torch.float64
    assert out.shape == images.shape
    assert math.isfinite(float(out.sum()))


@pytest.mark.parametrize(
    ("images", "indices", "match"),
    [
        (
            torch.zeros(2, 3, 4),
            torch.arange(2),
            r"\(B, C, H, W\) float images; got shape \(2, 3, 4\)",
        ),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.arange(2), r"torch.uint8"),
        (torch.zeros(2, 1, 4, 4), torch.arange(3), r"indices must have shape \(2,\)"),
    ],
    ids=["3d", "uint8", "index-count"],
)
def test_bad_batches_are_refused(images: torch.Tensor, indices: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        augment_batch(images, indices, seed=0, epoch=0, scale=(0.5, 1.0))
