"""Declared preprocessing: torchvision's weights metadata (nothing downloaded) and a
factory's ``edgeq_preprocess``, checked against torchvision's own presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import get_model_weights

import edgeq
from edgeq.data import Preprocess, PreprocessError
from edgeq.models.preprocessing import declared_preprocess


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _declaring(source=None, preprocess=None) -> nn.Module:
    model = nn.Linear(2, 2)
    if source is not None:
        model.edgeq_source = source
    if preprocess is not None:
        model.edgeq_preprocess = preprocess
    return model


def test_torchvision_mobilenet_v2_declares_its_default_weights_preset():
    model = edgeq.load_model("torchvision:mobilenet_v2")
    p = declared_preprocess(model)
    # MobileNet_V2_Weights.DEFAULT is IMAGENET1K_V2, evaluated at 232 / 224
    assert p == Preprocess(resize=232, crop=224, interpolation="bilinear")


def test_the_weights_file_picks_its_own_checkpoint_preset():
    model = _declaring({"kind": "torchvision", "name": "mobilenet_v2"})
    # the checkpoint edgeq's tests use is IMAGENET1K_V1, evaluated at 256 / 224
    p = declared_preprocess(model, weights="/somewhere/mobilenet_v2-b0353104.pth")
    assert p == Preprocess.imagenet()
    assert declared_preprocess(model, weights="my_finetune.pth") == Preprocess(resize=232)


def test_efficientnet_b3_declares_a_bicubic_300_crop():
    p = declared_preprocess(_declaring({"kind": "torchvision", "name": "efficientnet_b3"}))
    assert p == Preprocess(resize=320, crop=300, interpolation="bicubic")


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b3", "inception_v3"])
def test_declared_transform_matches_torchvision_preset(name):
    """Differential oracle: the same tensor as the weights' own transforms()."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (331, 397, 3), np.uint8))
    p = declared_preprocess(_declaring({"kind": "torchvision", "name": name}))
    assert p is not None
    want = get_model_weights(name).DEFAULT.transforms()(img)
    assert torch.equal(p.transform()(img), want)


def test_a_factory_declares_with_edgeq_preprocess():
    declared = {
        "resize": 160,
        "crop": [128, 128],
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bicubic",
        "channel_order": "bgr",
    }
    # the model's own declaration wins over its architecture's
    model = _declaring({"kind": "torchvision", "name": "mobilenet_v2"}, declared)
    p = declared_preprocess(model)
    assert p == Preprocess(160, (128, 128), (0.5,) * 3, (0.5,) * 3, "bicubic", "bgr")


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        pytest.param({"crop": 0}, r"Linear\.edgeq_preprocess: crop=0: expected a positive", id="v"),
        pytest.param(
            {"crop_size": 224},
            r"Linear\.edgeq_preprocess: unknown preprocessing key 'crop_size'; did you mean "
            r"'crop'\?",
            id="key",
        ),
        pytest.param(
            Preprocess(), r"Linear\.edgeq_preprocess: expected a dict of preprocessing", id="obj"
        ),
    ],
)
def test_a_bad_declaration_is_a_clear_error(declared, message):
    with pytest.raises(PreprocessError, match=message):
        declared_preprocess(_declaring(preprocess=declared))


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(None, id="no-source"),
        pytest.param({"kind": "factory", "ref": "m:f"}, id="factory"),
        pytest.param({"kind": "torchvision", "name": "no_such_net"}, id="unknown"),
        pytest.param({"kind": "torchvision", "name": "fasterrcnn_resnet50_fpn"}, id="detection"),
        pytest.param({"kind": "torchvision", "name": "r3d_18"}, id="video"),
    ],
)
def test_nothing_declared_is_none(source):
    assert declared_preprocess(_declaring(source)) is None
