"""Quantized modules: plain nn.Modules, trainable and integer-exact in turn.

- `ActivationQuantizer` observes during calibration, then quantizes with its (scale,
  zero point): the scale an ``nn.Parameter`` (learned by LSQ during training), the
  zero point an int32 buffer.
- `QuantConv2d` / `QuantLinear` hold float weights and biases, their weight scales
  (``nn.Parameter``) and *references* to the quantizers on their input and output
  (`bind`): no copies, so a scale learned or re-chosen in the quantizer is the one
  every consumer uses. The bias is rounded to int32 with scale ``s_in * s_w`` as the
  runtime stores it. An optional fused ReLU/ReLU6 is applied before the output
  quantizer (in the exported graph the quantizer's clamp makes it redundant).
- `QuantAdd`, `QuantGlobalAvgPool`: integer ops between quantizers.

Every module is in one of two explicit states (`QState`), switched for a whole model
by `edgeq.graph.states.convert` / `to_training`, never by inspecting
``requires_grad``:

- ``TRAIN``: fake quantization in float arithmetic; gradients reach weights, biases,
  scales and inputs (straight-through rounding and clipping, LSQ's scale gradient).
- ``CONVERTED``: what ONNX Runtime's integer kernels compute, bit for bit (export,
  evaluation, the bit-exact tests). Calibration ends here.

New layer types register with `register_quant_module` (one registry keyed by type).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from enum import StrEnum

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
    lsq_fake_quantize,
    lsq_grad_scale,
    quantize,
    round_ste,
)
from edgeq.quant.kernels import (
    dynamic_quantize_uint8,
    qlinear_add,
    qlinear_global_average_pool,
    requantize_accumulator,
)
from edgeq.quant.saturation import NO_PAD, PAIR_LIMIT, limit_pairs, pair_safe_scale

QUANT_MODULES: dict[type[nn.Module], type[nn.Module]] = {}
# the smallest scale a learned step size may take (a step of 0 divides by zero)
_MIN_SCALE = torch.finfo(torch.float32).tiny


def processes_in_step() -> int:
    """How many processes share one training step: the default process group's size
    under torchrun + DDP, else 1."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class QState(StrEnum):
    """What a quantized module computes."""

    TRAIN = "train"  # fake quantization with straight-through / LSQ gradients
    CONVERTED = "converted"  # the integer-exact simulation of the deployed model


def set_ref(module: nn.Module, name: str, target: nn.Module | None) -> None:
    """Point ``module.name`` at ``target`` without registering it as a submodule (it is
    registered once, where the graph calls it; a second registration would duplicate
    its state). Deep copies keep the sharing: copy.deepcopy copies it once."""
    object.__setattr__(module, name, target)


def register_quant_module(float_type: type[nn.Module]) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        QUANT_MODULES[float_type] = cls
        return cls

    return deco


