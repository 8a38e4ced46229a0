"""Uniform (affine) quantization: pure functions on tensors.

The arithmetic is ONNX QuantizeLinear/DequantizeLinear's, so that what PyTorch
simulates is what ONNX Runtime computes:

    q  = saturate(round_half_to_even(x / scale) + zero_point)
    dq = (q - zero_point) * scale

``x / scale`` is a true float32 division (not a multiply by the reciprocal), because
that is what the runtime does and the two differ in the last bit at ties.
"""

from __future__ import annotations

import torch

from edgeq.quant.checks import check_float_tensor
from edgeq.quant.layout import expand_param, from_rows, to_rows
from edgeq.quant.spec import Granularity, QuantSpec

# A scale below float32's smallest normal number would make x / scale overflow to
# inf for ordinary inputs; clamp there (ranges that small are all-zero in practice).
_MIN_SCALE = torch.finfo(torch.float32).tiny


def choose_qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that cover ``[min_val, max_val]``.

    The range is first widened to include 0, so 0.0 is always exactly representable
    (zero padding and ReLU zeros quantize without error). Symmetric specs fix the zero
    point at 0 and take the scale from the positive limit: ``max|x| / qmax``. An
    all-zero range gets scale 1.0 (any scale represents it exactly).

    Args:
        min_val, max_val: float tensors of the spec's parameter shape (or scalars).
        spec: the quantizer; must use the uniform scheme's integer grid.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of ``min_val``'s shape.

    Example:
        >>> s, z = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0),
        ...                       QuantSpec(bits=8, signed=False, symmetric=False))
        >>> float(s), int(z)
        (0.01568627543747425, 64)
    """
    # float64: hi - lo overflows float32 for ranges near float32's limits.
    min_val = torch.as_tensor(min_val).to(torch.float64)
    max_val = torch.as_tensor(max_val).to(torch.float64)
    if bool((min_val > max_val).any()):
        raise ValueError("choose_qparams: min_val > max_val somewhere; ranges must be ordered")
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        if spec.signed:
            absmax = torch.maximum(-lo, hi)
            scale = absmax / qmax
        else:
            # Unsigned symmetric: zero point 0, range [0, max]; negatives saturate to 0.
            scale = hi / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.round(qmin - lo / safe)
        zero_point = torch.clamp(zp, qmin, qmax).to(torch.int32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = torch.clamp(scale, min=_MIN_SCALE).to(torch.float32)
    return scale, zero_point


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Map floats to integer levels (int32 tensor), as ONNX QuantizeLinear does.

    Raises:
        QuantInputError: ``x`` is not a finite float tensor.
    """
    check_float_tensor(x, "quantize input", allow_empty=True)
    s = expand_param(scale.to(torch.float32), spec, x)
    z = expand_param(zero_point.to(torch.int32), spec, x)
    q = torch.round(x.to(torch.float32) / s)
    # Clamp in float before the integer cast so huge values cannot wrap around.
    q = torch.clamp(q + z.to(torch.float32), spec.qmin, spec.qmax)
    return q.to(torch.int32)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Map integer levels back to float32: ``(q - zero_point) * scale``."""
    s = expand_param(scale.to(torch.float32), spec, q)
    z = expand_param(zero_point.to(torch.int32), spec, q)
    return (q.to(torch.int32) - z).to(torch.float32) * s


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """``dequantize(quantize(x))`` with a straight-through gradient.

    The gradient is 1 where ``x`` lies inside the representable range and 0 where it
    saturates (the clipped straight-through estimator), so training learns to stay in
    range.
    """
    check_float_tensor(x, "fake_quantize input", allow_empty=True)
    s = expand_param(scale.to(x.dtype), spec, x)
    z = expand_param(zero_point.to(x.dtype), spec, x)
    lo = (spec.qmin - z) * s
    hi = (spec.qmax - z) * s
    x_in = torch.minimum(torch.maximum(x, lo), hi)
    with torch.no_grad():
        y = dequantize(quantize(x.detach(), scale, zero_point, spec), scale, zero_point, spec)
    return x_in + (y.to(x.dtype) - x_in).detach()


class _RoundSTE(torch.autograd.Function):
    """Round half to even forward; identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (bit for bit); the gradient multiplied by a constant backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round(x)`` (half to even) whose gradient is passed straight through."""
    return _RoundSTE.apply(x)


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``factor`` (LSQ's step-size scaling).

    Unlike ``x * g + (x - x * g).detach()`` the forward value is ``x`` exactly, so a
    fake-quantized tensor equals QuantizeLinear -> DequantizeLinear bit for bit."""
    return _ScaleGrad.apply(x, factor)


def lsq_grad_scale(elements_per_scale: float, qmax: int) -> float:
    """LSQ's step-size gradient scale, ``1 / sqrt(elements_per_scale * qmax)``.

    >>> lsq_grad_scale(64, 4)
    0.0625
    """
    return 1.0 / float(elements_per_scale * max(qmax, 1)) ** 0.5


def _lsq_grad_scale(x: torch.Tensor, scale: torch.Tensor, spec: QuantSpec) -> float:
    return lsq_grad_scale(x.numel() / max(scale.numel(), 1), spec.qmax)


