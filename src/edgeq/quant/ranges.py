"""Range estimation: from data to a clipping range ``[lo, hi]`` per row.

All functions work on *rows* (see `edgeq.quant.layout.to_rows`): one row per scale.
A row is a set of values with optional counts, so the same code serves a whole
weight tensor (counts 1) and an activation histogram (bin centres with counts).

- min-max: the observed extremes.
- percentile: drop the outer ``(100 - p) / 2`` percent on each side.
- MSE: grid search of ``[f * lo, f * hi]`` minimizing the quantization MSE.
- KL: TensorRT's entropy calibration on the ``|x|`` histogram.
"""

from __future__ import annotations

import numpy as np
import torch

from edgeq.quant.affine import choose_qparams
from edgeq.quant.checks import QuantInputError, check_float_tensor
from edgeq.quant.layout import from_rows, to_rows
from edgeq.quant.spec import Granularity, QuantSpec, RangeMethod

MSE_GRID_POINTS = 100
# KL calibration estimates a distribution from a histogram; with fewer values per row
# than this it clips at noise (a depthwise conv channel has 9 weights).
KL_MIN_VALUES_PER_ROW = 512


def row_spec(spec: QuantSpec) -> QuantSpec:
    """The spec's integer grid with one scale per row (rows on axis 0)."""
    return spec.replace(granularity=Granularity.PER_CHANNEL, axis=0, group_size=None)


