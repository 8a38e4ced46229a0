"""Quantized modules: plain nn.Modules that simulate the integer model exactly.

- `ActivationQuantizer` observes during calibration, then fake-quantizes with frozen
  (scale, zero point) buffers, as ONNX QuantizeLinear -> DequantizeLinear would.
- `QuantConv2d` / `QuantLinear` hold float weights, their int8 per-channel scales, and
  the input scale, so the bias is rounded to int32 with scale ``s_in * s_w`` exactly
  as the runtime stores it. An optional fused ReLU/ReLU6 is applied before the output
  quantizer (in the exported graph the quantizer's clamp makes it redundant).

New layer types register with `register_quant_module` (one registry keyed by type).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from edgeq.quant import (
    Granularity,
    QuantSpec,
    RangeObserver,
    choose_qparams,
    dequantize,
    estimate_range,
    fake_quantize,
    quantize,
)
from edgeq.quant.kernels import (
    dynamic_quantize_uint8,
    qlinear_add,
    qlinear_global_average_pool,
    requantize_accumulator,
)
from edgeq.quant.saturation import NO_PAD, limit_pairs, pair_safe_scale

QUANT_MODULES: dict[type[nn.Module], type[nn.Module]] = {}


def register_quant_module(float_type: type[nn.Module]) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        QUANT_MODULES[float_type] = cls
        return cls

    return deco


class ActivationQuantizer(nn.Module):
    """Observe (calibration) or fake-quantize (after `freeze`) one activation tensor."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, spec: QuantSpec, *, name: str, nonnegative: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.name = name
        # Follows a ReLU/ReLU6: its range starts at 0, so uint8's zero point is 0 and
        # the runtime's clamp at the quantized minimum *is* the ReLU.
        self.nonnegative = nonnegative
        self.observer = RangeObserver(spec, name=name)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.observing = True
        self.enabled = True

    def freeze(self, percentile: float | None = None) -> None:
        """Fix (scale, zero point) from what the observer saw (``percentile``: another
        clipping percentile of the same histogram, for a range search)."""
        lo, hi = self.observer.compute_range(percentile)
        if self.nonnegative:
            lo = torch.zeros_like(lo)
        scale, zp = choose_qparams(lo.reshape(()), hi.reshape(()), self.spec)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self.observing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            return self.observer(x)
        if not self.enabled:  # analysis (sensitivity): this tensor stays float
            return x
        if x.requires_grad:  # training: straight-through gradients
            return fake_quantize(x, self.scale, self.zero_point, self.spec)
        # evaluation: QuantizeLinear -> DequantizeLinear, bit-exact, in four passes
        # (NaN stays NaN; calibration already rejected non-finite activations)
        z = self.zero_point.to(torch.float32)
        q = torch.clamp(torch.round(x / self.scale) + z, self.spec.qmin, self.spec.qmax)
        return (q - z) * self.scale

    def extra_repr(self) -> str:
        return f"name={self.name}, bits={self.spec.bits}, signed={self.spec.signed}"


def layer_weight_spec(spec: QuantSpec, shape: tuple[int, ...]) -> QuantSpec:
    """The spec a layer's weight gets: per-group specs group the input channels (axis
    1) of linear and 1x1 conv weights; spatial kernels and layers with fewer input
    channels than a group fall back to per output channel (a group must be a run of
    input channels for ONNX's blocked DequantizeLinear)."""
    if spec.granularity is not Granularity.PER_GROUP:
        return spec
    assert spec.group_size is not None
    spatial = len(shape) == 4 and shape[2] * shape[3] > 1
    if spatial or shape[1] < spec.group_size:
        return dataclasses.replace(
            spec, granularity=Granularity.PER_CHANNEL, group_size=None, axis=0
        )
    return dataclasses.replace(spec, axis=1)