class ActivationQuantizer(nn.Module):
    """Observe (calibration), then quantize one activation tensor.

    After `freeze`: in ``QState.CONVERTED`` QuantizeLinear -> DequantizeLinear exactly;
    in ``QState.TRAIN`` the same values with LSQ gradients (to the input, and to the
    scale when it requires grad)."""

    scale: nn.Parameter
    zero_point: torch.Tensor

    def __init__(self, spec: QuantSpec, *, name: str, nonnegative: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.name = name
        # Follows a ReLU/ReLU6: its range starts at 0, so uint8's zero point is 0 and
        # the runtime's clamp at the quantized minimum *is* the ReLU.
        self.nonnegative = nonnegative
        self.observer = RangeObserver(spec, name=name)
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        # the zero point as LSQ+ learns it (a float, rounded in the forward); equal to
        # ``zero_point`` until training moves it, written back by `edgeq.convert`.
        # Training state only: artifacts store ``zero_point``
        self.zero_point_float = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.observing = True
        self.enabled = True
        self.state = QState.CONVERTED

    @torch.no_grad()
    def freeze(self, percentile: float | None = None) -> None:
        """Fix (scale, zero point) from what the observer saw (``percentile``: another
        clipping percentile of the same histogram, for a range search)."""
        lo, hi = self.observer.compute_range(percentile)
        if self.nonnegative:
            lo = torch.zeros_like(lo)
        scale, zp = choose_qparams(lo.reshape(()), hi.reshape(()), self.spec)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self.zero_point_float.copy_(zp.float())
        self.observing = False

    @property
    def learns_zero_point(self) -> bool:
        """Asymmetric and not pinned at 0 by a ReLU before it: LSQ+ can move it."""
        return not self.spec.symmetric and not self.nonnegative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            return self.observer(x)
        if not self.enabled:  # analysis (sensitivity): this tensor stays float
            return x
        if self.state is QState.TRAIN:
            scale = torch.clamp(self.scale, min=_MIN_SCALE)
            zp = self.zero_point
            if self.zero_point_float.requires_grad:
                zp = torch.clamp(self.zero_point_float, self.spec.qmin, self.spec.qmax)
            # LSQ's gradient scale counts the elements this scale quantizes in the whole
            # step: under DDP each process sees 1/world of the batch, and counting only
            # its own share made the scale gradients sqrt(world) times too large (the
            # 2-process test saw 1.41x at step 0)
            grad_scale = lsq_grad_scale(x.numel() * processes_in_step(), self.spec.qmax)
            return lsq_fake_quantize(x, scale, zp, self.spec, grad_scale=grad_scale)
        # converted: QuantizeLinear -> DequantizeLinear, bit-exact, in four passes
        # (NaN stays NaN; calibration already rejected non-finite activations)
        s = self.scale.detach()
        z = self.zero_point.to(torch.float32)
        q = torch.clamp(torch.round(x / s) + z, self.spec.qmin, self.spec.qmax)
        return (q - z) * s

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
    """Weight levels, weight scales and int32-rounded bias shared by conv/linear."""

    _channel_dim: int  # where the channels are in the layer's input and output

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_scale: nn.Parameter
    weight_zero_point: torch.Tensor
    input_quant: ActivationQuantizer | None
    output_quant: ActivationQuantizer | None

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
        # learned by LSQ in training; per-group scales get their shape in freeze_weight
        self.weight_scale = nn.Parameter(torch.ones(out_channels), requires_grad=False)
        self.register_buffer("weight_zero_point", torch.zeros(out_channels, dtype=torch.int32))
        # the quantizers feeding this layer and the one after it (`bind`): references
        set_ref(self, "input_quant", None)
        set_ref(self, "output_quant", None)
        self.quantized = False
        # dynamic quantization: the input is quantized per call, from its own range
        self.dynamic = False
        self.state = QState.CONVERTED
        # converted state only. True: compute what the integer kernels compute; False:
        # float arithmetic on the same grids (calibration passes that measure: half the
        # time, within float rounding of the integer result)
        self.integer_exact = True

    # the quantizers' parameters, read where they live (detached: values, not the graph)
    @property
    def input_spec(self) -> QuantSpec | None:
        return self.input_quant.spec if self.input_quant is not None else None

    @property
    def output_spec(self) -> QuantSpec | None:
        return self.output_quant.spec if self.output_quant is not None else None

    @property
    def input_scale(self) -> torch.Tensor:
        return self._qparam(self.input_quant, "scale")

    @property
    def input_zero_point(self) -> torch.Tensor:
        return self._qparam(self.input_quant, "zero_point")

    @property
    def output_scale(self) -> torch.Tensor:
        return self._qparam(self.output_quant, "scale")

    @property
    def output_zero_point(self) -> torch.Tensor:
        return self._qparam(self.output_quant, "zero_point")

    def _qparam(self, q: ActivationQuantizer | None, what: str) -> torch.Tensor:
        if q is None:
            raise RuntimeError(f"{self.layer_name}: no quantizer is bound there")
        return getattr(q, what).detach()

    @property
    def weight_only(self) -> bool:
        """Quantized without an input quantizer: float activations, dequantized weights."""
        return self.quantized and self.input_quant is None and not self.dynamic

    def bind(
        self, input_quant: ActivationQuantizer | None, output_quant: ActivationQuantizer | None
    ) -> None:
        """Share the quantizers on this layer's input and output (placement decides
        them; their parameters are read from them at every call)."""
        set_ref(self, "input_quant", input_quant)
        set_ref(self, "output_quant", output_quant if input_quant is not None else None)

    @torch.no_grad()
    def freeze_weight(self) -> None:
        """Choose the weight's scales (min-max; pair-safe where the target needs it)."""
        lo, hi = estimate_range(self.weight.detach(), self.weight_spec, name=self.layer_name)
        scale, zp = choose_qparams(lo, hi, self.weight_spec)
        if self.limit_pairs:
            scale = self._pair_safe_scale(scale, zp)
        # per-group scales have the weight's shape with one axis shortened
        self.weight_scale = nn.Parameter(scale.to(torch.float32).clone(), requires_grad=False)
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
                s = (self.input_scale * self.weight_scale.detach()).double()
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
            self.weight_scale.data_ptr(),
            self.weight_zero_point._version,
            *self.pad_in(),
        )

    def _bias_key(self) -> tuple[int, ...]:
        assert self.bias is not None
        assert self.input_quant is not None
        return (
            self.bias._version,
            self.bias.data_ptr(),
            self.input_quant.scale._version,
            self.input_quant.scale.data_ptr(),
            self.weight_scale._version,
            self.weight_scale.data_ptr(),
        )

    def _pairs_can_saturate(self) -> bool:
        """The target limits pairs and two of these levels can exceed the limit (8-bit
        weights; 4-bit ones sum to 16 at most)."""
        spec = self.weight_spec
        return self.limit_pairs and 2 * max(-spec.qmin, spec.qmax) > PAIR_LIMIT

    def weight_levels(self) -> torch.Tensor:
        """int32 weight levels as exported (pair-limited where the target needs it).

        Cached while the weight, its scale and zero point are unchanged (the tensors'
        version counters say so), so evaluation does not redo the pair search."""
        key = self._weight_key()
        cached = self.__dict__.get("_levels_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        w, sw = self.weight.detach(), self.weight_scale.detach()
        q = quantize(w, sw, self.weight_zero_point, self.weight_spec)
        if self._pairs_can_saturate():
            view = [-1] + [1] * (w.ndim - 1)
            q = limit_pairs(q, w / sw.reshape(view), self.pad_in())
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
        s = (self.input_scale * self.weight_scale.detach()).double()
        q = torch.round(self.bias.detach().double() / s).clamp(-(2**31), 2**31 - 1).to(torch.int32)
        self.__dict__["_bias_cache"] = (key, q)
        return q

    def sim_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The deployed weight and bias, dequantized (converted state)."""
        if not self.quantized:
            return self.weight, self.bias
        sw = self.weight_scale.detach()
        w = dequantize(self.weight_levels(), sw, self.weight_zero_point, self.weight_spec)
        b_levels = self.bias_levels()
        b = self.bias if self.weight_only else None
        if b_levels is not None:
            b = (b_levels.double() * (self.input_scale * sw).double()).float()
        return w, b

    def train_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fake-quantized weight and bias with gradients (training state): LSQ on the
        weight (to the weight and its scales); the bias rounded on its int32 grid
        ``s_in * s_w`` with a straight-through gradient (float where it stays float).
        Where the target limits weight pairs (`edgeq.quant.saturation`), the forward
        uses the limited levels, the gradient that of the unlimited ones."""
        if not self.quantized:
            return self.weight, self.bias
        sw = torch.clamp(self.weight_scale, min=_MIN_SCALE)
        w = lsq_fake_quantize(self.weight, sw, self.weight_zero_point, self.weight_spec)
        if self._pairs_can_saturate():  # train on the levels that deploy: pair-limited
            deployed = dequantize(
                self.weight_levels(), sw.detach(), self.weight_zero_point, self.weight_spec
            )
            w = w + (deployed - w).detach()
        b = self.bias
        if b is not None and self.input_quant is not None and not self.dynamic:
            view = [-1]  # bias scales are per output channel
            s = (self.input_quant.scale * sw).detach().reshape(view)
            b = round_ste(b / s) * s
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
        sw = self.weight_scale.detach().reshape(view)
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
    """Inside the block, converted conv and linear layers compute in float on their
    deployed grids instead of the exact integer simulation: half the time, within float
    rounding of it. For calibration passes that measure, not deploy (no gradients:
    training uses `QState.TRAIN`)."""
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
        if self.state is QState.TRAIN:
            w, b = self.train_weight_bias()
            y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
            return self._activate(y)
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
        if self.state is QState.TRAIN:
            if self.quantized and self.dynamic:  # the input quantized from its own range
                xq, sx, zx = dynamic_quantize_uint8(x.detach())
                x = x + ((xq - zx) * sx - x).detach()
            w, b = self.train_weight_bias()
            return self._activate(F.linear(x, w, b))
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
        y = acc * (sx * self.weight_scale.detach())
        if self.bias is not None:
            y = y + self.bias
        return self._activate(y)


def _levels(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Integer levels of a tensor that a frozen quantizer produced (exact)."""
    return torch.round(x.to(torch.float32) / scale) + zero_point.to(torch.float32)


class IntegerOp(nn.Module):
    """An op between quantizers. `bind` gives it references to the quantizers that
    feed it and to the one that follows; once all of them exist it is ``integer``:
    converted, it computes what the integer kernel computes; training, or when not
    integer, it computes in float (the quantizers around it fake-quantize)."""

    def __init__(self, name: str, num_inputs: int) -> None:
        super().__init__()
        self.op_name = name
        self.num_inputs = num_inputs
        set_ref(self, "_inputs", [None] * num_inputs)
        set_ref(self, "output_quant", None)
        self.integer = False  # every input and the output quantized
        self.state = QState.CONVERTED

    def bind(
        self, inputs: list[ActivationQuantizer | None], output: ActivationQuantizer | None
    ) -> None:
        self.integer = output is not None and all(q is not None for q in inputs)
        set_ref(self, "_inputs", list(inputs) if self.integer else [None] * self.num_inputs)
        set_ref(self, "output_quant", output if self.integer else None)

    @property
    def input_quants(self) -> list[ActivationQuantizer | None]:
        return list(self.__dict__["_inputs"])

    @property
    def out_spec(self) -> QuantSpec | None:
        q = self.__dict__["output_quant"]
        return q.spec if q is not None else None

    @property
    def out_scale(self) -> torch.Tensor:
        return self.__dict__["output_quant"].scale.detach()

    @property
    def out_zero_point(self) -> torch.Tensor:
        return self.__dict__["output_quant"].zero_point

    def _runs_integer(self) -> bool:
        """Converted, every quantizer around it in place and calibrated."""
        if not (self.integer and self.state is QState.CONVERTED and self.out_spec is not None):
            return False
        quants = [*self.__dict__["_inputs"], self.__dict__["output_quant"]]
        return not any(q.observing for q in quants)

    def _in(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.__dict__["_inputs"][i]
        return q.scale.detach(), q.zero_point

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
        if not self._runs_integer():
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
        if not self._runs_integer():
            return x.mean(dim=(-2, -1), keepdim=True)
        levels = qlinear_global_average_pool(
            _levels(x, *self._in(0)),
            self._in(0),
            (self.out_scale, self.out_zero_point),
            self.out_spec.qmin,
            self.out_spec.qmax,
        )
        return self._dequantize_output(levels)
