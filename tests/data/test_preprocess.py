"""Preprocess: validated fields, the dict round trip, and transforms checked against
torchvision's own (ImageNet's bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from edgeq.data import Preprocess, PreprocessError


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (300, 417, 3), dtype=np.uint8))


def _reference_imagenet_transform():
    """edgeq's preprocessing before Preprocess existed (imagenet_transform)."""
    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )


def test_imagenet_is_bit_identical_to_the_previous_transform(photo):
    x = Preprocess.imagenet().transform()(photo)
    assert x.shape == (3, 224, 224)
    assert torch.equal(x, _reference_imagenet_transform()(photo))


def test_every_field_is_applied_like_torchvision(photo):
    p = Preprocess(
        resize=240,
        crop=(200, 180),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        interpolation="bicubic",
        channel_order="bgr",
    )
    ref = transforms.Compose(
        [
            transforms.Resize(240, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop((200, 180)),
            transforms.ToTensor(),
            lambda x: x[[2, 1, 0]],
            transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
        ]
    )
    x = p.transform()(photo)
    assert x.shape == (3, 200, 180)
    assert torch.equal(x, ref(photo))


def test_no_resize_and_no_crop_keep_the_image_size(photo):
    x = Preprocess(resize=None, crop=None, interpolation="nearest").transform()(photo)
    assert x.shape == (3, 300, 417)


def test_describe_is_one_line():
    assert Preprocess.imagenet().describe() == (
        "resize 256 (bilinear), centre crop 224, RGB, "
        "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]"
    )
    p = Preprocess(resize=None, crop=[288, 320], mean=[0, 0, 0], std=[1, 1, 1], channel_order="BGR")
    assert p.describe() == "centre crop 288x320, BGR, mean [0.0, 0.0, 0.0], std [1.0, 1.0, 1.0]"


@pytest.mark.parametrize(
    "p",
    [
        pytest.param(Preprocess.imagenet(), id="imagenet"),
        pytest.param(Preprocess(resize=None, crop=None), id="none"),
        pytest.param(
            Preprocess(crop=(224, 200), interpolation="nearest", channel_order="bgr"), id="hw"
        ),
    ],
)
def test_dict_round_trip_is_exact_and_json_able(p):
    import json

    d = json.loads(json.dumps(p.to_dict()))
    assert d["schema_version"] == 1
    assert Preprocess.from_dict(d) == p


def test_lists_and_strings_from_recipes_are_normalized():
    p = Preprocess(crop=[224, 224], mean=[0, 0.5, 1], interpolation="BICUBIC")
    assert p.crop == (224, 224)
    assert p.mean == (0.0, 0.5, 1.0)
    assert p.interpolation == "bicubic"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"resize": 0}, r"resize=0: expected a positive number", id="resize-0"),
        pytest.param({"resize": 2.5}, r"resize=2\.5: expected a positive", id="resize-float"),
        pytest.param({"resize": True}, r"resize=True: expected a positive", id="resize-bool"),
        pytest.param({"crop": -1}, r"crop=-1: expected a positive number", id="crop-neg"),
        pytest.param({"crop": [1, 2, 3]}, r"crop=\[1, 2, 3\]: expected an int, \[height", id="c3"),
        pytest.param({"crop": "224"}, r"crop='224': expected an int", id="crop-str"),
        pytest.param({"crop": 300}, r"crop=300 is larger than resize=256", id="crop-big"),
        pytest.param({"mean": (0.5, 0.5)}, r"mean=\(0\.5, 0\.5\): expected 3 finite", id="mean2"),
        pytest.param({"mean": [0, "a", 0]}, r"mean=\[0, 'a', 0\]: expected 3", id="mean-str"),
        pytest.param({"std": [1, 0, 1]}, r"std=\[1, 0, 1\]: expected 3 finite positive", id="s0"),
        pytest.param(
            {"std": [1, float("nan"), 1]}, r"std=\[1, nan, 1\]: expected 3 finite", id="nan"
        ),
        pytest.param(
            {"interpolation": "bilnear"},
            r"interpolation='bilnear' is not one of \['bilinear', 'bicubic', 'nearest'\]; "
            r"did you mean 'bilinear'\?",
            id="interp",
        ),
        pytest.param(
            {"channel_order": "rbg"},
            r"channel_order='rbg' is not one of \['rgb', 'bgr'\]; did you mean 'rgb'\?",
            id="order",
        ),
    ],
)
def test_bad_fields_name_the_field_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(PreprocessError, match=message):
        Preprocess(**kwargs)


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(
        PreprocessError,
        match=r"unknown preprocessing key 'crop_size'; did you "
        r"mean 'crop'\?",
    ):
        Preprocess.from_dict({"crop_size": 224})
    with pytest.raises(PreprocessError, match=r"unknown preprocessing key 'zzz' \(valid: \["):
        Preprocess.from_dict({"zzz": 1})


def test_from_dict_refuses_other_versions_and_non_dicts():
    with pytest.raises(PreprocessError, match=r"schema_version=2 is not supported"):
        Preprocess.from_dict({"schema_version": 2})
    with pytest.raises(PreprocessError, match=r"expected a dict of preprocessing fields, got"):
        Preprocess.from_dict([("resize", 256)])  # type: ignore[arg-type]


def test_preprocess_error_is_a_value_error():
    assert issubclass(PreprocessError, ValueError)