def lsq_fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    spec: QuantSpec,
    *,
    grad_scale: float | None = None,
) -> torch.Tensor:
    """Fake quantization with the learned-step-size (LSQ, Esser et al. 2019) gradients.

    Forward equals `fake_quantize` and ONNX's QuantizeLinear -> DequantizeLinear bit
    for bit (a true division by the scale, round half to even). Backward: ``d out /
    d x`` is the clipped straight-through estimator (1 where ``round(x/s) + z`` lies
    in ``[qmin, qmax]``, the limits included, as in PyTorch's learnable fake
    quantization; 0 where it saturates); ``d out / d scale`` is ``round(x/s) - x/s``
    inside the range and ``qmin - z`` or ``qmax - z`` where it saturates; the scale
    gradient is multiplied by ``grad_scale`` (default ``1 / sqrt(numel_per_scale *
    qmax)``, the paper's choice). An integer zero point gets no gradient; a float one
    that requires grad is learned as in LSQ+ (Bhalgat et al. 2020), on the integer grid:
    the forward uses ``round(z)`` (straight through), and ``d out / d z`` is 0 inside
    the range and ``-s`` where it saturates, times ``grad_scale``.

    Per-tensor and per-channel scales run as one fused autograd function (a few
    in-place passes, only ``x`` kept for backward: training a quantized network is
    dominated by these element-wise passes otherwise); per-group scales take the
    composed form, `lsq_fake_quantize_reference`, which computes the same values.
    """
    if grad_scale is None:
        grad_scale = _lsq_grad_scale(x, scale, spec)
    if spec.granularity is Granularity.PER_GROUP or zero_point.requires_grad:
        return lsq_fake_quantize_reference(x, scale, zero_point, spec, grad_scale=grad_scale)
    s = expand_param(scale, spec, x)
    z = expand_param(zero_point.to(x.dtype), spec, x)
    return _LSQFakeQuant.apply(x, s, z, scale.shape, spec.qmin, spec.qmax, grad_scale)


class _LSQFakeQuant(torch.autograd.Function):
    """`lsq_fake_quantize` for scales broadcast by a view (per tensor, per channel)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        s: torch.Tensor,
        z: torch.Tensor,
        scale_shape: torch.Size,
        qmin: int,
        qmax: int,
        grad_scale: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, s, z)
        ctx.scale_shape, ctx.qmin, ctx.qmax, ctx.grad_scale = scale_shape, qmin, qmax, grad_scale
        # the reference's operations, in its order, in place: the same bits
        out = torch.div(x, s)
        out.round_().add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, s, z = ctx.saved_tensors
        v = torch.div(x, s)
        levels = torch.round(v)  # centred levels before clipping: round(x / s)
        clipped = torch.clamp(levels.add_(z), ctx.qmin, ctx.qmax)  # levels now + z
        inside = clipped == levels
        clipped.sub_(z)  # the clipped centred levels, q - z
        grad_x = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(inside, grad, 0.0)
        if ctx.needs_input_grad[1]:
            # d out / d s: round(v) - v inside the range, q - z where it saturates
            per_element = clipped.sub_(v.mul_(inside)).mul_(grad)
            if s.ndim != x.ndim:  # one scale for the tensor
                total = per_element.sum()
            else:
                dims = [d for d in range(x.ndim) if s.shape[d] == 1]
                total = per_element.sum(dim=dims) if dims else per_element
            grad_s = total.reshape(s.shape) * ctx.grad_scale
        return grad_x, grad_s, None, None, None, None, None


def lsq_fake_quantize_reference(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    spec: QuantSpec,
    *,
    grad_scale: float | None = None,
) -> torch.Tensor:
    """`lsq_fake_quantize` composed of autograd primitives (any granularity): the
    specification the fused function is tested against."""
    if grad_scale is None:
        grad_scale = _lsq_grad_scale(x, scale, spec)
    s = expand_param(scale_gradient(scale, grad_scale), spec, x)
    if zero_point.requires_grad:  # LSQ+: learned on the integer grid
        zero_point = scale_gradient(round_ste(zero_point), grad_scale)
    z = expand_param(zero_point.to(x.dtype), spec, x)
    t = round_ste(x / s) + z
    # clip with the gradient passing on the limits themselves (a value rounding onto
    # qmin or qmax is inside the range; torch.clamp's gradient is 0 there)
    inside = (t >= spec.qmin) & (t <= spec.qmax)
    q = torch.where(inside, t, torch.clamp(t.detach(), spec.qmin, spec.qmax))
    return (q - z) * s


def quantize_tensor(
    x: torch.Tensor, spec: QuantSpec, *, name: str = "tensor"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` with a min-max range over the spec's granularity.

    A convenience for weights; range estimators other than min-max live in
    `edgeq.quant.ranges`.

    Returns:
        ``(q, scale, zero_point)``.
    """
    check_float_tensor(x, name)
    rows = to_rows(x.detach().to(torch.float32), spec)
    lo = from_rows(rows.amin(dim=1), spec, x.shape)
    hi = from_rows(rows.amax(dim=1), spec, x.shape)
    scale, zp = choose_qparams(lo, hi, spec)
    return quantize(x, scale, zp, spec), scale, zp
