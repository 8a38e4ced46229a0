"""Configuration of post-training quantization."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from torch import nn

from edgeq.graph.qmodules import layer_weight_spec
from edgeq.ptq.range_search import DEFAULT_PERCENTILES
from edgeq.ptq.rounding import Rounding
from edgeq.quant import Granularity, QuantSpec, RangeMethod, Scheme, SpecError


class Target(StrEnum):
    """Which integer kernels the model must be exact on.

    - ``portable``: exact everywhere, including x86 AVX2 CPUs without VNNI, whose
      kernels add pairs of products in saturating 16-bit arithmetic: weight pairs
      that could saturate are lowered (see `edgeq.quant.saturation`).
    - ``vnni``: x86 with AVX-512 VNNI / AVX-VNNI / AMX, ARM: no pair limit needed.
    """

    PORTABLE = "portable"
    VNNI = "vnni"


class Mode(StrEnum):
    """What gets quantized.

    - ``static``: weights and activations (W8A8), integer kernels end to end.
    - ``weight_only``: weights only (int8 or int4, per channel or per group), stored
      packed; activations stay float (smallest files; no integer kernels).
    - ``float16``: every float parameter rounded to float16 and stored so (half the
      size); computation stays float32 (ONNX: float16 initializers + Cast).
    - ``dynamic``: linear layers get int8 weights ahead of time and quantize their
      input to uint8 per call from its own range (ONNX DynamicQuantizeLinear +
      MatMulInteger); no calibration. Other layers stay float.
    """

    STATIC = "static"
    WEIGHT_ONLY = "weight_only"
    FLOAT16 = "float16"
    DYNAMIC = "dynamic"


def _default_weight_spec() -> QuantSpec:
    return QuantSpec(
        bits=8,
        signed=True,
        symmetric=True,
        granularity=Granularity.PER_CHANNEL,
        axis=0,
        range_method=RangeMethod.MSE,
    )


def _default_activation_spec() -> QuantSpec:
    # uint8 activations: ONNX Runtime's fast x86 path is u8 x s8 (s8 x s8 is slower).
    # Ranges: a percentile of a histogram of the calibration activations, chosen per
    # model by `PTQConfig.percentile_search`; 99.999 (ONNX Runtime's default) when the
    # search is off. On MobileNetV2 percentiles beat histogram-MSE, min-max and KL
    # ranges by 1.8 to 5.6 dB of logits SQNR (docs/benchmarks.md).
    return QuantSpec(
        bits=8,
        signed=False,
        symmetric=False,
        range_method=RangeMethod.PERCENTILE,
        percentile=99.999,
    )


# What each mode can quantize, pack, save, load and export to ONNX today (every other
# combination crashed somewhere between calibration and export, or exported a model
# that disagrees with the simulation): options outside these are refused up front.
WEIGHT_BITS: dict[Mode, tuple[int, ...]] = {
    Mode.STATIC: (2, 4, 8),  # int8 QLinearConv/QGemm weights holding 2/4-bit levels
    Mode.WEIGHT_ONLY: (4, 8),  # int4/int8 DequantizeLinear
    Mode.DYNAMIC: (2, 4, 8),  # int8 MatMulInteger weights
}
WEIGHT_GRANULARITIES: dict[Mode, tuple[Granularity, ...]] = {
    Mode.STATIC: (Granularity.PER_CHANNEL,),
    Mode.WEIGHT_ONLY: tuple(Granularity),
    Mode.DYNAMIC: (Granularity.PER_TENSOR, Granularity.PER_CHANNEL),
}
ACTIVATION_BITS = (8,)  # uint8/int8 QuantizeLinear feeding the integer kernels


def _enum(cls: type[StrEnum], key: str, value: object) -> StrEnum:
    try:
        return cls(str(value)) if isinstance(value, str) else cls(value)  # type: ignore[arg-type]
    except ValueError:
        raise SpecError(
            f"{key}={value!r}: expected one of {', '.join(m.value for m in cls)}"
        ) from None


def _allowed(values: tuple) -> str:
    return ", ".join(str(getattr(v, "value", v)) for v in values)


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer exception, matched on the module name (``fnmatch`` glob, e.g.
    ``features.0.*`` or ``classifier.1``): other weight ``bits``, or ``float=True`` to
    leave the layer unquantized. The first matching override wins."""

    match: str
    bits: int | None = None
    float: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.match, str) or not self.match:
            raise SpecError(f"override match={self.match!r} must be a module name or glob")
        if not isinstance(self.float, bool):
            raise SpecError(f"override {self.match!r}: float={self.float!r} must be true/false")
        if self.bits is not None and (
            not isinstance(self.bits, int) or isinstance(self.bits, bool)
        ):
            raise SpecError(f"override {self.match!r}: bits={self.bits!r} must be an int")
        if self.float and self.bits is not None:
            raise SpecError(f"override {self.match!r}: give bits or float, not both")
        if not self.float and self.bits is None:
            raise SpecError(f"override {self.match!r}: give bits (2..8) or float: true")
        if self.bits is not None and not 2 <= self.bits <= 8:
            raise SpecError(f"override {self.match!r}: bits={self.bits} must be 2..8")

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.match)


