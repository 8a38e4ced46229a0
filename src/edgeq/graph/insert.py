"""Swap in quantized modules and place activation quantizers where ONNX Runtime fuses.

Rules (ONNX Runtime's QDQ selectors turn DQ -> op -> Q into integer kernels):

1. Conv/Linear (+ a following ReLU/ReLU6, fused) become QuantConv2d/QuantLinear.
   Their input must come from a quantizer: one is inserted where it does not.
2. Ops that compute new values in the integer domain get an output quantizer:
   conv/linear (QLinearConv, QGemm), add (QLinearAdd), concat (QLinearConcat),
   global average pooling (QLinearGlobalAveragePool). The model's final output
   stays float (QGemm writes float logits directly).
3. Ops that only move or select values (flatten, reshape, dropout in eval, max pool)
   pass their input's quantization through: the exporter repeats the input's Q/DQ
   after them, which ONNX Runtime removes again.
4. Anything else is kept in float: listed in `PlacementReport.float_ops`.
5. A group-1 conv on the model's input whose channels are not a multiple of 4 (RGB
   images: 3) is exported with zero channels appended to its input and its weight
   (`edgeq.quant.saturation.input_channel_pad`): ONNX Runtime's symmetric conv
   kernels need that multiple, and without them the first conv of MobileNetV2 runs
   no faster in int8 than in float. The padding is exact (the zero channels quantize
   to the zero point, their weights are 0); the exporter pads the uint8 levels with
   the zero point between the input's QuantizeLinear and DequantizeLinear. Where the
   pair limit applies, the zeros go before or after the real channels, whichever
   leaves the smaller weight error (`QuantConv2d.freeze_weight`).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgeq.graph.qmodules import (
    QUANT_MODULES,
    ActivationQuantizer,
    IntegerOp,
    QuantAdd,
    QuantConv2d,
    QuantGlobalAvgPool,
    QuantLinear,
)
from edgeq.quant import QuantSpec
from edgeq.quant.saturation import input_channel_pad

ADD_TARGETS = {operator.add, torch.add, operator.iadd}
CAT_TARGETS = {torch.cat, torch.concat}
FLATTEN_TARGETS = {torch.flatten}
PASSTHROUGH_MODULES = (nn.Dropout, nn.Flatten, nn.Identity, nn.MaxPool2d)
RELU_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_aten = torch.ops.aten
# ops that only move, select or measure values: they stay between the quantizers like
# float ops, but compute nothing, so they are not listed among the ops kept in float
DATA_MOVEMENT = {
    torch.reshape,
    torch.permute,
    torch.transpose,
    operator.getitem,
    _aten.sym_size.int,
    _aten.transpose.int,
    _aten.swapaxes.default,
    _aten.chunk.default,
    _aten.unbind.int,
    _aten.select.int,
    _aten.squeeze.dim,
    _aten.squeeze.dims,
    _aten.unsqueeze.default,
    _aten.unflatten.int,
    _aten.expand.default,
    _aten.slice.Tensor,
    _aten.roll.default,
}
DATA_MOVEMENT_METHODS = {"reshape", "view", "permute", "transpose", "contiguous", "size"}


@dataclass
class PlacementReport:
    quantized_layers: list[str] = field(default_factory=list)
    activation_quantizers: list[str] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=list)
    padded_inputs: list[str] = field(default_factory=list)  # rule 5: "name: 3 -> 4 channels"
    # ops kept in float for want of an integer kernel, counted by module type or function
    float_op_kinds: dict[str, int] = field(default_factory=dict)

    def float_summary(self) -> str:
        """The ops kept in float for want of an integer kernel, short enough for one
        warning: all of them when few, else counts by kind and the first three."""
        ops = [f for f in self.float_ops if "by the config" not in f]
        if len(ops) <= 5:
            return "; ".join(ops)
        kinds = sorted(self.float_op_kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        return (
            ", ".join(f"{n} {k}" for k, n in kinds)
            + f" (first: {'; '.join(ops[:3])}; all in QuantizedModel.placement.float_ops)"
        )


def _relu_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module":
        return RELU_MODULES.get(type(modules[node.target]))
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return "relu"
    if node.op == "call_function" and node.target is F.relu6:
        return "relu6"
    return None


def _is_identity_in_eval(node: fx.Node, modules: dict[str, nn.Module] | None = None) -> bool:
    """torchvision.ops.stochastic_depth traced in eval mode (training=False), or a
    StochasticDepth module in eval mode: identity."""
    if node.op == "call_module" and modules is not None:
        m = modules.get(str(node.target))
        return type(m).__name__ == "StochasticDepth" and not m.training
    target = node.target
    if getattr(target, "__name__", "") != "stochastic_depth":
        return False
    training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
    return training is False


def node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Classify a node: 'layer', 'quantizer', 'add', 'cat', 'gap', 'pass', 'relu',
    'input', 'output', 'attr' or 'float'."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return "attr"
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, ActivationQuantizer):
            return "quantizer"
        if isinstance(m, QuantAdd):
            return "add"
        if isinstance(m, QuantGlobalAvgPool):
            return "gap"
        if type(m) in QUANT_MODULES.values() or (
            type(m) in QUANT_MODULES and not getattr(QUANT_MODULES[type(m)], "dynamic_only", False)
        ):
            return "layer"  # an LSTM left in float returns a tuple: a float op, not a layer
        if isinstance(m, PASSTHROUGH_MODULES):
            return "pass"
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return "gap"
        if _is_identity_in_eval(node, modules):
            return "pass"
    if node.op == "call_function":
        if node.target in ADD_TARGETS:
            return "add"
        if node.target in CAT_TARGETS:
            return "cat"
        if node.target in FLATTEN_TARGETS or node.target in (F.dropout, F.max_pool2d):
            return "pass"
        if _is_identity_in_eval(node):
            return "pass"
        if node.target is F.adaptive_avg_pool2d and node.args[1] in (1, (1, 1)):
            return "gap"
    if node.op == "call_method" and node.target in ("flatten", "view", "reshape"):
        return "pass"
    if _relu_kind(node, modules):
        return "relu"
    return "float"


def _moves_data(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in DATA_MOVEMENT_METHODS
    return node.op == "call_function" and node.target in DATA_MOVEMENT


def feeding_quantizer(
    node: fx.Node | object, modules: dict[str, nn.Module]
) -> ActivationQuantizer | None:
    """The quantizer whose output reaches ``node`` unchanged (through pass-through
    ops such as flatten or dropout), or None."""
    while isinstance(node, fx.Node):
        kind = node_kind(node, modules)
        if kind == "quantizer":
            m = modules[node.target]
            assert isinstance(m, ActivationQuantizer)
            return m
        if kind != "pass":
            return None
        node = node.args[0]
    return None


def output_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> ActivationQuantizer | None:
    """The quantizer that is the only consumer of ``node``'s output, or None."""
    users = [modules.get(u.target) for u in node.users if u.op == "call_module"]
    if len(node.users) == 1 and len(users) == 1 and isinstance(users[0], ActivationQuantizer):
        return users[0]
    return None


