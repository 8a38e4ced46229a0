"""Quantizer specifications: small frozen dataclasses, validated where they are built.

A `QuantSpec` says *how* one tensor is quantized (bits, sign, symmetry, granularity,
level scheme, range estimator). It holds no data: scales and zero points live in the
modules that use a spec. `CastSpec` describes a float16/bfloat16 cast.

Strings are accepted only through `from_dict` (the recipe/CLI boundary), resolved by
the enums' values.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

SCHEMA_VERSION = 1


class Granularity(StrEnum):
    """How many (scale, zero point) pairs a tensor gets."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"


class Scheme(StrEnum):
    """Where the quantization levels lie."""

    UNIFORM = "uniform"
    POWER_OF_TWO = "power_of_two"
    KMEANS = "kmeans"


class RangeMethod(StrEnum):
    """How the clipping range [min, max] is estimated from data."""

    MINMAX = "minmax"
    MOVING_AVERAGE = "moving_average"
    PERCENTILE = "percentile"
    MSE = "mse"
    KL = "kl"


class FloatFormat(StrEnum):
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class SpecError(ValueError):
    """A specification field has a value that is not allowed."""


def _enum_value(enum_cls: type[Enum], field: str, value: Any) -> Any:
    if isinstance(value, enum_cls):
        return value
    allowed = [e.value for e in enum_cls]
    if isinstance(value, str) and value in allowed:
        return enum_cls(value)
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SpecError(f"{field}={value!r} is not one of {allowed}{hint}")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Args:
        bits: integer width, 2 to 16 (k-means: 1 to 8 index bits).
        signed: integer range [-2^(b-1), 2^(b-1)-1] if True, else [0, 2^b - 1].
        symmetric: zero point fixed at 0 (scale from max |x|); False: affine, the
            integer zero point is chosen so that [min, max] spans the range.
        narrow_range: drop the most negative level (int8: [-127, 127]) so the grid is
            symmetric; only with ``symmetric`` and ``signed``.
        granularity: per tensor, per channel along ``axis``, or per group of
            ``group_size`` consecutive elements along ``axis``.
        scheme: uniform, power-of-two (logarithmic) or k-means codebook levels.
        range_method: range estimator used by observers.
        percentile: for ``RangeMethod.PERCENTILE``, the share of values kept, in (0, 100].
        momentum: for ``RangeMethod.MOVING_AVERAGE``, weight of each new batch, in (0, 1].

    Example:
        >>> QuantSpec(bits=8, signed=True, symmetric=True,
        ...           granularity=Granularity.PER_CHANNEL, axis=0).qmin
        -128
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = False
    granularity: Granularity = Granularity.PER_TENSOR
    axis: int | None = None
    group_size: int | None = None
    scheme: Scheme = Scheme.UNIFORM
    range_method: RangeMethod = RangeMethod.MINMAX
    percentile: float = 99.999
    momentum: float = 0.1

    def __post_init__(self) -> None:
        # Enums may arrive as their string values from recipes.
        for name, cls in (
            ("granularity", Granularity),
            ("scheme", Scheme),
            ("range_method", RangeMethod),
        ):
            object.__setattr__(self, name, _enum_value(cls, name, getattr(self, name)))
        self._check_bits()
        self._check_granularity()
        self._check_scheme()
        if self.narrow_range and not (self.symmetric and self.signed):
            raise SpecError(
                "narrow_range=True needs symmetric=True and signed=True "
                "(it removes the lone most-negative level of a symmetric signed grid)"
            )
        if not 0.0 < self.percentile <= 100.0:
            raise SpecError(f"percentile={self.percentile!r} must be in (0, 100]")
        if not 0.0 < self.momentum <= 1.0:
            raise SpecError(f"momentum={self.momentum!r} must be in (0, 1]")

    def _check_bits(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise SpecError(f"bits={self.bits!r} must be an int")
        low = 1 if self.scheme is Scheme.KMEANS else 2
        high = 8 if self.scheme is Scheme.KMEANS else 16
        if not low <= self.bits <= high:
            raise SpecError(
                f"bits={self.bits} is out of range for scheme={self.scheme.value}: "
                f"allowed {low}..{high}"
                + (" (a k-means codebook has at most 256 entries)" if high == 8 else "")
            )

    def _check_granularity(self) -> None:
        g = self.granularity
        if g is Granularity.PER_TENSOR:
            if self.axis is not None or self.group_size is not None:
                raise SpecError(
                    "granularity=per_tensor takes no axis or group_size; "
                    "use per_channel (axis) or per_group (axis and group_size)"
                )
            return
        if self.axis is None:
            raise SpecError(f"granularity={g.value} needs axis (e.g. axis=0 for conv weights)")
        if g is Granularity.PER_CHANNEL and self.group_size is not None:
            raise SpecError("group_size is only for granularity=per_group")
        if g is Granularity.PER_GROUP and (
            not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise SpecError(f"granularity=per_group needs group_size >= 1, got {self.group_size!r}")

    def _check_scheme(self) -> None:
        if self.scheme is Scheme.POWER_OF_TWO and not self.symmetric:
            raise SpecError(
                "scheme=power_of_two has levels symmetric around zero; use symmetric=True"
            )
        if self.scheme is Scheme.KMEANS and self.granularity is Granularity.PER_GROUP:
            raise SpecError(
                "scheme=kmeans learns one codebook per tensor or per channel; "
                "use granularity=per_tensor or per_channel"
            )

    @property
    def qmin(self) -> int:
        """Smallest integer level."""
        if not self.signed:
            return 0
        low = -(2 ** (self.bits - 1))
        return low + 1 if self.narrow_range else low

    @property
    def qmax(self) -> int:
        """Largest integer level."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def replace(self, **changes: Any) -> QuantSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "quant", "schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.value if isinstance(v, Enum) else v
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        return _from_dict(cls, data, "quant")


@dataclass(frozen=True)
class CastSpec:
    """A cast to a 16-bit float format (weights or activations stored as fp16/bf16)."""

    dtype: FloatFormat = FloatFormat.FLOAT16

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _enum_value(FloatFormat, "dtype", self.dtype))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cast", "schema_version": SCHEMA_VERSION, "dtype": self.dtype.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CastSpec:
        return _from_dict(cls, data, "cast")


def _from_dict(cls: Any, data: dict[str, Any], kind: str) -> Any:
    data = dict(data)
    got_kind = data.pop("kind", kind)
    if got_kind != kind:
        raise SpecError(f"kind={got_kind!r}: expected {kind!r} for {cls.__name__}")
    version = data.pop("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise SpecError(
            f"schema_version={version!r} is not supported (this edgeq reads {SCHEMA_VERSION})"
        )
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"unknown field {key!r} for {cls.__name__}{hint}")
    return cls(**data)


TensorSpec = QuantSpec | CastSpec

# Common specs, named once.
INT8_WEIGHT_PER_CHANNEL = QuantSpec(
    bits=8, signed=True, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0
)
UINT8_ACTIVATION = QuantSpec(bits=8, signed=False, symmetric=False)
