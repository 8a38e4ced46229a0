"""ONNX external data: what models over protobuf's 2 GB limit are written as."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgeq
from edgeq.export import external_data, onnx_bytes
from edgeq.export.external_data import needs_external_data
from edgeq.ptq import PTQConfig


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 36, 10)
    ).eval()


def _run(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
def test_external_data_runs_as_the_single_file_model_does(tmp_path, quantized):
    x = torch.randn(4, 3, 8, 8)
    qm = edgeq.quantize(_net(0), [x], PTQConfig(percentile_search=()))
    inline = edgeq.export_onnx(qm, tmp_path / "inline.onnx", x[:1], quantized=quantized)
    split = edgeq.export_onnx(
        qm, tmp_path / "split.onnx", x[:1], quantized=quantized, external_data=True
    )
    data = sorted(p.name for p in tmp_path.glob("split.onnx.*.data"))
    assert len(data) == 1
    assert split.stat().st_size < 0.1 * inline.stat().st_size  # the weights moved out
    assert onnx_bytes(split) == split.stat().st_size + (tmp_path / data[0]).stat().st_size
    assert onnx_bytes(inline) == inline.stat().st_size
    assert np.array_equal(_run(split, x), _run(inline, x))


def test_re_export_is_deterministic_and_replaces_the_old_data_file(tmp_path):
    x = torch.randn(4, 3, 8, 8)
    path = tmp_path / "m.onnx"
    first = edgeq.quantize(_net(0), [x], PTQConfig(percentile_search=()))
    edgeq.export_onnx(first, path, x[:1], quantized=False, external_data=True)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    edgeq.export_onnx(first, path, x[:1], quantized=False, external_data=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # same bytes
    other = edgeq.quantize(_net(1), [x], PTQConfig(percentile_search=()))
    edgeq.export_onnx(other, path, x[:1], quantized=False, external_data=True)
    data = list(tmp_path.glob("m.onnx.*.data"))
    assert len(data) == 1  # the earlier export's data file is gone
    assert data[0].name not in files  # new contents, new name
    with torch.no_grad():
        ref = other.float_module(x).numpy()
    np.testing.assert_allclose(_run(path, x), ref, atol=1e-5)


def test_models_past_the_limit_go_external_on_their_own(tmp_path, monkeypatch):
    x = torch.randn(4, 3, 8, 8)
    qm = edgeq.quantize(_net(0), [x], PTQConfig(percentile_search=()))
    monkeypatch.setattr(external_data, "_INLINE_LIMIT", 50_000)  # stands in for 2 GB
    edgeq.export_onnx(qm, tmp_path / "int8.onnx", x[:1])  # 25 KB of tensors
    edgeq.export_onnx(qm, tmp_path / "fp32.onnx", x[:1], quantized=False)  # 99 KB
    assert [p.name for p in tmp_path.glob("*.data")] == [
        next(tmp_path.glob("fp32.onnx.*.data")).name
    ]
    assert not needs_external_data(onnx.load(tmp_path / "int8.onnx"))
