"""Per-layer error of a quantized model: weight SQNR and output-activation SQNR.

Activation SQNR compares each quantized layer's output with the float model's output
of the same layer on the same input batch (errors accumulated from earlier layers
included: it shows where the error builds up).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeq.graph.qmodules import QuantConv2d, QuantLinear
from edgeq.quant import sqnr_db


@dataclass
class LayerError:
    name: str
    kind: str
    weight_bits: int
    weight_sqnr_db: float
    activation_sqnr_db: float | None
    weight: torch.Tensor  # float weight (for histograms)
    weight_levels_grid: torch.Tensor  # dequantized levels of the worst channel
    activation: torch.Tensor | None  # float activation sample
    activation_range: tuple[float, float] | None  # output quantizer range


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "relu":
        return F.relu(y)
    if activation == "relu6":
        return F.hardtanh(y, 0.0, 6.0)
    return y


@torch.no_grad()
def per_layer_errors(
    quantized: nn.Module, float_model: nn.Module, x: torch.Tensor, *, sample: int = 20000
) -> list[LayerError]:
    """Weight and activation SQNR of every quantized conv/linear layer, in graph order."""
    layers = {
        n: m
        for n, m in quantized.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear) and m.quantized
    }
    float_mods = dict(float_model.named_modules())
    q_out: dict[str, torch.Tensor] = {}
    f_out: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in layers.items():
        hooks.append(
            m.register_forward_hook(lambda mod, i, o, n=name: q_out.__setitem__(n, o.detach()))
        )
        fm = float_mods.get(name)
        if fm is not None:
            hooks.append(
                fm.register_forward_hook(
                    lambda mod, i, o, n=name, a=m.activation: f_out.__setitem__(n, _act(o, a))
                )
            )
    try:
        quantized(x)
        float_model(x)
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(0)
    out = []
    for name, m in layers.items():
        w = m.weight.detach()
        w_hat, _ = m.sim_weight_bias()
        w_sqnr = sqnr_db(w, w_hat.detach())
        per_channel_err = ((w - w_hat) ** 2).reshape(w.shape[0], -1).sum(1)
        worst = int(per_channel_err.argmax())
        scale = m.weight_scale.reshape(-1)[min(worst, m.weight_scale.numel() - 1)]
        spec = m.weight_spec
        grid = torch.arange(spec.qmin, spec.qmax + 1, dtype=torch.float32) * scale
        a_sqnr = act = rng = None
        if name in f_out and name in q_out and f_out[name].shape == q_out[name].shape:
            a_sqnr = sqnr_db(f_out[name], q_out[name])
            flat = f_out[name].reshape(-1)
            idx = torch.randint(0, flat.numel(), (min(sample, flat.numel()),), generator=gen)
            act = flat[idx]
            if m.output_spec is not None:
                s, z = float(m.output_scale), int(m.output_zero_point)
                rng = ((m.output_spec.qmin - z) * s, (m.output_spec.qmax - z) * s)
        out.append(
            LayerError(
                name=name,
                kind="conv" if isinstance(m, QuantConv2d) else "linear",
                weight_bits=spec.bits,
                weight_sqnr_db=w_sqnr,
                activation_sqnr_db=a_sqnr,
                weight=w.reshape(-1),
                weight_levels_grid=grid,
                activation=act,
                activation_range=rng,
            )
        )
    return out
