"""The quantization core: specs and pure math. Imports nothing else from edgeq."""

from edgeq.quant.affine import (
    choose_qparams,
    dequantize,
    fake_quantize,
    lsq_fake_quantize,
    lsq_grad_scale,
    quantize,
    quantize_tensor,
    round_ste,
    scale_gradient,
)
from edgeq.quant.checks import QuantInputError, check_float_tensor
from edgeq.quant.error import sqnr_db
from edgeq.quant.nonuniform import (
    codebook_dequantize,
    codebook_fake_quantize,
    codebook_quantize,
    kmeans_codebook,
    power_of_two_codebook,
    power_of_two_levels,
)
from edgeq.quant.observers import RangeObserver
from edgeq.quant.packing import cast_fake, pack_bits, unpack_bits
from edgeq.quant.ranges import estimate_range
from edgeq.quant.spec import (
    CastSpec,
    FloatFormat,
    Granularity,
    QuantSpec,
    RangeMethod,
    Scheme,
    SpecError,
    TensorSpec,
)

__all__ = [
    "CastSpec",
    "FloatFormat",
    "Granularity",
    "QuantInputError",
    "QuantSpec",
    "RangeMethod",
    "RangeObserver",
    "Scheme",
    "SpecError",
    "TensorSpec",
    "cast_fake",
    "check_float_tensor",
    "choose_qparams",
    "codebook_dequantize",
    "codebook_fake_quantize",
    "codebook_quantize",
    "dequantize",
    "estimate_range",
    "fake_quantize",
    "kmeans_codebook",
    "lsq_fake_quantize",
    "lsq_grad_scale",
    "pack_bits",
    "power_of_two_codebook",
    "power_of_two_levels",
    "quantize",
    "quantize_tensor",
    "round_ste",
    "scale_gradient",
    "sqnr_db",
    "unpack_bits",
]
