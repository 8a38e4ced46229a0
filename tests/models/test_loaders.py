"""Model references: torchvision names, factories, weights files, refused formats."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgeq.models import ModelLoadError, load_model, load_state_dict_file


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def test_torchvision_name_with_a_safetensors_weights_file(tmp_path):
    ref = load_model("torchvision:resnet18")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = load_model("torchvision:resnet18", weights=path)
    assert torch.equal(model.fc.weight, ref.fc.weight)
    assert model.edgeq_source == {"kind": "torchvision", "name": "resnet18"}


def test_weights_that_do_not_fit_are_named(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(small().state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"w\.pth: does not fit torchvision:resnet18"):
        load_model("torchvision:resnet18", weights=path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small(), path)  # a whole pickled module, not a state dict
    with pytest.raises(ModelLoadError, match="not a valid checkpoint"):
        load_state_dict_file(path)


def test_factory_reference():
    model = load_model(f"{__name__}:small")
    assert isinstance(model[0], nn.Conv2d)
    assert model.edgeq_source == {"kind": "factory", "ref": f"{__name__}:small"}
