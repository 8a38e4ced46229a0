"""Input checks shared by the quantization math: clear errors naming the tensor."""

from __future__ import annotations

import torch


class QuantInputError(ValueError):
    """A tensor cannot be quantized as given (wrong dtype, empty, NaN/Inf)."""


def check_float_tensor(x: torch.Tensor, name: str = "tensor", *, allow_empty: bool = False) -> None:
    """Reject what cannot be quantized, naming the tensor.

    Raises:
        QuantInputError: ``x`` is not a real floating tensor, is empty, or holds NaN/Inf.
    """
    if not isinstance(x, torch.Tensor):
        raise QuantInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise QuantInputError(
            f"{name}: complex dtype {x.dtype} cannot be quantized; quantize real and "
            "imaginary parts separately"
        )
    if not x.is_floating_point():
        raise QuantInputError(
            f"{name}: dtype {x.dtype} is not floating point; quantization takes float "
            "tensors (convert with .float())"
        )
    if x.numel() == 0 and not allow_empty:
        raise QuantInputError(f"{name}: empty tensor (shape {tuple(x.shape)}) has no range")
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise QuantInputError(
            f"{name}: holds {n_nan} NaN and {n_inf} Inf of {x.numel()} values; "
            "quantization needs finite values"
        )
