"""Keep int8 weights inside what x86 AVX2 integer kernels can add without saturating.

On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels multiply with
``vpmaddubsw``: each pair of adjacent products along the reduction axis is summed
into a *signed 16-bit* value with saturation, before widening to int32. With uint8
activations up to 255, a pair saturates only when both weights have the same sign
and ``|w1| + |w2| > 128`` (255 * 129 > 32767). Opposite signs never saturate.

Instead of halving every weight (``reduce_range``: 7-bit weights everywhere), edgeq
lowers only the pairs that can saturate, choosing which of the two to lower so the
added rounding error is smallest. The result is exact integer arithmetic on every
CPU, so the PyTorch simulation matches the deployed model.

Pair order is the kernels' packing order: conv weights ``[O, I, kh, kw]`` are read
as ``(kh, kw, I)`` with input channels fastest (ONNX Runtime reorders filters to
HWIO), linear weights ``[O, I]`` along ``I``; pairs are elements ``(2j, 2j+1)``.
A conv exported with zero input channels added (``pad_in = (before, after)``, to
reach `SYM_CONV_CHANNELS`) is read with those zeros in place, since the kernel pairs
what it is given: three channels padded after to four pair as ``(c0, c1), (c2, 0)``
at every kernel position, padded before as ``(0, c0), (c1, c2)``; unpadded, pairs
straddle two kernel positions.
"""

from __future__ import annotations

import torch

PAIR_LIMIT = 128  # 255 * 128 = 32640 <= 32767 < 255 * 129

# ONNX Runtime's x86 symmetric QLinearConv kernels (MlasConvSym: indirect convolution
# with the requantization fused) take a group-1 convolution only when its input
# channels are a multiple of 4 (`MlasConvSymPackWSize`); otherwise the convolution
# falls back to im2col and a generic GEMM, which for MobileNetV2's 3-channel first
# convolution is no faster than float32.
SYM_CONV_CHANNELS = 4


def input_channel_pad(in_channels: int, groups: int) -> int:
    """Zero input channels that bring a group-1 convolution onto the symmetric kernels
    (0 where it is there already, and for grouped convolutions)."""
    if groups != 1:
        return 0
    return -in_channels % SYM_CONV_CHANNELS


NO_PAD = (0, 0)


def kernel_order(q: torch.Tensor, pad_in: tuple[int, int] = NO_PAD) -> torch.Tensor:
    """``[O, K]`` view of a weight in the runtime's reduction order (a conv weight with
    ``pad_in = (before, after)`` zero input channels, as exported)."""
    if q.ndim == 4:
        if any(pad_in):
            q = torch.nn.functional.pad(q, (0, 0, 0, 0, *pad_in))
        return q.permute(0, 2, 3, 1).reshape(q.shape[0], -1)
    if q.ndim == 2 and not any(pad_in):
        return q
    raise ValueError(
        f"expected a 2-d or 4-d weight (input padding only for 4-d), got shape "
        f"{tuple(q.shape)} with pad_in={pad_in}"
    )


def from_kernel_order(
    rows: torch.Tensor, shape: torch.Size, pad_in: tuple[int, int] = NO_PAD
) -> torch.Tensor:
    if len(shape) == 4:
        o, i, kh, kw = shape
        before, after = pad_in
        full = rows.reshape(o, kh, kw, before + i + after)[..., before : before + i]
        return full.permute(0, 3, 1, 2).contiguous()
    return rows.reshape(shape)


def saturating_pairs(q: torch.Tensor, pad_in: tuple[int, int] = NO_PAD) -> torch.Tensor:
    """Number of adjacent same-sign pairs with ``|a| + |b| > 128`` (would saturate)."""
    rows = kernel_order(q.to(torch.int64), pad_in)
    if rows.shape[1] % 2:
        rows = torch.nn.functional.pad(rows, (0, 1))
    pairs = rows.reshape(rows.shape[0], -1, 2)
    same_sign = (pairs[..., 0] * pairs[..., 1]) > 0
    return (same_sign & (pairs.abs().sum(-1) > PAIR_LIMIT)).sum()


