"""Configuration of post-training quantization."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from edgeq.quant import QuantSpec


class Target(StrEnum):
    """Which integer kernels the model must be exact on.

    - ``portable``: exact everywhere, including x86 AVX2 CPUs without VNNI, whose
      kernels add pairs of products in saturating 16-bit arithmetic: weight pairs
      that could saturate are lowered (see `edgeq.quant.saturation`).
    - ``vnni``: x86 with AVX-512 VNNI / AVX-VNNI / AMX, ARM: no pair limit needed.
    """

    PORTABLE = "portable"
    VNNI = "vnni"


def _default_weight_spec() -> QuantSpec:
    return QuantSpec(
        bits=8, signed=True, symmetric=True, granularity="per_channel", axis=0, range_method="mse"
    )


def _default_activation_spec() -> QuantSpec:
    # uint8 activations: ONNX Runtime's fast x86 path is u8 x s8 (s8 x s8 is slower).
    return QuantSpec(bits=8, signed=False, symmetric=False, range_method="mse")


@dataclass(frozen=True)
class PTQConfig:
    """Static W8A8 post-training quantization settings.

    Defaults: int8 symmetric per-channel weights with MSE-optimal ranges; uint8
    affine per-tensor activations with MSE-optimal ranges (histogram); exact on every
    x86 CPU (``target='portable'``).
    """

    weight: QuantSpec = field(default_factory=_default_weight_spec)
    activation: QuantSpec = field(default_factory=_default_activation_spec)
    target: Target = Target.PORTABLE
    max_calibration_batches: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", Target(self.target))
