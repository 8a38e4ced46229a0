"""What ONNX Runtime's integer CPU kernels compute, as pure tensor functions.

The simulation must compute what the deployed kernels compute, rounding step by
rounding step, or 1-LSB differences grow with depth (measured on MobileNetV2: the
first residual add that disagreed with ONNX Runtime was the source of every later
difference). Each function below follows one MLAS kernel (onnxruntime/core/mlas) and
is tested bit-exact against onnxruntime in ``tests/quant/test_integer_kernels.py``.

Integer levels are carried in float tensors holding exact integers: float64 holds
every int32 exactly; float32 is used only where the kernel itself rounds to float32.
"""

from __future__ import annotations

import torch

_F32 = torch.float32
_F64 = torch.float64


def _f32(x: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=_F32)


def fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` rounded once to float32 (a fused multiply-add, as vfmadd does).

    Exact for float32 inputs: the product of two float32 values has at most 48
    significant bits and the sum stays exact in float64 for the magnitudes that
    occur here (levels below 2**16, ratios within 2**±30), so the only rounding is
    the final cast.
    """
    return (a.to(_F64) * b.to(_F64) + c.to(_F64)).to(_F32)


def requantize_accumulator(
    acc: torch.Tensor,
    multiplier: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """QLinearConv / QGemm output stage: ``clamp(rne(f32(acc) * m) + z)``.

    ``acc`` is the exact int32 accumulator (bias included), ``multiplier`` the float32
    ``s_x * s_w / s_y`` (per output channel, broadcastable).
    """
    scaled = acc.to(_F32) * multiplier.to(_F32)
    return torch.clamp(torch.round(scaled) + zero_point.to(_F32), qmin, qmax)


def qlinear_add(
    qa: torch.Tensor,
    qb: torch.Tensor,
    a_qparams: tuple[torch.Tensor, torch.Tensor],
    b_qparams: tuple[torch.Tensor, torch.Tensor],
    c_qparams: tuple[torch.Tensor, torch.Tensor],
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """QLinearAdd on x86-64 (MLAS AVX2 kernel, used by every AVX2/AVX-512 CPU).

    With ``r_a = f32(s_a / s_c)``, ``r_b = f32(s_b / s_c)`` and the constant
    ``k = z_c - fma(r_a, z_a, r_b * z_b)`` (the compiler contracts the source's
    ``r_a * z_a + r_b * z_b`` into one FMA; measured: the uncontracted form and the
    other contraction order both disagree with onnxruntime on near-tie inputs), the
    kernel computes per element ``t = fma(q_b, r_b, k)``, ``y = fma(q_a, r_a, t)``,
    then rounds half to even and saturates. The zero points enter only through ``k``,
    so this differs from "dequantize, add, quantize" whenever a result lies near a
    rounding tie.
    """
    (sa, za), (sb, zb), (sc, zc) = a_qparams, b_qparams, c_qparams
    ra = _f32(sa) / _f32(sc)
    rb = _f32(sb) / _f32(sc)
    za_f, zb_f, zc_f = _f32(za), _f32(zb), _f32(zc)
    fixed = zc_f - fma_f32(ra, za_f, rb * zb_f)
    qa32, qb32 = torch.broadcast_tensors(qa.to(_F32), qb.to(_F32))
    t = fma_f32(qb32, rb, fixed.expand_as(qb32))
    y = fma_f32(qa32, ra, t)
    return torch.clamp(torch.round(y), qmin, qmax)


def qlinear_global_average_pool(
    q: torch.Tensor,
    in_qparams: tuple[torch.Tensor, torch.Tensor],
    out_qparams: tuple[torch.Tensor, torch.Tensor],
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """QLinearGlobalAveragePool (NCHW) on x86-64: an exact int32 sum over H*W, then
    ``rne(clamp(f32(sum - z_in * n) * f32(s_in / f32(s_out * n)))) + z_out``."""
    (s_in, z_in), (s_out, z_out) = in_qparams, out_qparams
    n = q.shape[-1] * q.shape[-2]
    acc = q.to(_F64).sum(dim=(-2, -1), keepdim=True) - _f64(z_in) * n
    scale = _f32(s_in) / (_f32(s_out) * _f32(float(n)))
    zo = _f32(z_out)
    v = torch.clamp(acc.to(_F32) * scale, qmin - zo, qmax - zo)
    return torch.round(v) + zo


def _f64(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=_F64)


def dynamic_quantize_uint8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX DynamicQuantizeLinear: uint8 levels, scale and zero point of ``x``, from
    its range extended to include 0: ``s = (max - min) / 255``,
    ``z = saturate(rne(0 - min / s))``, ``q = saturate(rne(x / s) + z)``."""
    x = x.to(_F32)
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / _f32(255.0)
    if float(scale.detach()) == 0.0:
        zero = torch.zeros((), dtype=_F32)
        return torch.zeros_like(x), scale, zero
    zp = torch.clamp(torch.round(_f32(0.0) - lo / scale), 0, 255)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    return q, scale, zp
