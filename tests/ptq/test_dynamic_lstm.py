"""Dynamic quantization of LSTMs: simulation, ONNX export (DynamicQuantizeLSTM), artifact."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgeq
from edgeq.graph import QuantLSTM
from edgeq.graph.qlstm import ort_row_block
from edgeq.ptq import PTQConfig


class Tagger(nn.Module):
    """Linear embedding -> (bi)LSTM -> the last step's features -> classifier."""

    def __init__(self, layers: int = 2, bidirectional: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.lstm = nn.LSTM(
            32, 48, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        self.head = nn.Linear(48 * (2 if bidirectional else 1), 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(torch.relu(self.embed(x)))
        return self.head(y[:, -1, :])


class Encoder(nn.Module):
    """Returns the LSTM's outputs and final states, starting from given states."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(24, 64, num_layers=2)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        y, (h, c) = self.lstm(x, (h0, c0))
        return y.sum(0) + h[-1] + c[-1]


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / max(((ref - x) ** 2).sum(), 1e-30)))


def _ort(path, feeds: dict[str, np.ndarray], threads: int = 2) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _quantized(model: nn.Module, x, threads: int = 2) -> edgeq.QuantizedModel:
    return edgeq.quantize(model, [x], PTQConfig(mode="dynamic", runtime_threads=threads))


def test_lstm_layers_become_dynamic_quantized_products():
    torch.manual_seed(0)
    model, x = Tagger().eval(), torch.randn(4, 20, 16)
    qm = _quantized(model, x)
    assert qm.placement.quantized_layers == ["embed", "lstm", "head"]
    lstm = qm.module.lstm
    assert isinstance(lstm, QuantLSTM)
    assert sorted(n for n, _ in lstm.named_children()) == sorted(
        f"l{i}_{k}{s}" for i in (0, 1) for k in ("ih", "hh") for s in ("", "_reverse")
    )
    assert all(m.dynamic and m.quantized for m in lstm.children())
    with torch.no_grad():
        ref, sim = model(x).numpy(), qm(x).numpy()
    assert _sqnr(ref, sim) > 30  # 8-bit products: measured 41-48 dB


@pytest.mark.dynamic_vs_ort
@pytest.mark.parametrize(("layers", "bidirectional", "batch"), [(1, False, 1), (1, True, 8)])
def test_single_layer_lstm_matches_onnxruntime_to_float_rounding(
    tmp_path, layers, bidirectional, batch
):
    """Same quantized products as DynamicQuantizeLSTM (whole sequence for the input,
    one block of rows per thread for the hidden state); only the runtime's sigmoid/tanh
    approximations and addition order differ."""
    torch.manual_seed(1)
    model, x = Tagger(layers, bidirectional).eval(), torch.randn(batch, 20, 16)
    qm = _quantized(model, x)
    path = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["DynamicQuantizeLSTM"] == layers
    assert ops["LSTM"] == 0
    with torch.no_grad():
        sim = qm(x).numpy()
    assert np.abs(_ort(path, {"input": x.numpy()}) - sim).max() < 1e-6


@pytest.mark.dynamic_vs_ort
def test_stacked_lstm_matches_onnxruntime_far_below_quantization_noise(tmp_path):
    """Between layers, a 1e-7 difference can move one value of the next layer's input
    across a rounding boundary: stacked layers agree to about 1e-4, still 20 dB or more
    below the quantization noise itself."""
    torch.manual_seed(2)
    model, x = Tagger(2, True).eval(), torch.randn(8, 20, 16)
    qm = _quantized(model, x)
    path = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    with torch.no_grad():
        ref, sim = model(x).numpy(), qm(x).numpy()
    deployed = _ort(path, {"input": x.numpy()})
    assert _sqnr(sim, deployed) > _sqnr(ref, sim) + 20


def test_batch_blocks_follow_the_runtime_threads():
    assert ort_row_block(1, 64, 2) == 1
    assert ort_row_block(8, 64, 2) == 4
    assert ort_row_block(7, 64, 4) == 2
    assert ort_row_block(3, 512, 2) == 3  # small batch, wide hidden: not split
    assert ort_row_block(5, 512, 2) == 3


@pytest.mark.dynamic_vs_ort
def test_hidden_state_blocks_matter_and_are_simulated(tmp_path):
    """With one thread the runtime quantizes the whole batch's hidden state at once;
    with two, two blocks: the simulation built for the other count is measurably off."""
    torch.manual_seed(3)
    model, x = Tagger(1, False).eval(), torch.randn(8, 20, 16)
    one, two = _quantized(model, x, threads=1), _quantized(model, x, threads=2)
    path = edgeq.export_onnx(two, tmp_path / "q.onnx", x[:1])
    with torch.no_grad():
        sim1, sim2 = one(x).numpy(), two(x).numpy()
    for threads, right, wrong in ((1, sim1, sim2), (2, sim2, sim1)):
        deployed = _ort(path, {"input": x.numpy()}, threads)
        assert np.abs(deployed - right).max() < 1e-6
        assert np.abs(deployed - wrong).max() > 1e-5


@pytest.mark.dynamic_vs_ort
def test_float_lstm_exports_as_onnx_lstm_with_initial_states(tmp_path):
    torch.manual_seed(4)
    model = Encoder().eval()
    x, h0, c0 = torch.randn(12, 3, 24), torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    config = PTQConfig(mode="dynamic", runtime_threads=2)
    qm = edgeq.quantize(model, lambda m: m(x, h0, c0), config)
    feeds = {"x": x.numpy(), "h0": h0.numpy(), "c0": c0.numpy()}
    fp32 = edgeq.export_onnx(qm, tmp_path / "f.onnx", (x, h0, c0), quantized=False)
    assert collections.Counter(n.op_type for n in onnx.load(fp32).graph.node)["LSTM"] == 2
    with torch.no_grad():
        ref = model(x, h0, c0).numpy()
        sim = qm.module(x, h0, c0).numpy()
    assert np.abs(_ort(fp32, feeds) - ref).max() < 1e-5
    q = edgeq.export_onnx(qm, tmp_path / "q.onnx", (x, h0, c0))
    assert _sqnr(sim, _ort(q, feeds)) > _sqnr(ref, sim) + 20


def test_dynamic_lstm_artifact_round_trip_is_exact(tmp_path):
    torch.manual_seed(5)
    model, x = Tagger().eval(), torch.randn(4, 20, 16)
    model.edgeq_source = {"kind": "factory", "ref": f"{__name__}:Tagger"}
    qm = _quantized(model, x)
    edgeq.save(qm, tmp_path / "art")
    restored = edgeq.load(tmp_path / "art", trust_model_file=True)
    with torch.no_grad():
        assert torch.equal(restored(x), qm(x))


def test_static_mode_keeps_lstms_in_float_and_says_so():
    torch.manual_seed(6)
    model, x = Tagger(1, False).eval(), torch.randn(4, 20, 16)
    with pytest.warns(UserWarning, match="lstm"):
        qm = edgeq.quantize(model, [x], PTQConfig())
    assert any(op.startswith("lstm") for op in qm.placement.float_ops)
    assert "lstm" not in qm.placement.quantized_layers
