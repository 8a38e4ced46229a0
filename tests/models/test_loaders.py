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


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_or_junk_weights_files_are_named(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(small().state_dict(), str(good))
    else:
        torch.save(small().state_dict(), good)
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"\x00garbage" * 100)
    assert set(load_state_dict_file(good)) == set(small().state_dict())
    for bad in (truncated, junk):
        with pytest.raises(ModelLoadError, match=rf"{bad.name}: not a valid checkpoint"):
            load_state_dict_file(bad)


def test_factory_reference():
    model = load_model(f"{__name__}:small")
    assert isinstance(model[0], nn.Conv2d)
    assert model.edgeq_source == {"kind": "factory", "ref": f"{__name__}:small"}


class Payload:
    """Any class: unpickling it would import and run the module that defines it."""


def test_a_checkpoint_pickling_objects_is_refused_without_suggesting_the_unsafe_fix(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": small().state_dict(), "extra": Payload()}, path)
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "ckpt.pth: not a valid checkpoint: it holds pickled Python objects" in message
    assert "Payload" in message
    assert "edgeq does not unpickle code" in message
    assert "model.state_dict()" in message
    assert ".safetensors" in message
    assert "weights_only=False" not in message
    assert "weights_only" not in message  # torch's advice is not echoed at all


def test_junk_pickles_do_not_echo_torchs_advice(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"junk\.pth: not a valid checkpoint") as info:
        load_state_dict_file(path)
    assert "weights_only" not in str(info.value)