class _WeightQuantMixin(nn.Module):
    """Weight levels, per-channel scales and int32-rounded bias shared by conv/linear."""

    _channel_dim: int  # where the channels are in the layer's input and output

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    input_scale: torch.Tensor
    input_zero_point: torch.Tensor
    output_scale: torch.Tensor
    output_zero_point: torch.Tensor

    def _init_quant(
        self,
        layer: nn.Conv2d | nn.Linear,
        weight_spec: QuantSpec,
        activation: str | None,
        limit_pairs_: bool,
        name: str,
    ) -> None:
        self.layer_name = name
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None
        out_channels = self.weight.shape[0]
        self.weight_spec = layer_weight_spec(weight_spec, tuple(self.weight.shape))
        self.activation = activation
        self.limit_pairs = limit_pairs_
        self.register_buffer("weight_scale", torch.ones(out_channels))
        self.register_buffer("weight_zero_point", torch.zeros(out_channels, dtype=torch.int32))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))
        # the output quantizer's parameters, when the next op is one (integer output)
        self.register_buffer("output_scale", torch.ones(()))
        self.register_buffer("output_zero_point", torch.zeros((), dtype=torch.int32))
        self.input_spec: QuantSpec | None = None
        self.output_spec: QuantSpec | None = None
        self.quantized = False
        # dynamic quantization: the input is quantized per call, from its own range
        self.dynamic = False
        # True: compute what the integer kernels compute (evaluation, export checks);
        # False: float fake-quant with straight-through gradients (fine-tuning).
        self.integer_exact = True

    @property
    def weight_only(self) -> bool:
        """Quantized without an input quantizer: float activations, dequantized weights."""
        return self.quantized and self.input_spec is None and not self.dynamic

    def attach_io(
        self, input_quant: ActivationQuantizer, output_quant: ActivationQuantizer | None
    ) -> None:
        """Copy the (frozen) input and output quantizers' parameters into this layer."""
        self.input_scale.copy_(input_quant.scale)
        self.input_zero_point.copy_(input_quant.zero_point)
        self.input_spec = input_quant.spec
        if output_quant is not None:
            self.output_scale.copy_(output_quant.scale)
            self.output_zero_point.copy_(output_quant.zero_point)
            self.output_spec = output_quant.spec

    def freeze_weight(
        self, input_quant: ActivationQuantizer | None, output_quant: ActivationQuantizer | None
    ) -> None:
        """Attach the activation qparams (none: weight-only) and choose the weight's
        scales."""
        if input_quant is not None:
            self.attach_io(input_quant, output_quant)
        lo, hi = estimate_range(self.weight.detach(), self.weight_spec, name=self.layer_name)
        scale, zp = choose_qparams(lo, hi, self.weight_spec)
        if self.limit_pairs:
            scale = self._pair_safe_scale(scale, zp)
        # per-group scales have the weight's shape with one axis shortened
        self.weight_scale = scale.to(torch.float32).clone()
        self.weight_zero_point = zp.to(torch.int32).clone()
        self.quantized = True

    def pad_in(self) -> tuple[int, int]:
        """Zero input channels (before, after) the exported layer adds; none here."""
        return NO_PAD

    def _pad_choices(self) -> list[tuple[int, int]]:
        return [self.pad_in()]

    def _use_pad(self, pad: tuple[int, int]) -> None:
        pass

    def _pair_safe_scale(self, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        """Scales whose pair-limited levels have the least error, for the padding (of
        those `_pad_choices` allows) that leaves the least error; that padding is kept."""
        w, spec = self.weight.detach(), self.weight_spec
        view = [-1] + [1] * (w.ndim - 1)
        best: tuple[float, tuple[int, int], torch.Tensor] | None = None
        for pad in self._pad_choices():
            s = pair_safe_scale(w, scale, spec.qmin, spec.qmax, pad_in=pad)
            q = limit_pairs(quantize(w, s, zp, spec), w / s.reshape(view), pad)
            err = float(((dequantize(q, s, zp, spec).double() - w.double()) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, pad, s)
        assert best is not None
        self._use_pad(best[1])
        return best[2]

    def set_levels(self, weight_q: torch.Tensor, bias_q: torch.Tensor | None) -> None:
        """Restore stored integer levels (`edgeq.load`): the float weight and bias become
        their dequantized values and the levels are used as they are, bit for bit."""
        with torch.no_grad():
            self.weight.copy_(
                dequantize(weight_q, self.weight_scale, self.weight_zero_point, self.weight_spec)
            )
            if bias_q is not None:
                assert self.bias is not None
                s = (self.input_scale * self.weight_scale).double()
                self.bias.copy_((bias_q.double() * s).float())
        self.__dict__["_levels_cache"] = (self._weight_key(), weight_q.to(torch.int32))
        if bias_q is not None:
            self.__dict__["_bias_cache"] = (self._bias_key(), bias_q.to(torch.int32))
        self.quantized = True

    def _weight_key(self) -> tuple[int, ...]:
        return (
            self.weight._version,
            self.weight.data_ptr(),
            self.weight_scale._version,
            self.weight_zero_point._version,
            *self.pad_in(),
        )

    def _bias_key(self) -> tuple[int, ...]:
        assert self.bias is not None
        return (
            self.bias._version,
            self.bias.data_ptr(),
            self.input_scale._version,
            self.weight_scale._version,
        )

    def weight_levels(self) -> torch.Tensor:
        """int32 weight levels as exported (pair-limited where the target needs it).

        Cached while the weight, its scale and zero point are unchanged (the tensors'
        version counters say so), so evaluation does not redo the pair search."""
        key = self._weight_key()
        cached = self.__dict__.get("_levels_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        w = self.weight.detach()
        q = quantize(w, self.weight_scale, self.weight_zero_point, self.weight_spec)
        if self.limit_pairs:
            view = [-1] + [1] * (w.ndim - 1)
            q = limit_pairs(q, w / self.weight_scale.reshape(view), self.pad_in())
        self.__dict__["_levels_cache"] = (key, q)
        return q

    def bias_levels(self) -> torch.Tensor | None:
        """int32 bias with scale ``input_scale * weight_scale`` (the runtime's format);
        None without a bias or when weight-only (the bias stays float)."""
        if self.bias is None or self.weight_only or self.dynamic:
            return None  # the bias stays float (no fixed input scale to share)
        key = self._bias_key()
        cached = self.__dict__.get("_bias_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        s = (self.input_scale * self.weight_scale).double()
        q = torch.round(self.bias.detach().double() / s).clamp(-(2**31), 2**31 - 1).to(torch.int32)
        self.__dict__["_bias_cache"] = (key, q)
        return q

    def sim_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.quantized:
            return self.weight, self.bias
        w = dequantize(
            self.weight_levels(), self.weight_scale, self.weight_zero_point, self.weight_spec
        )
        b_levels = self.bias_levels()
        b = self.bias if self.weight_only else None
        if b_levels is not None:
            b = (b_levels.double() * (self.input_scale * self.weight_scale).double()).float()
        return w, b

    def integer_forward(
        self, x: torch.Tensor, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """What ONNX Runtime's integer kernels compute (QLinearConv, QGemm).

        The int32 accumulator ``sum((x_q - z_x) * w_q) + b_q`` is computed exactly
        (float64 holds these integers exactly), then requantized as the runtime does:
        ``float32(acc) * float32(s_x * s_w / s_y)``, round half to even, add ``z_y``,
        clamp. A fused ReLU/ReLU6 is the clamp itself (the output range starts at 0 and
        ends at or below 6). Without an output quantizer the result is
        ``float32(acc) * float32(s_x * s_w)`` (QGemm with float output).
        """
        # centred input levels x_q - z_x: round(x / s_x) is exact for a dequantized input
        a = torch.round(x.to(torch.float32) / self.input_scale)
        acc = self._accumulate(a, self.weight_levels(), op)
        b = self.bias_levels()
        # output channels: dim 1 for conv (NCHW), the last dim for linear (any rank)
        view = [1] * acc.ndim
        view[self._channel_dim] = -1
        if b is None:
            acc32 = acc.to(torch.float32)
        elif acc.dtype == torch.float32 and int(b.abs().max()) < 2**24:
            # both terms are exact float32 integers; IEEE addition rounds their sum
            # once, exactly as the kernel's int32 -> float32 conversion does
            acc32 = acc + b.to(torch.float32).reshape(view)
        else:
            acc32 = (acc.double() + b.double().reshape(view)).to(torch.float32)
        sw = self.weight_scale.reshape(view)
        if self.output_spec is None:
            return self._activate(acc32 * (self.input_scale * sw))
        multiplier = (self.input_scale * sw) / self.output_scale
        zy = self.output_zero_point
        q = requantize_accumulator(
            acc32, multiplier, zy, self.output_spec.qmin, self.output_spec.qmax
        )
        return (q - zy.to(torch.float32)) * self.output_scale

    def _accumulate(
        self,
        a: torch.Tensor,
        w: torch.Tensor,
        op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Exact integer ``op(a, w)``: float32 when one float32 pass is exact, else
        float64.

        A float32 sum of integer products is exact, in any order, while the sum of their
        magnitudes stays below 2**24: then every partial sum is an integer float32
        holds. The reduction is split into chunks of input channels that keep under
        that bound (float32 convolutions are several times faster than float64); the
        chunk results are added in float64.
        """
        assert self.input_spec is not None
        a_max = self.input_spec.qmax - self.input_spec.qmin
        w_max = max(abs(self.weight_spec.qmin), abs(self.weight_spec.qmax))
        terms = (2**24) // (a_max * w_max)
        per_out = w[0].numel()
        if per_out <= terms:
            return op(a, w.to(torch.float32))
        spatial = w[0, 0].numel()
        step = terms // spatial
        if getattr(self, "groups", 1) != 1 or step < 1:
            return op(a.double(), w.double())
        acc = None
        for c in range(0, w.shape[1], step):
            chunk = a.narrow(self._channel_dim, c, min(step, w.shape[1] - c))
            part = op(chunk, w[:, c : c + step].to(torch.float32)).double()
            acc = part if acc is None else acc + part
        assert acc is not None
        return acc

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return F.relu(y)
        if self.activation == "relu6":
            return F.hardtanh(y, 0.0, 6.0)
        return y


@contextlib.contextmanager
def fake_quantized(model: nn.Module) -> Iterator[None]:
    """Inside the block, conv and linear layers compute in float on their quantization
    grids (fake quantization) instead of the exact integer simulation: half the time,
    within float rounding of it. For calibration passes that measure, not deploy."""
    layers = [m for m in model.modules() if isinstance(m, _WeightQuantMixin)]
    exact = [m.integer_exact for m in layers]
    try:
        for m in layers:
            m.integer_exact = False
        yield
    finally:
        for m, e in zip(layers, exact, strict=True):
            m.integer_exact = e


@register_quant_module(nn.Conv2d)
class QuantConv2d(_WeightQuantMixin):
    _channel_dim = 1

    input_channel_pad: torch.Tensor

    def __init__(
        self,
        conv: nn.Conv2d,
        weight_spec: QuantSpec,
        *,
        activation: str | None = None,
        limit_pairs: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise NotImplementedError(
                f"{name}: padding_mode={conv.padding_mode!r} is not supported"
            )
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        self._init_quant(conv, weight_spec, activation, limit_pairs, name)
        # zero input channels (before, after) the export adds, so that a conv on the
        # model's 3-channel input runs on ONNX Runtime's symmetric kernels (set by
        # `graph.insert.prepare`, rule 5). The kernel pairs products in that layout,
        # so the pair limit follows it; the split is chosen with the weight's scales.
        self.register_buffer("input_channel_pad", torch.zeros(2, dtype=torch.int64))

    def pad_in(self) -> tuple[int, int]:
        before, after = self.input_channel_pad.tolist()
        return int(before), int(after)

    def _pad_choices(self) -> list[tuple[int, int]]:
        total = sum(self.pad_in())
        return [(k, total - k) for k in range(total + 1)] if total else [NO_PAD]

    def _use_pad(self, pad: tuple[int, int]) -> None:
        self.input_channel_pad.copy_(torch.tensor(pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized and self.integer_exact and not self.weight_only:
            return self.integer_forward(
                x,
                lambda a, w: F.conv2d(
                    a, w, None, self.stride, self.padding, self.dilation, self.groups
                ),
            )
        w, b = self.sim_weight_bias()
        y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return self._activate(y)


@register_quant_module(nn.Linear)
class QuantLinear(_WeightQuantMixin):
    _channel_dim = -1

    def __init__(
        self,
        linear: nn.Linear,
        weight_spec: QuantSpec,
        *,
        activation: str | None = None,
        limit_pairs: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        self._init_quant(linear, weight_spec, activation, limit_pairs, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized and self.dynamic:
            return self.dynamic_forward(x)
        if self.quantized and self.integer_exact and not self.weight_only:
            return self.integer_forward(x, lambda a, w: F.linear(a, w))
        w, b = self.sim_weight_bias()
        return self._activate(F.linear(x, w, b))

    def dynamic_forward(self, x: torch.Tensor) -> torch.Tensor:
        """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add, as exported:
        exact int32 accumulation, then ``f32(acc) * f32(s_x * s_w) + b``."""
        xq, sx, zx = dynamic_quantize_uint8(x)
        w = self.weight_levels().to(torch.float32)
        a = xq - zx
        if w.shape[1] * 255 * 128 < 2**24:
            acc = F.linear(a, w)
        else:  # exact in float64 (any order) for long reductions
            acc = F.linear(a.double(), w.double()).to(torch.float32)
        y = acc * (sx * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return self._activate(y)


def _levels(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Integer levels of a tensor that a frozen quantizer produced (exact)."""
    return torch.round(x.to(torch.float32) / scale) + zero_point.to(torch.float32)


class IntegerOp(nn.Module):
    """An op between quantizers: after `freeze_io` it holds copies of the (scale, zero
    point) of the quantizers that feed it and of the one that follows it, as buffers
    (so they are in the state dict), and computes what the integer kernel computes."""

    in_scale: torch.Tensor
    in_zero_point: torch.Tensor
    out_scale: torch.Tensor
    out_zero_point: torch.Tensor

    def __init__(self, name: str, num_inputs: int) -> None:
        super().__init__()
        self.op_name = name
        self.register_buffer("in_scale", torch.ones(num_inputs))
        self.register_buffer("in_zero_point", torch.zeros(num_inputs, dtype=torch.int32))
        self.register_buffer("out_scale", torch.ones(()))
        self.register_buffer("out_zero_point", torch.zeros((), dtype=torch.int32))
        self.out_spec: QuantSpec | None = None
        self.integer = False  # True once frozen with every input and the output quantized

    def freeze_io(
        self, inputs: list[ActivationQuantizer | None], output: ActivationQuantizer | None
    ) -> None:
        self.integer = output is not None and all(q is not None for q in inputs)
        if not self.integer:
            return
        for i, q in enumerate(inputs):
            assert q is not None
            self.in_scale[i] = q.scale
            self.in_zero_point[i] = q.zero_point
        assert output is not None
        self.out_scale.copy_(output.scale)
        self.out_zero_point.copy_(output.zero_point)
        self.out_spec = output.spec

    def _in(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.in_scale[i], self.in_zero_point[i]

    def _dequantize_output(self, levels: torch.Tensor) -> torch.Tensor:
        return (levels - self.out_zero_point.to(torch.float32)) * self.out_scale

    def extra_repr(self) -> str:
        return f"name={self.op_name}, integer={self.integer}"


class QuantAdd(IntegerOp):
    """Residual add. Integer: what ONNX Runtime's QLinearAdd computes
    (`edgeq.quant.kernels.qlinear_add`); otherwise a float add, as DQ -> Add does."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name, 2)
        # "relu": a fused ReLU (the output quantizer's zero point is 0, so the kernel's
        # clamp at the quantized minimum is the ReLU)
        self.activation: str | None = None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self.integer or self.out_spec is None:
            return F.relu(a + b) if self.activation == "relu" else a + b
        levels = qlinear_add(
            _levels(a, *self._in(0)),
            _levels(b, *self._in(1)),
            self._in(0),
            self._in(1),
            (self.out_scale, self.out_zero_point),
            self.out_spec.qmin,
            self.out_spec.qmax,
        )
        return self._dequantize_output(levels)


class QuantGlobalAvgPool(IntegerOp):
    """Global average pooling to 1x1. Integer: ONNX Runtime's QLinearGlobalAveragePool
    (exact int32 sum, one float32 rescale); otherwise a float mean."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer or self.out_spec is None:
            return x.mean(dim=(-2, -1), keepdim=True)
        levels = qlinear_global_average_pool(
            _levels(x, *self._in(0)),
            self._in(0),
            (self.out_scale, self.out_zero_point),
            self.out_spec.qmin,
            self.out_spec.qmax,
        )
        return self._dequantize_output(levels)
