"""Where a spec's parameters sit relative to the tensor they quantize.

Per-tensor parameters are scalars; per-channel parameters have shape ``[C]`` for the
channel ``axis``; per-group (blocked) parameters have the tensor's shape with the
``axis`` dimension replaced by ``ceil(n / group_size)``, as ONNX's blocked
QuantizeLinear/DequantizeLinear expect.
"""

from __future__ import annotations

import math

import torch

from edgeq.quant.spec import Granularity, QuantSpec, SpecError


def normalized_axis(spec: QuantSpec, ndim: int) -> int:
    """The spec's axis as a non-negative index into a tensor of ``ndim`` dims."""
    assert spec.axis is not None
    axis = spec.axis + ndim if spec.axis < 0 else spec.axis
    if not 0 <= axis < ndim:
        raise SpecError(
            f"axis={spec.axis} is out of range for a {ndim}-d tensor (allowed {-ndim}..{ndim - 1})"
        )
    return axis


def param_shape(spec: QuantSpec, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the scale/zero-point tensors for a tensor of ``shape``."""
    if spec.granularity is Granularity.PER_TENSOR:
        return ()
    axis = normalized_axis(spec, len(shape))
    if spec.granularity is Granularity.PER_CHANNEL:
        return (shape[axis],)
    assert spec.group_size is not None
    out = list(shape)
    out[axis] = math.ceil(shape[axis] / spec.group_size)
    return tuple(out)


def expand_param(param: torch.Tensor, spec: QuantSpec, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scale or zero point to ``x``'s shape (a view where possible)."""
    if spec.granularity is Granularity.PER_TENSOR:
        return param
    axis = normalized_axis(spec, x.ndim)
    if spec.granularity is Granularity.PER_CHANNEL:
        view = [1] * x.ndim
        view[axis] = -1
        return param.reshape(view)
    assert spec.group_size is not None
    full = torch.repeat_interleave(param, spec.group_size, dim=axis)
    return full.narrow(axis, 0, x.shape[axis])


def to_rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``x`` as ``[R, N]``: one row per (scale, zero point) the spec assigns.

    Per-group rows are zero-padded to ``group_size``; zero is always inside a
    quantization range, so padding never changes a row's min/max.
    """
    if spec.granularity is Granularity.PER_TENSOR:
        return x.reshape(1, -1)
    axis = normalized_axis(spec, x.ndim)
    if spec.granularity is Granularity.PER_CHANNEL:
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    assert spec.group_size is not None
    moved = x.movedim(axis, -1)
    n = moved.shape[-1]
    pad = (-n) % spec.group_size
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    return moved.reshape(-1, spec.group_size)


def from_rows(
    values: torch.Tensor, spec: QuantSpec, shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """Inverse of `to_rows` for one value per row: reshape ``[R]`` to `param_shape`."""
    pshape = param_shape(spec, shape)
    if spec.granularity is not Granularity.PER_GROUP:
        return values.reshape(pshape)
    axis = normalized_axis(spec, len(shape))
    moved_shape = [*pshape[:axis], *pshape[axis + 1 :], pshape[axis]]
    return values.reshape(moved_shape).movedim(-1, axis)