def bind_quantizers(gm: fx.GraphModule) -> None:
    """Give every quantized layer and integer op references to the quantizers on its
    inputs and output, as placed in ``gm``'s graph (one shared scale per tensor).

    Raises:
        RuntimeError: a layer of a statically quantized graph has no input quantizer.
    """
    modules = dict(gm.named_modules())
    static = any(isinstance(m, ActivationQuantizer) for m in modules.values())
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if isinstance(m, QuantConv2d | QuantLinear):
            src = feeding_quantizer(node.args[0], modules)
            if src is None and static:
                raise RuntimeError(f"{node.target}: no activation quantizer feeds this layer")
            m.bind(src, output_quantizer(node, modules))
        elif isinstance(m, IntegerOp):
            m.bind(
                [feeding_quantizer(a, modules) for a in node.args], output_quantizer(node, modules)
            )


def _is_quantized(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return feeding_quantizer(node, modules) is not None


def _to_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple) -> fx.Node:
    """Replace ``node`` by a call of ``module`` (registered under the node's name)."""
    name = f"{node.name}_q"
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def prepare(
    gm: fx.GraphModule,
    weight_spec: QuantSpec,
    activation_spec: QuantSpec | None,
    *,
    limit_pairs: bool,
    layer_bits: Callable[[str, nn.Module], int | None] | None = None,
) -> tuple[fx.GraphModule, PlacementReport]:
    """Rewrite ``gm`` in place for calibration (BatchNorm must be folded first).

    ``activation_spec=None``: weight-only; layers are swapped, nothing else changes.
    ``layer_bits(name, module)`` gives a layer's weight bits, or None to leave it in
    float (per-layer overrides, depthwise minimum).
    """
    report = PlacementReport()
    modules = dict(gm.named_modules())
    graph = gm.graph
    counter = 0

    def add_quantizer(after: fx.Node, *, nonnegative: bool) -> fx.Node:
        nonlocal counter
        name = f"act_quant_{counter}"
        counter += 1
        label = f"{name} (after {after.name})"
        gm.add_submodule(
            name, ActivationQuantizer(activation_spec, name=label, nonnegative=nonnegative)
        )
        with graph.inserting_after(after):
            q = graph.call_module(name, (after,))
        after.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        report.activation_quantizers.append(label)
        return q

    # 1. swap layers, fusing a single following ReLU/ReLU6
    for node in list(graph.nodes):
        if node.op != "call_module" or type(modules[node.target]) not in QUANT_MODULES:
            continue
        bits = weight_spec.bits
        if layer_bits is not None:
            chosen = layer_bits(str(node.target), modules[node.target])
            if chosen is None:
                report.float_ops.append(f"{node.target} (kept in float by the config)")
                continue
            bits = chosen
        activation = None
        users = list(node.users)
        if len(users) == 1 and _relu_kind(users[0], modules):
            activation = _relu_kind(users[0], modules)
            users[0].replace_all_uses_with(node)
            graph.erase_node(users[0])
        spec = (
            weight_spec if bits == weight_spec.bits else dataclasses.replace(weight_spec, bits=bits)
        )
        float_mod = modules[node.target]
        qcls = QUANT_MODULES[type(float_mod)]
        qmod = qcls(
            float_mod, spec, activation=activation, limit_pairs=limit_pairs, name=node.target
        )
        gm.set_submodule(node.target, qmod) if hasattr(gm, "set_submodule") else setattr(
            gm, node.target, qmod
        )
        report.quantized_layers.append(str(node.target))
    modules = dict(gm.named_modules())
    if activation_spec is None:
        graph.lint()
        gm.recompile()
        return gm, report

    # 1b. residual adds of two tensors and global average pooling become integer ops
    for node in list(graph.nodes):
        kind = node_kind(node, modules)
        if kind == "add" and node.op == "call_function" and not node.kwargs:
            if len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args):
                add = _to_module(gm, node, QuantAdd(node.name), tuple(node.args))
                users = list(add.users)
                # add -> ReLU (ResNet): QLinearAdd's clamp at zero point 0 is the ReLU
                if len(users) == 1 and _relu_kind(users[0], modules) == "relu":
                    gm.get_submodule(str(add.target)).activation = "relu"
                    users[0].replace_all_uses_with(add)
                    graph.erase_node(users[0])
        elif kind == "gap" and not isinstance(modules.get(node.target), QuantGlobalAvgPool):
            _to_module(gm, node, QuantGlobalAvgPool(node.name), (node.args[0],))
    modules = dict(gm.named_modules())

    # 2. output quantizers
    for node in list(graph.nodes):
        kind = node_kind(node, modules)
        if kind not in ("layer", "add", "cat", "gap"):
            if kind == "float" and not _moves_data(node):
                target = getattr(node.target, "__name__", node.target)
                report.float_ops.append(f"{node.name} ({node.op} {target})")
                what = type(modules[node.target]).__name__ if node.op == "call_module" else target
                report.float_op_kinds[str(what)] = report.float_op_kinds.get(str(what), 0) + 1
            continue
        if all(u.op == "output" for u in node.users):
            continue  # final output stays float
        nonneg = (
            kind in ("layer", "add")
            and node.op == "call_module"
            and getattr(modules[node.target], "activation", None) is not None
        )
        add_quantizer(node, nonnegative=bool(nonneg))
    modules = dict(gm.named_modules())

    # 3. every input of a layer, integer add or pooling comes from a quantizer
    for node in list(graph.nodes):
        kind = node_kind(node, modules)
        if kind not in ("layer", "add", "gap") or node.op != "call_module":
            continue
        sources = node.args[:2] if kind == "add" else node.args[:1]
        for src in sources:
            if isinstance(src, fx.Node) and not _is_quantized(src, modules):
                nonneg = src.op != "placeholder" and _relu_kind(src, modules) is not None
                add_quantizer(src, nonnegative=nonneg)
                modules = dict(gm.named_modules())

    # 5. convs on the model's input padded onto the symmetric kernels
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        for q in node.users:
            if node_kind(q, modules) == "quantizer":
                _pad_input_convs(q, modules, report)
    graph.lint()
    gm.recompile()
    bind_quantizers(gm)
    return gm, report


def _pad_input_convs(
    quantizer: fx.Node, modules: dict[str, nn.Module], report: PlacementReport
) -> None:
    """Rule 5, for the convs one input quantizer feeds: only when it feeds nothing else
    (its Q/DQ gets the padded shape)."""
    users = list(quantizer.users)
    convs = [modules.get(str(u.target)) if u.op == "call_module" else None for u in users]
    if not convs or not all(isinstance(c, QuantConv2d) for c in convs):
        return
    pads = {input_channel_pad(c.weight.shape[1], c.groups) for c in convs}
    if len(pads) != 1 or not (pad := pads.pop()):
        return
    for user, conv in zip(users, convs, strict=True):
        conv.input_channel_pad.copy_(torch.tensor([0, pad]))  # split chosen at calibration
        channels = conv.weight.shape[1]
        report.padded_inputs.append(f"{user.target}: {channels} -> {channels + pad} channels")
