"""AdaRound (Nagel et al. 2020): learn, per weight, whether to round down or up.

Each weight ``w`` on grid step ``s`` becomes ``s * (floor(w/s) + h)`` with
``h = clip(sigmoid(v) * (zeta - gamma) + gamma, 0, 1)`` (the rectified sigmoid,
zeta = 1.1, gamma = -0.1) and ``v`` learned by Adam to make the layer's output on the
calibration inputs, activation included, match the float layer's on the same inputs:

    || act(W~ x + b) - act(W x + b) ||^2 + lambda * sum(1 - |2h - 1|^beta)

The regularizer (off for the first 20% of the steps, then with beta annealed from 20
to 2) pushes every ``h`` to 0 or 1; at the end ``h`` is rounded to exactly 0 or 1,
so the result is integer levels on the layer's own grid (scales and zero points are
not learned). The loss is the squared error summed over output channels and
averaged over batch and positions (as in BRECQ's implementation of AdaRound).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgeq.graph.qmodules import QuantConv2d, QuantLinear
from edgeq.quant import dequantize, quantize
from edgeq.quant.layout import expand_param

__all__ = [
    "ADAROUND_BATCH",
    "ADAROUND_STEPS",
    "AdaRoundSettings",
    "adaround_layer",
    "rectified_sigmoid",
]

ZETA, GAMMA = 1.1, -0.1
ADAROUND_STEPS = 1000
ADAROUND_BATCH = 32


class AdaRoundSettings:
    """The optimization's knobs (defaults: the paper's, with fewer steps)."""

    def __init__(
        self,
        steps: int = ADAROUND_STEPS,
        batch: int = ADAROUND_BATCH,
        lr: float = 1e-3,
        weight: float = 0.01,
        warmup: float = 0.2,
        beta: tuple[float, float] = (20.0, 2.0),
        seed: int = 0,
    ) -> None:
        if steps < 1 or batch < 1 or lr <= 0 or weight < 0 or not 0 <= warmup < 1:
            raise ValueError(
                f"AdaRound settings: steps={steps}, batch={batch}, lr={lr}, weight={weight}, "
                f"warmup={warmup}: steps and batch >= 1, lr > 0, weight >= 0, warmup in [0, 1)"
            )
        self.steps, self.batch, self.lr, self.weight = steps, batch, lr, weight
        self.warmup, self.beta, self.seed = warmup, beta, seed


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``clip(sigmoid(v) * (zeta - gamma) + gamma, 0, 1)``: reaches 0 and 1 exactly."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(frac: torch.Tensor) -> torch.Tensor:
    """``v`` with ``rectified_sigmoid(v) == frac`` (the float weight's own position)."""
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def _beta(step: int, s: AdaRoundSettings) -> float | None:
    """The regularizer's exponent at ``step`` (None during warm-up)."""
    start = int(s.warmup * s.steps)
    if step < start:
        return None
    t = (step - start) / max(s.steps - start, 1)
    return s.beta[0] + (s.beta[1] - s.beta[0]) * t


Layer = QuantConv2d | QuantLinear


def _apply(m: Layer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    b = m.bias.detach() if m.bias is not None else None
    if isinstance(m, QuantConv2d):
        y = F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    else:
        y = F.linear(x, w, b)
    return m._activate(y)


def _loss(y: torch.Tensor, target: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return (y - target).pow(2).sum(channel_dim).mean()


def _error(m: Layer, xs: list[torch.Tensor], ts: list[torch.Tensor], w: torch.Tensor) -> float:
    with torch.no_grad():
        total = sum(
            float(_loss(_apply(m, x, w), t, m._channel_dim)) * len(x)
            for x, t in zip(xs, ts, strict=True)
        )
    return total / sum(len(x) for x in xs)


def write_levels(m: Layer, levels: torch.Tensor) -> None:
    """Make ``levels`` the layer's weight: the float weight becomes their dequantized
    values, so nearest rounding gives them back (and the target's pair limit still
    applies where it must: `weight_levels`)."""
    q = levels.reshape(m.weight.shape)
    w = dequantize(q, m.weight_scale.detach(), m.weight_zero_point, m.weight_spec)
    with torch.no_grad():
        m.weight.copy_(w)


def adaround_layer(
    m: Layer, xs: list[torch.Tensor], settings: AdaRoundSettings | None = None
) -> dict[str, float]:
    """Learn the rounding of ``m``'s weight from its inputs ``xs`` and write the levels
    into it (`write_levels`). Keeps nearest rounding if the learned levels reconstruct
    the output worse on ``xs`` (reported as ``kept_nearest``).

    Returns ``nearest`` and ``learned``: the reconstruction loss over ``xs`` with each
    (``learned`` is the levels kept), and ``kept_nearest`` (1.0 or 0.0).
    """
    s = settings or AdaRoundSettings()
    spec = m.weight_spec
    w = m.weight.detach().clone()
    scale = expand_param(m.weight_scale.detach(), spec, w)
    zp = expand_param(m.weight_zero_point, spec, w).to(w.dtype)
    with torch.no_grad():
        targets = [_apply(m, x, w) for x in xs]
    nearest = quantize(w, m.weight_scale.detach(), m.weight_zero_point, spec)
    v_floor = torch.floor(w / scale)
    v = torch.nn.Parameter(_initial_v(w / scale - v_floor))
    opt = torch.optim.Adam([v], lr=s.lr)
    data = torch.cat(xs)
    target = torch.cat(targets)
    gen = torch.Generator().manual_seed(s.seed)
    n = data.shape[0]

    def soft(h: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(v_floor + h + zp, spec.qmin, spec.qmax) - zp) * scale

    for step in range(s.steps):
        idx = torch.randint(0, n, (min(s.batch, n),), generator=gen)
        h = rectified_sigmoid(v)
        loss = _loss(_apply(m, data[idx], soft(h)), target[idx], m._channel_dim)
        beta = _beta(step, s)
        if beta is not None and s.weight > 0:
            loss = loss + s.weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned = (torch.clamp(v_floor + (v >= 0).to(w.dtype) + zp, spec.qmin, spec.qmax)).to(
            torch.int32
        )
        w_near = (nearest.to(w.dtype) - zp) * scale
        w_learned = (learned.to(w.dtype) - zp) * scale
        e_near = _error(m, xs, targets, w_near)
        e_learned = _error(m, xs, targets, w_learned)
    keep = e_learned > e_near or not math.isfinite(e_learned)
    if not keep:
        write_levels(m, learned)
    return {
        "nearest": e_near,
        "learned": min(e_near, e_learned) if keep else e_learned,
        "kept_nearest": float(keep),
    }
