"""Checkpoints: bit-exact round trip, atomic replacement, refusals naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeq.train import checkpoint as ckpt_mod
from edgeq.train.checkpoint import (
    Checkpoint,
    TrainingError,
    check_config,
    check_signature,
    load_checkpoint,
    model_signature,
    save_checkpoint,
)


class _Net(nn.Module):
    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4, out)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def _checkpoint(model: nn.Module, epoch: int = 1) -> Checkpoint:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    return Checkpoint(
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        epoch=epoch,
        step=7,
        history=[{"epoch": 1, "loss": 0.25}],
        config={"kind": "train", "lr": 0.1, "epochs": 3, "crop_scale": [0.35, 1.0]},
        signature=model_signature(model),
        rng={"cpu": torch.get_rng_state()},
    )


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Net()
    ck = _checkpoint(model)
    path = save_checkpoint(tmp_path / "checkpoint.pt", ck)
    back = load_checkpoint(path)
    assert back.model.keys() == ck.model.keys()
    assert all(torch.equal(back.model[k], v) for k, v in ck.model.items())
    momentum = ck.optimizer["state"][0]["momentum_buffer"]
    assert torch.equal(back.optimizer["state"][0]["momentum_buffer"], momentum)
    assert back.scheduler["last_epoch"] == 1
    assert (back.epoch, back.step, back.history) == (1, 7, [{"epoch": 1, "loss": 0.25}])
    assert back.config == ck.config
    assert back.signature == ck.signature
    assert torch.equal(back.rng["cpu"], ck.rng["cpu"])


def test_signature_lists_names_shapes_dtypes_sorted() -> None:
    assert model_signature(_Net()) == [
        ("conv.bias", (4,), "float32"),
        ("conv.weight", (4, 2, 3, 3), "float32"),
        ("fc.bias", (3,), "float32"),
        ("fc.weight", (3, 4), "float32"),
        ("steps", (), "int64"),
    ]


def test_a_failed_write_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.pt", _checkpoint(_Net(), epoch=1))
    before = path.read_bytes()

    def half_write(obj: object, f: str) -> None:
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _checkpoint(_Net(), epoch=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


@pytest.mark.parametrize(
    "damage",
    ["truncate", "garbage", "empty"],
)
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.pt", _checkpoint(_Net()))
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint", "empty": b""}[damage]
    )
    with pytest.raises(TrainingError, match=rf"{path}: not a readable checkpoint"):
        load_checkpoint(path)


def test_other_torch_files_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "weights.pt"
    torch.save(_Net().state_dict(), plain)
    with pytest.raises(TrainingError, match=rf"{plain}: not an edgeq training checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(TrainingError, match=r"nowhere\.pt: no checkpoint there"):
        load_checkpoint(tmp_path / "nowhere.pt")


class _Code:
    """Pickled by reference to this class: weights_only loading must refuse it."""


def test_pickled_code_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "edgeq-train-checkpoint", "x": _Code()}, path)
    with pytest.raises(TrainingError, match=r"not a readable checkpoint.*[Ww]eights"):
        load_checkpoint(path)


def test_signature_mismatch_names_first_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    ck = _checkpoint(_Net(out=3))
    check_signature(ck, _Net(out=3), path)  # the same model passes
    with pytest.raises(
        TrainingError,
        match=r"checkpoint\.pt is a checkpoint of another model: first difference at "
        r"'fc\.bias' \(checkpoint: shape \[3\] float32; this model: shape \[5\] float32\)",
    ):
        check_signature(ck, _Net(out=5), path)
    extra = nn.Sequential(_Net(), nn.Linear(1, 1))
    with pytest.raises(
        TrainingError, match=r"first difference at '0\.conv\.bias' \(checkpoint: absent"
    ):
        check_signature(ck, extra, path)


def test_config_mismatch_names_the_field(tmp_path: Path) -> None:
    ck = _checkpoint(_Net())
    path = tmp_path / "checkpoint.pt"
    same = {"kind": "train", "lr": 0.1, "epochs": 9, "crop_scale": (0.35, 1.0)}
    check_config(ck, same, path, may_differ={"epochs"})  # epochs may differ, tuple == list
    with pytest.raises(
        TrainingError, match=r"checkpoint\.pt was written with lr=0\.1; this run has lr=0\.2"
    ):
        check_config(ck, {**same, "lr": 0.2}, path, may_differ={"epochs"})
