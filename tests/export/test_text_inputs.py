"""Text-model inputs in the ONNX export: int64 token ids and masks keep their dtype,
integer buffers export as such, embeddings are Gather, and sizes read from the batch
and sequence dimensions stay dynamic; under torch.fx and under capture="export"."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeq
from edgeq.export import ExportError
from edgeq.graph import capture
from edgeq.graph.lift import export_and_lift

AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
VOCAB, POSITIONS = 50, 32


class TinyTextEncoder(nn.Module):
    """A BERT-style block: token + position embeddings (an int64 buffer sliced to the
    sequence length), an additive mask from the int64 attention mask, heads split with
    ``view(x.size(0), x.size(1), h, d)``, merged with ``reshape(x.shape[0], -1, c)``,
    and mean pooling over the mask. ``sdpa``: attention as scaled_dot_product_attention
    with the mask (what transformers runs), else written out with ``@`` and softmax."""

    def __init__(self, dim: int = 16, heads: int = 2, *, sdpa: bool = False) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.tokens = nn.Embedding(VOCAB, dim)
        self.positions = nn.Embedding(POSITIONS, dim)
        self.register_buffer("position_ids", torch.arange(POSITIONS).unsqueeze(0))
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        _, t = input_ids.shape
        x = self.norm(self.tokens(input_ids) + self.positions(self.position_ids[:, :t]))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = [y.view(x.size(0), x.size(1), self.heads, -1).transpose(1, 2) for y in (q, k, v)]
        mask = attention_mask[:, None, None, :].to(torch.float32)
        additive = (1.0 - mask) * torch.finfo(torch.float32).min
        if self.sdpa:
            a = F.scaled_dot_product_attention(*heads, attn_mask=additive)
        else:
            scores = heads[0] @ heads[1].transpose(-1, -2) * 0.25 + additive
            a = F.softmax(scores, dim=-1) @ heads[2]
        x = x + self.out(a.transpose(1, 2).reshape(x.shape[0], -1, x.shape[-1]))
        weights = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return self.head(pooled)


def _tokens(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[0, length // 2 :] = 0  # one padded sentence
    return ids, mask


def _run(path, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]


def _captured(how: str, model: nn.Module, example: tuple[torch.Tensor, ...]) -> nn.Module:
    return capture(model) if how == "fx" else export_and_lift(model, example, dynamic_axes=AXES)


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul-softmax", "sdpa"])
@pytest.mark.parametrize("how", ["fx", "export"])
def test_float_export_keeps_int64_inputs_and_dynamic_sequence(tmp_path, how, sdpa):
    torch.manual_seed(0)
    model, example = TinyTextEncoder(sdpa=sdpa).eval(), _tokens(2, 7)
    gm = _captured(how, model, example)
    axes = AXES if how == "fx" else None  # export: the capture recorded them
    path = edgeq.export_onnx(gm, tmp_path / "m.onnx", example, quantized=False, dynamic_axes=axes)
    graph = onnx.load(path).graph
    for value in graph.input:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64, value.name
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"]
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["Gather"] >= 2  # the two embedding tables
    for batch, length in [(2, 7), (3, 11), (1, 5)]:  # other batch and sequence sizes
        ids, mask = _tokens(batch, length, seed=batch)
        with torch.no_grad():
            ref = model(ids, mask).numpy()
        np.testing.assert_allclose(_run(path, ids, mask), ref, atol=1e-5, rtol=1e-5)


def test_int64_buffer_exports_as_int64(tmp_path):
    torch.manual_seed(0)
    model, example = TinyTextEncoder().eval(), _tokens(2, 7)
    path = edgeq.export_onnx(capture(model), tmp_path / "m.onnx", example, quantized=False)
    inits = {i.name: i for i in onnx.load(path).graph.initializer}
    ids = [i for name, i in inits.items() if "position_ids" in name]
    assert ids, sorted(inits)
    assert ids[0].data_type == onnx.TensorProto.INT64


def test_static_quantization_matches_onnxruntime(tmp_path):
    # with sdpa: an additive mask written out as `scores + mask` would become an
    # integer add (QuantAdd), whose range cannot hold finfo.min (see the report)
    torch.manual_seed(0)
    model = TinyTextEncoder(sdpa=True).eval()
    batches = [_tokens(4, 9, seed=s) for s in range(4)]
    gm = export_and_lift(model, batches[0], dynamic_axes=AXES)
    config = edgeq.PTQConfig(bias_correction=False, percentile_search=())
    with pytest.warns(UserWarning, match="stay in float"):
        qm = edgeq.quantize(gm, lambda m: [m(*b) for b in batches], config)
    path = edgeq.export_onnx(qm, tmp_path / "q.onnx", batches[0])
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["Gemm"] == 3
    assert ops["QuantizeLinear"] > 0
    ids, mask = _tokens(3, 12, seed=9)
    with torch.no_grad():
        sim = qm.module(ids, mask).numpy()
    # float LayerNorm, softmax and pooling run in two runtimes: close, not bit-exact
    np.testing.assert_allclose(_run(path, ids, mask), sim, atol=1e-4)


@pytest.mark.dynamic_vs_ort
def test_dynamic_quantization_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model, example = TinyTextEncoder().eval(), _tokens(2, 7)
    qm = edgeq.quantize(capture(model), [], edgeq.PTQConfig(mode="dynamic"))
    path = edgeq.export_onnx(qm, tmp_path / "d.onnx", example, dynamic_axes=AXES)
    ids, mask = _tokens(3, 10, seed=3)
    with torch.no_grad():
        sim = qm.module(ids, mask).numpy()
    np.testing.assert_allclose(_run(path, ids, mask), sim, atol=1e-5)


class Reshape4(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, 4).sum(1) * 2 - 1


@pytest.mark.parametrize("how", ["fx", "export"])
def test_reshape_on_the_batch_size_exports(tmp_path, how):
    x = torch.randn(2, 3, 8)
    model = Reshape4()
    gm = capture(model) if how == "fx" else export_and_lift(model, (x,))
    path = edgeq.export_onnx(gm, tmp_path / "r.onnx", x, quantized=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = torch.randn(5, 3, 8)
    np.testing.assert_allclose(
        session.run(None, {"input": y.numpy()})[0], model(y).numpy(), atol=1e-5
    )


class Untranslatable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)


def test_untranslatable_node_is_named_with_its_source_line(tmp_path):
    with pytest.raises(ExportError, match=r"cumsum.*test_text_inputs.py:\d+: return torch.cumsum"):
        edgeq.export_onnx(capture(Untranslatable()), tmp_path / "u.onnx", torch.randn(2, 3))


def test_dynamic_axes_naming_no_input_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"names \['ids'\], which are not inputs"):
        edgeq.export_onnx(
            capture(Reshape4()), tmp_path / "r.onnx", torch.randn(2, 3, 8), dynamic_axes={"ids": {}}
        )


def test_dynamic_axis_the_model_cannot_vary_is_refused(tmp_path):
    model, x = nn.Linear(8, 2), torch.randn(2, 8)
    with pytest.raises(ExportError, match="'features' axis grown"):
        edgeq.export_onnx(
            capture(model), tmp_path / "l.onnx", x, dynamic_axes={"input": {1: "features"}}
        )
