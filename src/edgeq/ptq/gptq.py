"""GPTQ (Frantar et al. 2022): weights rounded one input column at a time, each
column's rounding error spread over the columns not yet rounded.

A layer computes ``W X`` (rows of ``W``: output channels; columns: the inputs a
weight multiplies, ``in_channels * kh * kw`` for a conv). Rounding ``W`` to a grid
adds ``(W_q - W) X``, whose squared norm is ``tr(D H D^T)`` with ``D = W_q - W`` and
``H = X X^T`` (the inputs' second moments over the calibration data). GPTQ rounds
column ``j``, then moves the columns after it by the update that best cancels that
column's error under ``H`` (the optimal-brain-surgeon step, through the Cholesky
factor of ``H^-1``). The grid (scales, zero points) is chosen before and not changed,
so the result is levels on the same grid as nearest rounding: it saves, loads and
exports exactly as plain PTQ does.

Grouped convolutions (depthwise included) are one independent problem per group,
solved together in one batched pass (`gptq_levels` takes a leading group axis).
"""

from __future__ import annotations

import torch

__all__ = ["GPTQ_BLOCK", "gptq_levels", "hessian_of_inputs", "output_error"]

GPTQ_BLOCK = 128  # columns updated together (the paper's lazy batch updates)


def hessian_of_inputs(columns: torch.Tensor) -> torch.Tensor:
    """``X X^T`` per group, in float64, from ``columns`` of shape (groups, d, n): the
    ``n`` input vectors of length ``d`` each weight row multiplies."""
    x = columns.to(torch.float64)
    return torch.einsum("gdn,gen->gde", x, x)


def output_error(weight: torch.Tensor, reference: torch.Tensor, hessian: torch.Tensor) -> float:
    """``sum_g tr(D_g H_g D_g^T)``, ``D = weight - reference``: the squared error the
    weights' change adds to the layer's outputs over the inputs ``hessian`` came from.
    Shapes: weights (groups, rows, d), hessian (groups, d, d)."""
    d = weight.to(torch.float64) - reference.to(torch.float64)
    return float(torch.einsum("grd,gde,gre->", d, hessian.to(torch.float64), d))


def gptq_levels(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    *,
    damp: float = 0.01,
    act_order: bool = True,
    block: int = GPTQ_BLOCK,
) -> torch.Tensor:
    """Integer levels for ``weight`` on a fixed grid, rounded by GPTQ.

    Args:
        weight: (groups, rows, d) float weights.
        hessian: (groups, d, d) ``X X^T`` of the inputs (`hessian_of_inputs`).
        scale, zero_point: the grid of each weight, broadcastable to ``weight``
            (per row, or per row and column for per-group scales).
        qmin, qmax: the integer range.
        damp: added to the diagonal, as a share of its mean (the paper's 1%), so
            that ``H`` is invertible when inputs are correlated or constant.
        act_order: round columns in order of decreasing ``H`` diagonal (the inputs
            with the most energy first: their errors have the most columns left to
            absorb them).
        block: columns per lazy batch update (only speed depends on it).

    Returns:
        int32 levels of ``weight``'s shape: ``clamp(round(w'/s) + z)`` of the updated
        weights ``w'``; the weights of an input that never varies (zero diagonal)
        round to nearest and move nothing.
    """
    if weight.ndim != 3 or hessian.shape != (weight.shape[0], weight.shape[2], weight.shape[2]):
        raise ValueError(
            f"gptq_levels: weight {tuple(weight.shape)} and hessian {tuple(hessian.shape)} "
            "must be (groups, rows, d) and (groups, d, d)"
        )
    w = weight.to(torch.float64).clone()
    groups, _rows, d = w.shape
    s = torch.broadcast_to(scale.to(torch.float64), w.shape).clone()
    z = torch.broadcast_to(zero_point.to(torch.float64), w.shape).clone()
    h = hessian.to(torch.float64).clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0
    mean = diag.mean(dim=1, keepdim=True)
    diag += damp * torch.where(mean > 0, mean, torch.ones_like(mean))
    diag[dead] = 1.0
    if act_order:
        perm = torch.argsort(torch.diagonal(hessian.to(torch.float64), dim1=1, dim2=2),
                             dim=1, descending=True, stable=True)  # fmt: skip
    else:
        perm = torch.arange(d).expand(groups, d)
    idx = perm.unsqueeze(1).expand_as(w)
    w, s, z = w.gather(2, idx), s.gather(2, idx), z.gather(2, idx)
    h = h.gather(1, perm.unsqueeze(2).expand(groups, d, d)).gather(
        2, perm.unsqueeze(1).expand(groups, d, d)
    )
    # U: the upper Cholesky factor of H^-1; row j holds column j's update weights
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(inv, upper=True)
    q = torch.empty_like(w)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        w1 = w[:, :, i1:i2].clone()
        err = torch.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i]
            sc, zc = s[:, :, i1 + i], z[:, :, i1 + i]
            level = torch.clamp(torch.round(col / sc) + zc, qmin, qmax)
            q[:, :, i1 + i] = level
            e = (col - (level - zc) * sc) / u1[:, i, i].unsqueeze(1)
            w1[:, :, i:] -= e.unsqueeze(2) * u1[:, i, i:].unsqueeze(1)
            err[:, :, i] = e
        w[:, :, i2:] -= err @ u[:, i1:i2, i2:]
    levels = torch.empty_like(q)
    levels.scatter_(2, idx, q)
    return levels.to(torch.int32)
