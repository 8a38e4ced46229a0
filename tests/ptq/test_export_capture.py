"""capture="export": torch.export graphs lifted into modules, for models whose torch.fx
trace keeps shape arithmetic (vision transformers, channel shuffles)."""

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
from edgeq.graph.lift import export_and_lift
from edgeq.models import ModelLoadError, load_model
from edgeq.ptq import PTQConfig


class TinyViT(nn.Module):
    """Patch embedding, a class token expanded to the batch, one attention block with
    scaled_dot_product_attention, and a head on the class token: ViT's shape code."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, _, _ = x.shape
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(n, -1, -1), x], dim=1)
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
        x = x + self.mlp(self.norm(x))
        return self.head(x[:, 0])


class ShiftedWindows(nn.Module):
    """Swin's moves: pad, roll, a mask built by filling slices of a zero tensor (a
    constant), matmul attention with softmax, and the reverse roll."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)  # B, H, W, C
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, 1, 0, 1))
        x = torch.roll(x, shifts=(-2, -2), dims=(1, 2))
        mask = x.new_zeros((h + 1, w + 1))
        mask[: h // 2, :] = -100.0
        mask[:, : w // 2] = -100.0
        tokens = x.reshape(b, (h + 1) * (w + 1), c)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        scores = torch.matmul(q, k.transpose(-2, -1)) * c**-0.5 + mask.flatten()
        y = torch.matmul(scores.softmax(-1), v).reshape(b, h + 1, w + 1, c)
        y = torch.roll(y, shifts=(2, 2), dims=(1, 2))[:, :h, :w, :]
        return self.head(y.mean((1, 2)))


def _ort(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def test_fx_capture_of_shape_code_exports_and_agrees_with_the_simulation(tmp_path):
    """``n, c, h, w = x.shape`` under torch.fx: the sizes export as Shape -> Gather."""
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(4, 3, 32, 32)
    with pytest.warns(UserWarning, match="stay in float"):  # LayerNorm, attention, ...: float ops
        qm = edgeq.quantize(model, [x], PTQConfig())
    fp32 = edgeq.export_onnx(qm, tmp_path / "f.onnx", x[:1], quantized=False)
    q = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    with torch.no_grad():
        ref, sim = model(x).numpy(), qm(x).numpy()
    for k in (1, 3):  # batch sizes other than the example's
        assert np.abs(_ort(fp32, x[:k]) - ref[:k]).max() < 1e-5
    deployed = _ort(q, x)
    noise = np.abs(sim - ref).max()
    print(f"ORT vs simulation {np.abs(deployed - sim).max():.3g}, quantization noise {noise:.3g}")
    assert np.abs(deployed - sim).max() < 0.5 * noise


def test_vit_shape_code_exports_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(4, 3, 32, 32)
    lifted = export_and_lift(model, (x,))
    with pytest.warns(UserWarning, match="stay in float"):
        qm = edgeq.quantize(lifted, [x], PTQConfig())
    assert {"patch", "qkv", "proj", "mlp.0", "mlp.2", "head"} <= set(qm.placement.quantized_layers)
    fp32 = edgeq.export_onnx(qm, tmp_path / "f.onnx", x[:1], quantized=False)
    q = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    ops = collections.Counter(n.op_type for n in onnx.load(q).graph.node)
    assert ops["Softmax"] == 1
    assert ops["Gemm"] == 5  # every linear layer runs between Q/DQ (QGemm)
    with torch.no_grad():
        ref, sim = model(x).numpy(), qm(x).numpy()
    for k in (1, 3):  # batch sizes other than the example's
        assert np.abs(_ort(fp32, x[:k]) - ref[:k]).max() < 1e-5
    deployed = _ort(q, x)
    # float ops (LayerNorm, softmax, GELU) run in two runtimes: close, not bit-exact
    noise = np.abs(sim - ref).max()
    assert np.abs(deployed - sim).max() < noise


def test_shifted_windows_fold_the_mask_and_export(tmp_path):
    torch.manual_seed(1)
    model, x = ShiftedWindows().eval(), torch.randn(2, 3, 32, 32)
    lifted = export_and_lift(model, (x,))
    names = {str(n.target) for n in lifted.graph.nodes}
    assert "folded_0" in names  # the mask, computed once
    assert not any("fill_" in n or "new_zeros" in n for n in names)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(lifted(x), ref)
    with pytest.warns(UserWarning, match="stay in float"):
        qm = edgeq.quantize(lifted, [x], PTQConfig())
    fp32 = edgeq.export_onnx(qm, tmp_path / "f.onnx", x[:1], quantized=False)
    assert np.abs(_ort(fp32, x) - ref.numpy()).max() < 1e-5
    q = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    with torch.no_grad():
        sim = qm(x).numpy()
    assert np.abs(_ort(q, x) - sim).max() < np.abs(sim - ref.numpy()).max()


@pytest.mark.slow
def test_shufflenet_by_export_capture_is_bit_exact_and_round_trips(tmp_path):
    torch.manual_seed(2)
    shape = (2, 3, 96, 96)
    model = load_model("torchvision:shufflenet_v2_x0_5", capture="export", input_shape=shape)
    assert model.edgeq_source["capture"] == "export"
    x = torch.randn(4, 3, 96, 96)
    with pytest.warns(UserWarning, match="mean"):
        qm = edgeq.quantize(model, [x], PTQConfig())
    # reshapes, transposes and chunks move data: only the final spatial mean computes
    assert qm.placement.float_ops == ["mean (call_method mean)"]
    q = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    with torch.no_grad():
        sim = qm(x).numpy()
    assert np.abs(_ort(q, x) - sim).max() == 0.0
    edgeq.save(qm, tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(edgeq.load(tmp_path / "art")(x), qm(x))


def test_unknown_capture_is_named():
    with pytest.raises(ModelLoadError, match="capture='trace'"):
        load_model("torchvision:resnet18", capture="trace")


class CosineAttention(nn.Module):
    """Swin V2's attention moves: a qkv bias computed from parameters (the key's part
    zeroed), cosine similarity through F.normalize, a clamped learned logit scale."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # B, T, C
        b, t, c = x.shape
        bias = self.qkv.bias.clone()
        bias[c : 2 * c].zero_()
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, t, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=4.6).exp()
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
        return self.head(y.mean(1))


def test_cosine_attention_with_a_computed_bias_exports(tmp_path):
    torch.manual_seed(3)
    model, x = CosineAttention().eval(), torch.randn(3, 3, 32, 32)
    lifted = export_and_lift(model, (x,))
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(lifted(x), ref, atol=1e-6)
    with pytest.warns(UserWarning, match="stay in float"):
        qm = edgeq.quantize(lifted, [x], PTQConfig())
    assert "qkv" in qm.placement.quantized_layers  # its folded bias is a stored tensor now
    fp32 = edgeq.export_onnx(qm, tmp_path / "f.onnx", x[:1], quantized=False)
    ops = collections.Counter(n.op_type for n in onnx.load(fp32).graph.node)
    assert ops["ReduceL2"] == 2  # the two F.normalize
    for k in (1, 3):
        assert np.abs(_ort(fp32, x[:k]) - ref[:k].numpy()).max() < 1e-5
    q = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    with torch.no_grad():
        sim = qm(x).numpy()
    assert np.abs(_ort(q, x) - sim).max() < np.abs(sim - ref.numpy()).max()


def test_multihead_attention_layers_keep_their_names(tmp_path):
    torch.manual_seed(4)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.attn(x, x, x, need_weights=False)
            return self.head(y.mean(1))

    model, x = Block().eval(), torch.randn(2, 6, 16)
    lifted = export_and_lift(model, (x,))
    with pytest.warns(UserWarning, match="stay in float"):
        qm = edgeq.quantize(lifted, [x], PTQConfig())
    assert {"attn.in_proj", "attn.out_proj", "head"} <= set(qm.placement.quantized_layers)
    q = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    with torch.no_grad():
        ref, sim = model(x).numpy(), qm(x).numpy()
    assert np.abs(_ort(q, x) - sim).max() < np.abs(sim - ref).max()
