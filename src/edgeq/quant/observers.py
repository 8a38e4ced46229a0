"""Observers: small modules that accumulate range statistics over calibration batches.

Every buffer exists from ``__init__`` so ``state_dict()`` is complete before
calibration. An observer returns its input unchanged.

Histogram observers keep ``n_bins`` bins per row over ``[-bound, bound]``; when a
batch exceeds the bound, the bound doubles (as often as needed) and neighbouring bins
merge, so earlier batches are never dropped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeq.quant.checks import QuantInputError, check_float_tensor
from edgeq.quant.layout import to_rows
from edgeq.quant.ranges import (
    bin_centers,
    histogram_rows,
    kl_rows,
    mse_rows,
    percentile_rows,
)
from edgeq.quant.spec import Granularity, QuantSpec, RangeMethod, SpecError

DEFAULT_BINS = 2048


class RangeObserver(nn.Module):
    """Accumulates per-row min/max (and a histogram where the estimator needs one).

    Args:
        spec: the quantizer whose range is estimated (per tensor or per channel).
        num_rows: 1 for per tensor, the channel count for per channel.
        n_bins: histogram bins (even, a power of two) for percentile, MSE and KL.
        name: used in error messages (the layer or tensor being observed).
    """

    min_val: torch.Tensor
    max_val: torch.Tensor
    batches: torch.Tensor
    hist: torch.Tensor
    bound: torch.Tensor

    def __init__(
        self,
        spec: QuantSpec,
        num_rows: int = 1,
        *,
        n_bins: int = DEFAULT_BINS,
        name: str = "activation",
    ) -> None:
        super().__init__()
        if spec.granularity is Granularity.PER_GROUP:
            raise SpecError(
                "observers accumulate per tensor or per channel; for per-group weights use "
                "edgeq.quant.ranges.estimate_range on the whole tensor"
            )
        if n_bins < 2 or n_bins & (n_bins - 1):
            raise SpecError(f"n_bins={n_bins} must be a power of two >= 2")
        self.spec = spec
        self.name = name
        self.n_bins = n_bins
        self.register_buffer("min_val", torch.full((num_rows,), math.inf))
        self.register_buffer("max_val", torch.full((num_rows,), -math.inf))
        self.register_buffer("batches", torch.zeros((), dtype=torch.int64))
        uses_hist = spec.range_method in (RangeMethod.PERCENTILE, RangeMethod.MSE, RangeMethod.KL)
        hist_rows = num_rows if uses_hist else 0
        self.register_buffer("hist", torch.zeros(hist_rows, n_bins, dtype=torch.float64))
        self.register_buffer("bound", torch.zeros(hist_rows))

    @property
    def uses_histogram(self) -> bool:
        return self.hist.shape[0] > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = to_rows(x.detach().to(torch.float32), self.spec)
        if rows.shape[0] != self.min_val.shape[0]:
            raise QuantInputError(
                f"{self.name}: observer was built for {self.min_val.shape[0]} rows, "
                f"got a tensor with {rows.shape[0]} (shape {tuple(x.shape)})"
            )
        if rows.shape[1] == 0:
            return x
        if rows.shape[0] == 1:  # per tensor: one pass (aminmax along a dim is slow)
            lo, hi = (t.reshape(1) for t in torch.aminmax(rows[0]))
        else:
            lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        # NaN and +-Inf reach the row extremes: checking them is enough (and cheap)
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            check_float_tensor(x, self.name)  # raises naming the layer and counts
        if self.spec.range_method is RangeMethod.MOVING_AVERAGE and int(self.batches) > 0:
            m = self.spec.momentum
            self.min_val.mul_(1 - m).add_(m * lo)
            self.max_val.mul_(1 - m).add_(m * hi)
        else:
            torch.minimum(self.min_val, lo, out=self.min_val)
            torch.maximum(self.max_val, hi, out=self.max_val)
        if self.uses_histogram:
            self._update_histogram(rows, torch.maximum(-lo, hi))
        self.batches += 1
        return x

    def _update_histogram(self, rows: torch.Tensor, absmax: torch.Tensor) -> None:
        tiny = torch.finfo(torch.float32).tiny
        first = self.bound == 0
        self.bound.copy_(torch.where(first, absmax.clamp(min=tiny), self.bound))
        for r in torch.nonzero(absmax > self.bound).flatten().tolist():
            factor = 2 ** math.ceil(math.log2(float(absmax[r]) / float(self.bound[r])))
            factor = max(factor, 2)
            self.hist[r] = _grow(self.hist[r], factor)
            self.bound[r] = self.bound[r] * factor
        self.hist += histogram_rows(rows, self.bound, self.n_bins)

    def compute_range(self, percentile: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The estimated ``(lo, hi)`` per row; ``percentile`` overrides the spec's for
        the percentile estimator (a range search tries several on one histogram).

        Raises:
            QuantInputError: no data was observed (empty calibration data).
        """
        if int(self.batches) == 0:
            raise QuantInputError(
                f"{self.name}: observer saw no data; calibration data is empty or never "
                "reached this layer"
            )
        lo, hi = self.min_val.clone(), self.max_val.clone()
        method = self.spec.range_method
        if method is RangeMethod.PERCENTILE:
            q = self.spec.percentile if percentile is None else percentile
            lo, hi = percentile_rows(bin_centers(self.bound, self.n_bins), self.hist.float(), q)
            lo, hi = torch.maximum(lo, self.min_val), torch.minimum(hi, self.max_val)
        elif method is RangeMethod.MSE:
            lo, hi = mse_rows(
                bin_centers(self.bound, self.n_bins), self.hist.float(), lo, hi, self.spec
            )
        elif method is RangeMethod.KL:
            lo, hi = kl_rows(self.hist, self.bound, lo, hi, self.spec)
        # a constant row (all-zero weights, a dead ReLU): its histogram's bin centres can
        # fall a hair on the wrong side of the value, leaving hi < lo; the range is that
        # single value
        return lo, torch.maximum(hi, lo)


def _grow(hist: torch.Tensor, factor: int) -> torch.Tensor:
    """Re-bin a symmetric histogram onto a ``factor`` times wider range."""
    n = hist.shape[0]
    if factor >= n:
        out = torch.zeros_like(hist)
        # Everything collapses into the two centre bins, split by sign.
        out[n // 2 - 1] = hist[: n // 2].sum()
        out[n // 2] = hist[n // 2 :].sum()
        return out
    merged = hist.reshape(n // factor, factor).sum(dim=1)
    pad = (n - merged.shape[0]) // 2
    return torch.nn.functional.pad(merged, (pad, pad))
