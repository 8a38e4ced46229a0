"""Per-layer weight quantization error (before any data is involved)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from edgeq.quant import (
    QuantSpec,
    choose_qparams,
    dequantize,
    estimate_range,
    quantize,
    sqnr_db,
)


def weight_error_table(
    state_dict: Mapping[str, torch.Tensor], spec: QuantSpec
) -> list[dict[str, float | str | int]]:
    """Quantize every conv/linear weight (2-d or 4-d) of a state dict; report its error.

    Returns:
        One row per weight: name, shape, SQNR (dB) and MSE, in state-dict order.
    """
    rows: list[dict[str, float | str | int]] = []
    for name, w in state_dict.items():
        if not name.endswith("weight") or w.ndim not in (2, 4):
            continue
        lo, hi = estimate_range(w, spec, name=name)
        scale, zp = choose_qparams(lo, hi, spec)
        w_hat = dequantize(quantize(w, scale, zp, spec), scale, zp, spec)
        rows.append(
            {
                "name": name,
                "shape": "x".join(str(d) for d in w.shape),
                "numel": w.numel(),
                "sqnr_db": sqnr_db(w, w_hat),
                "mse": float(((w - w_hat) ** 2).mean()),
            }
        )
    return rows
