"""Fuzzing edgeq.load: a real artifact's JSON and tensors, mutated at random (keys
deleted, values replaced by other types, huge or negative ints, NaN; tensors cut,
recast, reshaped, filled with NaN; SHA-256 rewritten to match). Oracle: the load
succeeds or raises ArtifactError, never anything else."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

import edgeq
from edgeq.artifact import ArtifactError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    qm = edgeq.quantize(edgeq.load_model(f"{__name__}:tiny"), [torch.randn(2, 3, 6, 6)])
    return edgeq.save(qm, tmp_path_factory.mktemp("art") / "m")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON tree (list items by index)."""
    out = [prefix] if prefix else []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for k, v in items:
        out += _paths(v, (*prefix, k))
    return out


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 3, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet="abc:._/ 0", max_size=8),  # cannot spell an importable factory
    st.lists(st.integers(-5, 2**40), max_size=3),
    st.dictionaries(st.sampled_from(["kind", "bits", "x"]), st.integers(-3, 9), max_size=2),
)


def _mutate_json(meta: dict, data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(meta)
        if not paths:
            return
        path = data.draw(st.sampled_from(paths), label="path")
        parent = meta
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES, label="value")


def _mutate_tensor(t: torch.Tensor, how: str) -> torch.Tensor | None:
    if how == "truncate":
        return t.flatten()[: max(t.numel() - 1, 0)]
    if how == "grow":
        return torch.cat([t.flatten(), t.flatten()[:1]])
    if how == "reshape":
        return t.reshape(-1, 1)
    if how in ("float32", "float16", "int64", "int8", "uint8"):
        return t.to(getattr(torch, how))
    if how in ("nan", "inf", "zero", "negative"):
        fill = {"nan": float("nan"), "inf": float("inf"), "zero": 0.0, "negative": -1.0}[how]
        if t.is_floating_point():
            return torch.full_like(t, fill)
        return torch.full_like(t, torch.iinfo(t.dtype).min)
    if how == "huge":
        if t.is_floating_point():
            return torch.full_like(t, torch.finfo(t.dtype).max)
        return torch.full_like(t, torch.iinfo(t.dtype).max)
    return None  # "delete"


HOW = ["truncate", "grow", "reshape", "float32", "float16", "int64", "int8", "uint8"]
HOW += ["nan", "inf", "zero", "negative", "huge", "delete"]


def _mutate_tensors(folder: Path, meta: dict, data: st.DataObject) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    for _ in range(data.draw(st.integers(1, 2), label="tensor mutations")):
        key = data.draw(st.sampled_from(sorted(tensors)), label="tensor")
        new = _mutate_tensor(tensors[key], data.draw(st.sampled_from(HOW), label="how"))
        if new is None:
            del tensors[key]
        else:
            tensors[key] = new.contiguous()
    save_file(tensors, str(path))
    if data.draw(st.booleans(), label="corrupt bytes"):
        raw = bytearray(path.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        raw[at] ^= 0xFF
        path.write_bytes(bytes(raw[: data.draw(st.integers(at, len(raw)), label="cut")]))
    meta["tensors_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()


def _load(folder: Path, trust: bool) -> None:
    with contextlib.suppress(ArtifactError):  # anything else fails the test
        edgeq.load(folder, trust_model_file=trust)


@settings(
    max_examples=800, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data())
def test_mutated_json_loads_or_raises_artifact_error(artifact, data):
    meta = json.loads((artifact / "edgeq.json").read_text())
    original_source = json.dumps(meta["source"])
    _mutate_json(meta, data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        shutil.copytree(artifact, folder)
        (folder / "edgeq.json").write_text(json.dumps(meta))
        # trust only the untouched factory source: a mutated one must never be run
        same_source = (
            isinstance(meta.get("source"), dict) and json.dumps(meta["source"]) == original_source
        )
        _load(folder, trust=same_source)


@settings(
    max_examples=800, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data())
def test_mutated_tensors_load_or_raise_artifact_error(artifact, data):
    meta = json.loads((artifact / "edgeq.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        shutil.copytree(artifact, folder)
        _mutate_tensors(folder, meta, data)
        (folder / "edgeq.json").write_text(json.dumps(meta))
        _load(folder, trust=True)