def limit_pairs(
    q: torch.Tensor, w_over_scale: torch.Tensor, pad_in: tuple[int, int] = NO_PAD
) -> torch.Tensor:
    """Lower same-sign pairs to ``|a| + |b| <= 128``, one level at a time, each time on
    the element whose rounded value lies furthest beyond its real value.

    Args:
        q: int32 weight levels (per-channel symmetric, zero point 0).
        w_over_scale: the unrounded ``w / scale`` values, same shape.
        pad_in: zero input channels (before, after) the exported conv adds.

    Returns:
        New int32 levels with no saturating pair; ``q`` is not modified.
    """
    rows = kernel_order(q.to(torch.int64), pad_in).clone()
    real = kernel_order(w_over_scale.to(torch.float64), pad_in)
    odd = rows.shape[1] % 2
    if odd:
        rows = torch.nn.functional.pad(rows, (0, 1))
        real = torch.nn.functional.pad(real, (0, 1))
    pairs = rows.reshape(-1, 2)
    real_pairs = real.reshape(-1, 2)
    # only pairs that can saturate change, and lowering one never makes another saturate:
    # work on that (usually small) subset
    over = ((pairs[:, 0] * pairs[:, 1]) > 0) & (pairs.abs().sum(-1) > PAIR_LIMIT)
    idx = over.nonzero().squeeze(1)
    sub, real_sub = pairs[idx], real_pairs[idx].abs()
    sign = torch.sign(sub.sum(-1, keepdim=True))
    while sub.numel():
        mag = sub.abs()
        still = ((sub[:, 0] * sub[:, 1]) > 0) & (mag.sum(-1) > PAIR_LIMIT)
        if not bool(still.any()):
            break
        # excess of each element's magnitude over its real magnitude: lower the larger
        excess = mag.double() - real_sub
        pick_second = excess[:, 1] > excess[:, 0]
        step = torch.stack([~pick_second, pick_second], dim=-1) & still[:, None]
        sub = sub - step.to(torch.int64) * sign
    pairs[idx] = sub
    out = pairs.reshape(rows.shape)
    if odd:
        out = out[:, :-1]
    return from_kernel_order(out, q.shape, pad_in).to(torch.int32)


def pair_safe_scale(
    w: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    qmax: int,
    *,
    grid_points: int = 16,
    pad_in: tuple[int, int] = NO_PAD,
) -> torch.Tensor:
    """Per-channel scales, at least ``scale``, whose pair-limited levels have the
    least squared error.

    Candidates run geometrically from ``scale`` (finest grid, most pairs to lower) to
    the scale at which no same-sign pair exceeds the limit before rounding (the
    coarsest needed). Each candidate's levels go through `limit_pairs`; the channel
    keeps the candidate with the smallest error. Never worse than ``reduce_range``.
    """
    rows = kernel_order(w.detach().to(torch.float64), pad_in)
    if rows.shape[1] % 2:
        rows = torch.nn.functional.pad(rows, (0, 1))
    pairs = rows.reshape(rows.shape[0], -1, 2)
    pos = pairs.clamp(min=0).sum(-1).amax(-1)
    neg = (-pairs).clamp(min=0).sum(-1).amax(-1)
    safe = (torch.maximum(pos, neg) / PAIR_LIMIT).to(torch.float32)
    hi = torch.maximum(safe, scale)
    view = [-1] + [1] * (w.ndim - 1)
    best_err = torch.full_like(scale, float("inf"), dtype=torch.float64)
    best = scale.clone()
    for t in torch.linspace(0.0, 1.0, grid_points):
        cand = (scale * (hi / scale) ** t).to(torch.float32)
        s = cand.reshape(view)
        q = torch.clamp(torch.round(w / s), qmin, qmax).to(torch.int32)
        q = limit_pairs(q, w / s, pad_in)
        err = ((q.double() * s.double() - w.double()) ** 2).reshape(w.shape[0], -1).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, cand, best)
    return best
