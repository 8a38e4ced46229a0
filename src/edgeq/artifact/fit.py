"""Checks of an artifact against the model rebuilt from its source (the oracle).

`edgeq.artifact.validate` checks the JSON's form; here every size, dtype and value
is compared with what the rebuilt, rewritten model itself holds, before anything is
allocated from the file: a layer's shape must be the rebuilt layer's (so a forged
``[2**40, ...]`` is refused, never allocated), its bits and sign those the config
gives it, every tensor the dtype and shape its buffer has, packed weights exactly
the bytes their shape and bits need, scales finite and positive, zero points inside
their grid.
"""

from __future__ import annotations

import math

import torch
from torch import fx

from edgeq.artifact.validate import At, LayerInfo, Meta, show
from edgeq.graph.qmodules import ActivationQuantizer, QuantConv2d, QuantLinear
from edgeq.ptq.config import Mode, PTQConfig
from edgeq.quant.layout import param_shape
from edgeq.quant.spec import SpecError

Layer = QuantConv2d | QuantLinear
Expected = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def packed_bytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def check_layers(meta: Meta, layers: dict[str, Layer]) -> None:
    """Each ``layers`` entry against the rebuilt layer of that name."""
    at = At(str(meta.path)).child("layers")
    for name, info in meta.layers.items():
        if name not in layers:
            known = ", ".join(repr(n) for n in list(layers)[:8]) or "none"
            at.item(name).fail(f"no such layer in the rebuilt model (it has {known})")
        _check_layer(info, layers[name], at.item(name))


def _check_layer(info: LayerInfo, m: Layer, at: At) -> None:
    spec, shape = m.weight_spec, tuple(m.weight.shape)
    if info.bits != spec.bits:
        at.child("bits").bad(info.bits, f"{spec.bits} (the config's bits for this layer)")
    if info.signed != spec.signed:
        at.child("signed").bad(info.signed, f"{spec.signed} (the config's weight sign)")
    if info.shape != shape:
        at.child("shape").bad(list(info.shape), f"{list(shape)} (the rebuilt layer's weight)")
    try:
        scale_shape = param_shape(spec, shape)
    except (SpecError, TypeError, IndexError) as e:  # QuantSpec leaves axis unchecked
        at.fail(f"the config's weight spec does not fit this layer ({e})")
    if info.weight_scale_shape != scale_shape:
        at.child("weight_scale_shape").bad(
            list(info.weight_scale_shape),
            f"{list(scale_shape)} (one scale per {spec.granularity.value} row)",
        )
    if info.bias is None and m.bias is not None:
        at.child("bias").bad(None, "'int32' or 'float' (the rebuilt layer has a bias)")


def prepare_layers(meta: Meta, layers: dict[str, Layer]) -> None:
    """Give each stored layer the buffers its tensors load into (checked shapes)."""
    for name, info in meta.layers.items():
        m = layers[name]
        m.weight_scale = torch.nn.Parameter(
            torch.empty(info.weight_scale_shape), requires_grad=False
        )
        m.weight_zero_point = torch.zeros(info.weight_scale_shape, dtype=torch.int32)
        if info.bias is not None and m.bias is None:  # added by bias correction
            m.bias = torch.nn.Parameter(torch.zeros(info.shape[0]))


def stored_key(key: str) -> bool:
    """A state-dict entry the artifact stores: not an observer's statistics, not the
    training state's float zero point (the integer one is stored; `load` copies it)."""
    return ".observer." not in f".{key}" and not key.endswith("zero_point_float")


def expected_tensors(gm: fx.GraphModule, meta: Meta, layers: dict[str, Layer]) -> Expected:
    """Name -> (dtype, shape) of every tensor the file must hold, as `save` writes."""
    float16 = meta.config.mode is Mode.FLOAT16
    skip: set[str] = set()
    out: Expected = {}
    for name, info in meta.layers.items():
        m = layers[name]
        skip.add(f"{name}.weight")
        out[f"{name}.weight_q"] = (torch.uint8, (packed_bytes(m.weight.numel(), info.bits),))
        if m.weight_spec.symmetric:
            skip.add(f"{name}.weight_zero_point")
        if info.bias == "int32":
            skip.add(f"{name}.bias")
            out[f"{name}.bias_q"] = (torch.int32, (m.weight.shape[0],))
    for key, value in gm.state_dict().items():
        if key in skip or not stored_key(key):
            continue
        dtype = torch.float16 if float16 and value.is_floating_point() else value.dtype
        out[key] = (dtype, tuple(value.shape))
    return out


def check_tensors(tensors: dict[str, torch.Tensor], expected: Expected, at: At) -> None:
    """The file holds exactly the expected tensors, each of its dtype and shape."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        at.fail(
            f"does not fit the rebuilt model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for key, (dtype, shape) in expected.items():
        t = tensors[key]
        if t.dtype != dtype or tuple(t.shape) != shape:
            what = f"{t.dtype} {list(t.shape)}"
            at.item(key).fail(f"{what}: expected {dtype} {list(shape)} (the rebuilt model's)")


def check_qparams(
    tensors: dict[str, torch.Tensor], gm: fx.GraphModule, config: PTQConfig, at: At
) -> None:
    """Scales finite and positive, zero points on their grid, conv input padding as
    the rebuilt model places it."""
    scales, ranges = _qparam_keys(gm, config)
    for key in scales:
        t = tensors.get(key)
        if t is not None and not bool((torch.isfinite(t) & (t > 0)).all()):
            bad = t[~(torch.isfinite(t) & (t > 0))].flatten()[0].item()
            at.item(key).fail(f"holds {show(bad)}: scales must be finite and positive")
    for key, (lo, hi) in ranges.items():
        t = tensors.get(key)
        if t is not None and t.numel() and not lo <= int(t.min()) <= int(t.max()) <= hi:
            found = f"[{int(t.min())}, {int(t.max())}]"
            at.item(key).fail(f"holds values in {found}: zero points must lie in [{lo}, {hi}]")
    for name, m in gm.named_modules():
        t = tensors.get(f"{name}.input_channel_pad")
        if isinstance(m, QuantConv2d) and t is not None:
            total = sum(m.pad_in())
            if min(t.tolist()) < 0 or sum(t.tolist()) != total:  # Python ints: no wrap
                at.item(f"{name}.input_channel_pad").fail(
                    f"holds {t.tolist()}: expected two counts >= 0 adding up to {total}"
                )


def _qparam_keys(
    gm: fx.GraphModule, config: PTQConfig
) -> tuple[list[str], dict[str, tuple[int, int]]]:
    scales: list[str] = []
    ranges: dict[str, tuple[int, int]] = {}
    for name, m in gm.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, ActivationQuantizer):
            scales.append(f"{p}scale")
            ranges[f"{p}zero_point"] = (m.spec.qmin, m.spec.qmax)
        elif isinstance(m, QuantConv2d | QuantLinear):
            # the input and output qparams are the shared quantizers' (above)
            scales.append(f"{p}weight_scale")
            ranges[f"{p}weight_zero_point"] = (m.weight_spec.qmin, m.weight_spec.qmax)
    return scales, ranges
