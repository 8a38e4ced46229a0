"""Quantization error as one number: the signal-to-quantization-noise ratio.

The one definition every report, search and benchmark uses:
``10 log10(sum ref^2 / sum (approx - ref)^2)`` in float64, ``inf`` when the two are
equal.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def ratio_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` from summed powers; inf when ``noise`` is 0 (a zero
    signal with noise reads as a very large negative number, not a math error)."""
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def signal_and_noise(reference: Array, approx: Array) -> tuple[float, float]:
    """The summed powers ``(sum ref^2, sum (approx - ref)^2)`` in float64, to add up
    over several tensors before `ratio_db`."""
    ref = torch.as_tensor(reference).double()
    out = torch.as_tensor(approx).double()
    return float((ref**2).sum()), float(((out - ref) ** 2).sum())


def sqnr_db(reference: Array, approx: Array) -> float:
    """SQNR of ``approx`` against ``reference`` in dB (tensors or arrays of one shape).

    Example:
        >>> round(sqnr_db(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.1])), 2)
        26.99
    """
    return ratio_db(*signal_and_noise(reference, approx))