def _row_fake_quant(
    values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    scale, zp = choose_qparams(lo, hi, spec)
    s = scale[:, None]
    z = zp[:, None].to(torch.float32)
    q = torch.clamp(torch.round(values / s) + z, spec.qmin, spec.qmax)
    return (q - z) * s


def minmax_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rows.amin(dim=1), rows.amax(dim=1)


def percentile_rows(
    values: torch.Tensor, counts: torch.Tensor | None, percentile: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper percentiles per row, dropping ``(100-p)/2`` % on each side."""
    tail = (100.0 - percentile) / 200.0
    if counts is None:
        counts = torch.ones_like(values)
    order = torch.argsort(values, dim=1)
    v = torch.gather(values, 1, order)
    c = torch.gather(counts, 1, order)
    cdf = torch.cumsum(c, dim=1)
    total = cdf[:, -1:].clamp(min=1e-12)
    share = cdf / total
    lo_idx = torch.searchsorted(share.contiguous(), torch.full_like(total, tail), right=False)
    hi_idx = torch.searchsorted(share.contiguous(), torch.full_like(total, 1.0 - tail), right=False)
    n = v.shape[1] - 1
    lo = torch.gather(v, 1, lo_idx.clamp(max=n)).squeeze(1)
    hi = torch.gather(v, 1, hi_idx.clamp(max=n)).squeeze(1)
    return lo, hi


def mse_rows(
    values: torch.Tensor,
    counts: torch.Tensor | None,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: QuantSpec,
    *,
    grid_points: int = MSE_GRID_POINTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink each row's range by the factor in ``(0, 1]`` that minimizes the MSE."""
    rs = row_spec(spec)
    best_err = torch.full_like(lo, float("inf"))
    best_f = torch.ones_like(lo)
    for f in torch.linspace(1.0 / grid_points, 1.0, grid_points):
        err = (_row_fake_quant(values, lo * f, hi * f, rs) - values) ** 2
        if counts is not None:
            err = err * counts
        err = err.sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_f = torch.where(better, f, best_f)
    return lo * best_f, hi * best_f


def _kl_threshold_bin(abs_hist: np.ndarray, n_levels: int) -> int:
    """TensorRT's entropy calibration: the bin count whose clipped, re-quantized
    distribution has the least KL divergence from the reference."""
    nbins = abs_hist.shape[0]
    if nbins <= n_levels:
        return nbins
    step = max(1, (nbins - n_levels) // 256)
    best_i, best_kl = nbins, float("inf")
    for i in range(n_levels, nbins + 1, step):
        ref = abs_hist[:i].astype(np.float64).copy()
        ref[i - 1] += abs_hist[i:].sum()
        if ref.sum() == 0:
            continue
        # Merge the first i bins into n_levels chunks, then spread each chunk's mass
        # evenly over the bins of the chunk that were non-empty.
        edges = np.linspace(0, i, n_levels + 1).astype(np.int64)
        sums = np.add.reduceat(abs_hist[:i].astype(np.float64), edges[:-1])
        nonzero = (abs_hist[:i] > 0).astype(np.float64)
        nz_counts = np.add.reduceat(nonzero, edges[:-1])
        per_bin = np.divide(sums, nz_counts, out=np.zeros_like(sums), where=nz_counts > 0)
        cand = np.repeat(per_bin, np.diff(edges)) * nonzero
        p = ref / ref.sum()
        q = cand / max(cand.sum(), 1e-300)
        mask = p > 0
        q_safe = np.where(q > 0, q, 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q_safe[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def kl_rows(
    hist: torch.Tensor, bound: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy-calibrated ranges from symmetric histograms over ``[-bound, bound]``."""
    n_bins = hist.shape[1]
    half = n_bins // 2
    n_levels = (spec.qmax - spec.qmin + 1) // 2 if spec.signed else spec.qmax + 1
    out_lo, out_hi = lo.clone(), hi.clone()
    for r in range(hist.shape[0]):
        h = hist[r].double().numpy()
        abs_hist = h[half:] + h[:half][::-1]
        i = _kl_threshold_bin(abs_hist, n_levels)
        threshold = float(bound[r]) * i / half
        out_hi[r] = min(float(hi[r]), threshold)
        out_lo[r] = max(float(lo[r]), -threshold)
    return out_lo, out_hi


def histogram_rows(rows: torch.Tensor, bound: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per-row histogram with ``n_bins`` equal bins over ``[-bound, bound]`` (``rows``
    must lie inside; a value on the bound goes to the last bin)."""
    width = (2.0 * bound / n_bins).clamp(min=torch.finfo(torch.float32).tiny)
    # Calibration's hot path (activations of tens of millions of values): few passes.
    # Values are >= -bound, so the scaled values are >= 0 (float addition is monotone)
    # and truncation is floor; only the top needs clamping (a value equal to the bound).
    idx = (rows + bound[:, None]).div_(width[:, None]).to(torch.int64).clamp_(max=n_bins - 1)
    if rows.shape[0] > 1:
        idx += torch.arange(rows.shape[0], dtype=torch.int64)[:, None] * n_bins
    counts = torch.bincount(idx.flatten(), minlength=rows.shape[0] * n_bins)
    return counts.reshape(rows.shape[0], n_bins).to(torch.float64)


def bin_centers(bound: torch.Tensor, n_bins: int) -> torch.Tensor:
    width = 2.0 * bound / n_bins
    k = torch.arange(n_bins, dtype=torch.float32) + 0.5
    return -bound[:, None] + k[None, :] * width[:, None]


def estimate_range(
    x: torch.Tensor, spec: QuantSpec, *, name: str = "tensor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range of one whole tensor (e.g. a weight) with the spec's estimator.

    Exact for min-max, percentile and MSE (no histogram); KL uses a 2048-bin histogram.
    Moving-average min-max is min-max for a single tensor.

    Returns:
        ``(lo, hi)`` in the spec's parameter shape.

    Example:
        >>> w = torch.tensor([[-1.0, 0.5], [0.25, 2.0]])
        >>> spec = QuantSpec(granularity="per_channel", axis=0)
        >>> [t.tolist() for t in estimate_range(w, spec)]
        [[-1.0, 0.25], [0.5, 2.0]]
    """
    check_float_tensor(x, name)
    rows = to_rows(x.detach().to(torch.float32), spec)
    lo, hi = minmax_rows(rows)
    method = spec.range_method
    if method is RangeMethod.PERCENTILE:
        lo, hi = percentile_rows(rows, None, spec.percentile)
    elif method is RangeMethod.MSE:
        lo, hi = mse_rows(rows, None, lo, hi, spec)
    elif method is RangeMethod.KL:
        if rows.shape[1] < KL_MIN_VALUES_PER_ROW:
            raise QuantInputError(
                f"{name}: range_method=kl needs at least {KL_MIN_VALUES_PER_ROW} values per "
                f"{spec.granularity.value} row to estimate a distribution, got {rows.shape[1]}; "
                "use range_method='mse' for weights"
            )
        bound = torch.maximum(-lo, hi).clamp(min=torch.finfo(torch.float32).tiny)
        lo, hi = kl_rows(histogram_rows(rows, bound, 2048), bound, lo, hi, spec)
    return from_rows(lo, spec, x.shape), from_rows(hi, spec, x.shape)