@dataclass(frozen=True)
class PTQConfig:
    """Post-training quantization settings.

    Defaults (static W8A8): int8 symmetric per-channel weights with MSE-optimal
    ranges; uint8 affine per-tensor activations whose clipping percentile is chosen
    per model after calibration (``percentile_search``); bias correction; exact on
    every x86 CPU (``target='portable'``). ``overrides`` change single layers. Each
    default was chosen by the SQNR of MobileNetV2's logits against FP32 on held-out
    images (`docs/benchmarks.md`).
    """

    weight: QuantSpec = field(default_factory=_default_weight_spec)
    activation: QuantSpec = field(default_factory=_default_activation_spec)
    target: Target = Target.PORTABLE
    max_calibration_batches: int | None = None
    bias_correction: bool = True  # static mode: `edgeq.ptq.bias_correction`
    mode: Mode = Mode.STATIC
    overrides: tuple[LayerOverride, ...] = ()
    strict: bool = False  # True: an op edgeq cannot quantize is an error, not a warning
    # Depthwise filters hold 9 weights per channel: below 8 bits their grids are too
    # coarse (MobileNetV2 with 4-bit depthwise weights loses most of its accuracy), and
    # they are about 2% of its weights. They get at least this many bits.
    min_depthwise_bits: int = 8
    # Dynamic LSTMs only: ONNX Runtime splits a batch of more than one sequence into
    # one block of rows per intra-op thread and quantizes each block's hidden state on
    # its own; the simulation does the same for this many threads (1: the whole batch).
    runtime_threads: int = 1
    # Percentile activation ranges: candidates scored after calibration by the output
    # SQNR against the float model on the first calibration images; the best is kept
    # (`edgeq.ptq.range_search`). The activation spec's own percentile is always one
    # of them; () uses that percentile alone.
    percentile_search: tuple[float, ...] = DEFAULT_PERCENTILES
    # How weights take their levels on the grid: nearest, or learned from the
    # calibration images layer by layer (`edgeq.ptq.rounding`), after the activation
    # ranges are fixed and before bias correction. auto: GPTQ below 8 bits (W4A8
    # MobileNetV2: 18% top-1 with nearest, 70% with GPTQ), nearest at 8
    rounding: Rounding = Rounding.AUTO

    def __post_init__(self) -> None:
        if self.runtime_threads < 1:
            raise SpecError(f"runtime_threads={self.runtime_threads} must be at least 1")
        object.__setattr__(self, "percentile_search", tuple(self.percentile_search))
        for p in self.percentile_search:
            if not 0.0 < p <= 100.0:
                raise SpecError(f"percentile_search: {p!r} must be in (0, 100]")
        object.__setattr__(self, "target", Target(self.target))
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "rounding", _enum(Rounding, "rounding", self.rounding))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        self._check_supported()

    def _check_supported(self) -> None:
        """Refuse what this mode cannot quantize, pack, load and export (see WEIGHT_BITS)."""
        mode, w = self.mode, self.weight
        if mode is Mode.FLOAT16:
            return  # weight and activation specs are not used
        if w.scheme is not Scheme.UNIFORM:
            raise SpecError(
                f"weight.scheme={w.scheme.value}: {w.scheme.value} levels are not built into "
                "the quantized layers yet (they would be quantized uniformly); use uniform"
            )
        bits = WEIGHT_BITS[mode]
        if w.bits not in bits:
            raise SpecError(f"weight.bits={w.bits}: mode {mode.value} takes {_allowed(bits)}")
        for o in self.overrides:
            if o.bits is not None and o.bits not in bits:
                raise SpecError(
                    f"override {o.match!r}: bits={o.bits}: mode {mode.value} takes {_allowed(bits)}"
                )
        grans = WEIGHT_GRANULARITIES[mode]
        if w.granularity not in grans:
            raise SpecError(
                f"weight.granularity={w.granularity.value}: mode {mode.value} takes "
                f"{_allowed(grans)}"
            )
        a = self.activation
        if mode is Mode.STATIC and (
            a.bits not in ACTIVATION_BITS or a.scheme is not Scheme.UNIFORM
        ):
            raise SpecError(
                f"activation.bits={a.bits}, scheme={a.scheme.value}: static mode takes "
                f"{_allowed(ACTIVATION_BITS)}-bit uniform activations (the integer kernels' "
                "inputs)"
            )
        if self.rounding not in (Rounding.AUTO, Rounding.NEAREST) and mode not in (
            Mode.STATIC,
            Mode.WEIGHT_ONLY,
        ):
            raise SpecError(
                f"weight.rounding={self.rounding.value}: learned rounding needs calibration "
                f"images, which mode {mode.value} does not take; use nearest"
            )
        if not isinstance(self.min_depthwise_bits, int) or self.min_depthwise_bits not in bits:
            raise SpecError(
                f"min_depthwise_bits={self.min_depthwise_bits!r}: mode {mode.value} takes "
                f"{_allowed(bits)}"
            )

    def check_layers(self, layers: Mapping[str, nn.Module]) -> None:
        """Check the config against the model's quantizable layers (name -> float module):
        every override matches at least one layer, and the group size divides the input
        channels of each layer quantized per group (spatial kernels and layers with
        fewer channels than a group fall back to per channel: `layer_weight_spec`).

        Raises:
            SpecError: naming the override (with the closest layer names) or the layer.
        """
        names = list(layers)
        for o in self.overrides:
            if not any(o.matches(n) for n in names):
                close = difflib.get_close_matches(o.match, names, n=3, cutoff=0.4)
                hint = f"; closest layer names: {', '.join(close)}" if close else ""
                raise SpecError(
                    f"override match={o.match!r} matches no layer of the model{hint} "
                    f"({len(names)} quantizable layers, e.g. {', '.join(names[:3])})"
                )
        if self.mode is Mode.FLOAT16 or self.weight.granularity is not Granularity.PER_GROUP:
            return
        size = self.weight.group_size
        for name, module in layers.items():
            weight = getattr(module, "weight", None)
            if self.layer_bits(name, module) is None or weight is None or weight.dim() < 2:
                continue
            spec = layer_weight_spec(self.weight, tuple(weight.shape))
            if spec.granularity is Granularity.PER_GROUP and weight.shape[1] % size:
                raise SpecError(
                    f"weight.group_size={size} does not divide the {weight.shape[1]} input "
                    f"channels of layer {name!r}; choose a divisor or per_channel"
                )

    def percentile_candidates(self) -> tuple[float, ...]:
        """Activation percentiles to score after calibration: none unless activations
        use percentile ranges (static mode); else the search's and the spec's own."""
        if (
            self.mode is not Mode.STATIC
            or self.activation.range_method is not RangeMethod.PERCENTILE
        ):
            return ()
        return tuple(sorted({*self.percentile_search, self.activation.percentile}))

    def rounding_method(self) -> Rounding:
        """The rounding `quantize` applies: ``rounding``, with auto resolved (GPTQ when
        static or weight-only weights have fewer than 8 bits, here or in an override;
        nearest otherwise)."""
        if self.rounding is not Rounding.AUTO:
            return self.rounding
        if self.mode not in (Mode.STATIC, Mode.WEIGHT_ONLY):
            return Rounding.NEAREST
        low = self.weight.bits < 8 or any(o.bits is not None and o.bits < 8 for o in self.overrides)
        return Rounding.GPTQ if low else Rounding.NEAREST

    def override_for(self, name: str) -> LayerOverride | None:
        return next((o for o in self.overrides if o.matches(name)), None)

    def layer_bits(self, name: str, module: object) -> int | None:
        """Weight bits for one layer (None: keep in float). Dynamic mode quantizes
        linear and LSTM layers only; LSTMs are quantized in dynamic mode only."""
        if self.mode is Mode.DYNAMIC and not isinstance(module, nn.Linear | nn.LSTM):
            return None
        if self.mode is not Mode.DYNAMIC and isinstance(module, nn.LSTM):
            return None
        o = self.override_for(name)
        if o is not None:
            return None if o.float else o.bits
        groups = getattr(module, "groups", 1)
        if groups > 1 and groups == getattr(module, "in_channels", 0):
            return max(self.weight.bits, self.min_depthwise_bits)
        return self.weight.bits

    @classmethod
    def weight_only(cls, bits: int = 4, group_size: int | None = 128) -> PTQConfig:
        """Weight-only quantization: ``bits``-bit symmetric weights, per group of
        ``group_size`` input channels (None: per output channel), MSE ranges."""
        if group_size is None:
            spec = QuantSpec(
                bits=bits, granularity=Granularity.PER_CHANNEL, axis=0, range_method=RangeMethod.MSE
            )
        else:
            spec = QuantSpec(
                bits=bits,
                granularity=Granularity.PER_GROUP,
                axis=1,
                group_size=group_size,
                range_method=RangeMethod.MSE,
            )
        return cls(weight=spec, mode=Mode.WEIGHT_ONLY, bias_correction=False)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode.value,
            "weight": self.weight.to_dict(),
            "activation": self.activation.to_dict(),
            "target": self.target.value,
            "max_calibration_batches": self.max_calibration_batches,
            "bias_correction": self.bias_correction,
            "overrides": [dataclasses.asdict(o) for o in self.overrides],
            "strict": self.strict,
            "min_depthwise_bits": self.min_depthwise_bits,
            "runtime_threads": self.runtime_threads,
            "percentile_search": list(self.percentile_search),
            "rounding": self.rounding.value,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PTQConfig:
        return cls(
            weight=QuantSpec.from_dict(d["weight"]),
            activation=QuantSpec.from_dict(d["activation"]),
            target=d["target"],
            max_calibration_batches=d.get("max_calibration_batches"),
            bias_correction=d.get("bias_correction", False),
            mode=d.get("mode", "static"),
            overrides=tuple(LayerOverride(**o) for o in d.get("overrides", ())),
            strict=d.get("strict", False),
            runtime_threads=d.get("runtime_threads", 1),
            min_depthwise_bits=d.get("min_depthwise_bits", 8),
            percentile_search=tuple(d.get("percentile_search", ())),
            rounding=d.get("rounding", "nearest"),  # artifacts before: nearest
        )
