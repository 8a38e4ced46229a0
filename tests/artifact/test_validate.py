"""edgeq.load checks every field of edgeq.json and every tensor before using it: each
class of bad input is an ArtifactError naming the key."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import edgeq
from edgeq.artifact import ArtifactError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    qm = edgeq.quantize(edgeq.load_model(f"{__name__}:tiny"), [torch.randn(4, 3, 8, 8)])
    return edgeq.save(qm, tmp_path_factory.mktemp("art") / "m")


Edit = Callable[[Any], None]


def tampered(
    artifact: Path, tmp_path: Path, meta_edit: Edit | None = None, tensor_edit: Edit | None = None
) -> Path:
    """A copy of ``artifact`` with its JSON and/or tensors edited (SHA-256 rewritten to
    match: the attacker can)."""
    folder = tmp_path / "t"
    shutil.copytree(artifact, folder)
    meta = json.loads((folder / "edgeq.json").read_text())
    if tensor_edit is not None:
        tensors = load_file(str(folder / "model.safetensors"))
        tensor_edit(tensors)
        save_file(tensors, str(folder / "model.safetensors"))
        data = (folder / "model.safetensors").read_bytes()
        meta["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    if meta_edit is not None:
        meta_edit(meta)
    (folder / "edgeq.json").write_text(json.dumps(meta))
    return folder


def test_the_untouched_copy_loads_bit_exact(artifact, tmp_path):
    x = torch.randn(2, 3, 8, 8)
    a = edgeq.load(artifact, trust_model_file=True)
    b = edgeq.load(tampered(artifact, tmp_path, lambda m: None), trust_model_file=True)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def _set(path: str, value: Any) -> Edit:
    *parents, last = path.split("/")

    def edit(meta: dict) -> None:
        for p in parents:
            meta = meta[p]
        meta[last] = value

    return edit


def _delete(path: str) -> Edit:
    *parents, last = path.split("/")

    def edit(meta: dict) -> None:
        for p in parents:
            meta = meta[p]
        del meta[last]

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_delete("source/kind"), r"edgeq\.json: source\.kind missing"),
        (_delete("layers/fc/bits"), r"layers\['fc'\]\.bits missing"),
        (_delete("config"), r"edgeq\.json: config missing"),
        (_set("layers/fc/bits", 3), r"layers\['fc'\]\.bits=3: expected one of 2, 4, 8"),
        (_set("layers/fc/bits", 0), r"layers\['fc'\]\.bits=0: expected one of 2, 4, 8"),
        (_set("layers/fc/bits", True), r"layers\['fc'\]\.bits=True: expected one of"),
        (_set("layers/fc/bits", 4), r"layers\['fc'\]\.bits=4: expected 8 \(the config"),
        (_set("layers/fc/signed", "yes"), r"layers\['fc'\]\.signed='yes': expected true or"),
        (_set("layers/fc/shape", [-1, 8]), r"layers\['fc'\]\.shape\.0=-1: expected an int in"),
        (_set("layers/fc/shape", [2**40, 2**20]), r"layers\['fc'\]\.shape=.*expected \[3, 8\]"),
        (_set("layers/fc/shape", [3.0, 8]), r"layers\['fc'\]\.shape\.0=3\.0: expected an int"),
        (_set("layers/fc/weight_scale_shape", [2**42]), r"weight_scale_shape=.*expected \[3\]"),
        (_set("layers/fc/bias", "int64"), r"layers\['fc'\]\.bias='int64': expected null"),
        (_set("layers/fc/bias", None), r"layers\['fc'\]\.bias=None: .*has a bias"),
        (_set("layers/nope", {}), r"layers\['nope'\]\.bits missing"),
        (_set("layers", []), r"edgeq\.json: layers=\[\]: expected an object"),
        (_set("schema_version", True), r"schema_version True; this edgeq reads 2"),
        (_set("format", "onnx"), r"format='onnx': expected 'edgeq-packed'"),
        (_set("tensors_sha256", 5), r"tensors_sha256=5: expected a string"),
        (_set("source", "torchvision:resnet18"), r"source='torchvision:resnet18': expected an"),
        (_set("source/kind", "pickle"), r"source\.kind='pickle': expected one of"),
        (_set("source", {"kind": "torchvision", "name": "os.system"}), r"source\.name='os\.sys"),
        (_set("source", {"kind": "torchvision", "name": 18}), r"source\.name=18: expected a t"),
        (_set("source/capture", "jit"), r"source\.capture='jit': expected 'fx' or 'export'"),
        (_set("config/weight/bits", 64), r"edgeq\.json: config: not a valid PTQConfig"),
        (_delete("config/weight"), r"config: not a valid PTQConfig \(KeyError"),
        (_set("config/overrides", [{"match": "fc", "oops": 1}]), r"config: not a valid PTQConfig"),
        (_set("config", [1, 2]), r"edgeq\.json: config=\[1, 2\]: expected an object"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_json_fields_are_named(artifact, tmp_path, edit, match):
    folder = tampered(artifact, tmp_path, edit)
    with pytest.raises(ArtifactError, match=match):
        edgeq.load(folder, trust_model_file=True)


@pytest.mark.parametrize(
    "text",
    ["{oops", '{"format": 1' + "0" * 5000 + "}", "[1, 2]", "\udcff"],
    ids=["syntax", "5000-digit-int", "not-an-object", "bad-utf8"],
)
def test_unreadable_json_is_named(artifact, tmp_path, text):
    folder = tampered(artifact, tmp_path)
    data = text.encode("utf-8", "surrogateescape")
    (folder / "edgeq.json").write_bytes(data)
    with pytest.raises(
        ArtifactError, match=r"edgeq\.json: (corrupt JSON|\[1, 2\]: expected an object)"
    ):
        edgeq.load(folder)


def _tensor(key: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Edit:
    def edit(tensors: dict) -> None:
        out = fn(tensors[key])
        if out is None:
            del tensors[key]
        else:
            tensors[key] = out.contiguous()

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_tensor("fc.weight_q", lambda t: t[:-1]), r"\['fc\.weight_q'\]: torch\.uint8 \[23\]"),
        (_tensor("fc.weight_q", lambda t: t.to(torch.int8)), r"weight_q'\]: torch\.int8 \[24\]"),
        (_tensor("fc.bias_q", lambda t: t.long()), r"\['fc\.bias_q'\]: torch\.int64 \[3\]"),
        (_tensor("fc.bias_q", lambda t: t[:2]), r"bias_q'\]: .*expected torch\.int32 \[3\]"),
        (_tensor("fc.weight_scale", lambda t: t.reshape(3, 1)), r"weight_scale'\]: .*\[3, 1\]"),
        (_tensor("fc.weight_scale", lambda t: t.double()), r"weight_scale'\]: torch\.float64"),
        (_tensor("fc.weight_scale", lambda t: t * float("nan")), r"holds nan: scales must be"),
        (_tensor("fc.weight_scale", lambda t: t * 0), r"weight_scale'\]: holds 0\.0: scales"),
        (_tensor("fc.weight_scale", lambda t: -t), r"fc\.weight_scale'\]: holds -"),
        (_tensor("act_quant_0.scale", lambda t: t / 0), r"act_quant_0\.scale'\]: holds inf"),
        (
            _tensor("act_quant_0.zero_point", lambda t: t + 300),
            r"act_quant_0\.zero_point'\]: holds values in \[\d+, \d+\]: zero points must lie "
            r"in \[0, 255\]",
        ),
        (_tensor("fc.weight_q", lambda t: None), r"missing \['fc\.weight_q'\]"),
        (
            _tensor("conv.0.input_channel_pad", lambda t: torch.tensor([-1, 2])),
            r"conv\.0\.input_channel_pad'\]: holds \[-1, 2\]: expected two counts >= 0 adding "
            r"up to 1",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_tensors_are_named(artifact, tmp_path, edit, match):
    folder = tampered(artifact, tmp_path, tensor_edit=edit)
    with pytest.raises(ArtifactError, match=rf"model\.safetensors: .*{match}"):
        edgeq.load(folder, trust_model_file=True)


def test_an_extra_tensor_is_named(artifact, tmp_path):
    def add(tensors: dict) -> None:
        tensors["evil"] = torch.zeros(1)

    folder = tampered(artifact, tmp_path, tensor_edit=add)
    with pytest.raises(ArtifactError, match=r"unexpected \['evil'\]"):
        edgeq.load(folder, trust_model_file=True)


@pytest.mark.parametrize("cut", [8, 100, -1], ids=["header-length", "header", "last-byte"])
def test_a_corrupt_safetensors_file_with_a_matching_checksum_is_named(artifact, tmp_path, cut):
    folder = tampered(artifact, tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:cut])
    meta = json.loads((folder / "edgeq.json").read_text())
    meta["tensors_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "edgeq.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"model\.safetensors: not a readable safetensors"):
        edgeq.load(folder, trust_model_file=True)


def test_a_forged_huge_shape_is_refused_before_any_allocation(artifact, tmp_path, monkeypatch):
    """4 TB of scales: the rebuilt layer's shape is the oracle, checked first."""
    real_empty = torch.empty

    def guarded_empty(*size: Any, **kw: Any) -> torch.Tensor:
        shape = size[0] if len(size) == 1 and isinstance(size[0], list | tuple) else size
        assert torch.Size(shape).numel() < 2**30, f"allocation of {shape} attempted"
        return real_empty(*size, **kw)

    folder = tampered(artifact, tmp_path, _set("layers/fc/weight_scale_shape", [2**40, 4]))
    monkeypatch.setattr(torch, "empty", guarded_empty)
    with pytest.raises(ArtifactError, match=r"weight_scale_shape=\[1099511627776, 4\]"):
        edgeq.load(folder, trust_model_file=True)
