"""ONNX translations of ops edgeq leaves in float (no integer kernel is placed on them).

In the exported graph they sit between DequantizeLinear and the next QuantizeLinear,
so ONNX Runtime runs them in float32, as the simulation does in PyTorch. Float
arithmetic in two runtimes agrees closely but not to the bit (see docs/architecture.md).
Each translator returns the ONNX output name, or None when the node's arguments are
outside what it handles (the exporter then reports the node by name).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

Translator = Callable[[Any, fx.Node, list[str]], "str | None"]


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def _unary(op: str, **attrs: Any) -> Translator:
    def emit(em: Any, node: fx.Node, ins: list[str]) -> str:
        return em.add(op, ins[:1], node.name, **attrs)

    return emit


def _silu(em: Any, node: fx.Node, ins: list[str]) -> str:
    s = em.add("Sigmoid", ins[:1], node.name + "_sigmoid")
    return em.add("Mul", [ins[0], s], node.name)


def _mul(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    if len(ins) != 2:
        return None
    return em.add("Mul", ins, node.name)


_AVG_POOL_ARGS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)


def _avg_pool(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """nn.AvgPool2d, or F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode,
    count_include_pad, divisor_override) (Inception)."""
    m = em.modules.get(node.target)
    if isinstance(m, nn.AvgPool2d):
        a = {name: getattr(m, name) for name in _AVG_POOL_ARGS[1:]}
    else:
        a = dict(zip(_AVG_POOL_ARGS, node.args, strict=False)) | dict(node.kwargs)
    if a.get("divisor_override") is not None or a.get("kernel_size") is None:
        return None
    p = _pair(a.get("padding", 0))
    return em.add(
        "AveragePool",
        ins[:1],
        node.name,
        kernel_shape=_pair(a["kernel_size"]),
        strides=_pair(a.get("stride") or a["kernel_size"]),
        pads=p + p,
        ceil_mode=int(bool(a.get("ceil_mode", False))),
        count_include_pad=int(bool(a.get("count_include_pad", True))),
    )


def _adaptive_avg_pool(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """AdaptiveAvgPool2d to (h, w) when the input size is a multiple of it: a plain
    AveragePool with kernel = stride = input / output (AlexNet, VGG)."""
    m = em.modules.get(node.target)
    out = m.output_size if isinstance(m, nn.AdaptiveAvgPool2d) else node.args[1]
    src = node.args[0]
    meta = getattr(src, "meta", {}).get("tensor_meta")
    if meta is None:
        return None
    h, w = meta.shape[-2:]
    oh, ow = _pair(out) if out is not None else (h, w)
    oh, ow = oh or h, ow or w
    if h % oh or w % ow:
        return None
    k = [h // oh, w // ow]
    return em.add("AveragePool", ins[:1], node.name, kernel_shape=k, strides=k)


def _batch_norm(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """A BatchNorm that could not be folded (it does not follow a conv: DenseNet)."""
    m = em.modules.get(node.target)
    if not isinstance(m, nn.BatchNorm2d) or m.running_mean is None:
        return None
    c = m.num_features
    weight = m.weight.detach() if m.weight is not None else torch.ones(c)
    bias = m.bias.detach() if m.bias is not None else torch.zeros(c)
    names = [
        em.init(f"{node.name}_{k}", v.detach().float().numpy())
        for k, v in (
            ("scale", weight),
            ("bias", bias),
            ("mean", m.running_mean),
            ("var", m.running_var),
        )
    ]
    return em.add("BatchNormalization", [ins[0], *names], node.name, epsilon=float(m.eps))


def _layer_norm_fn(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """F.layer_norm(x, normalized_shape, weight, bias, eps) with parameter weights."""
    shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
    eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
    if shape is None or len(ins) != 3:
        return None
    axis = -len(shape) if isinstance(shape, list | tuple) else -1
    return em.add("LayerNormalization", ins, node.name, axis=axis, epsilon=float(eps))


def _mean(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None:
        return None
    axes = [int(d) for d in (dims if isinstance(dims, list | tuple) else [dims])]
    return em.add("ReduceMean", ins[:1], node.name, axes=axes, keepdims=int(bool(keepdim)))


def _sum(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """x.sum(dim, keepdim) / torch.sum: ReduceSum (its axes are an input since opset 13)."""
    import numpy as np

    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None or len(ins) != 1:
        return None
    axes = [int(d) for d in (dims if isinstance(dims, list | tuple) else [dims])]
    at = em.init(f"{node.name}_axes", np.array(axes, np.int64))
    return em.add("ReduceSum", [ins[0], at], node.name, keepdims=int(bool(keepdim)))


def _permute(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    dims = node.args[1:] if node.op == "call_method" else node.args[1]
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = dims[0]
    if not all(isinstance(d, int) for d in dims):
        return None
    return em.add("Transpose", ins[:1], node.name, perm=[int(d) for d in dims])


def _layer_norm(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    m = em.modules.get(node.target)
    if not isinstance(m, nn.LayerNorm) or not m.elementwise_affine:
        return None
    axis = -len(m.normalized_shape)
    w = em.init(f"{node.name}_scale", m.weight.detach().float().numpy())
    b = em.init(f"{node.name}_bias", m.bias.detach().float().numpy())
    return em.add("LayerNormalization", [ins[0], w, b], node.name, axis=axis, epsilon=m.eps)


def _gelu(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """Exact (erf) GELU: 0.5 * x * (1 + erf(x / sqrt(2))); opset 17 has no Gelu op."""
    m = em.modules.get(node.target)
    if getattr(m, "approximate", "none") != "none":
        return None
    import numpy as np

    k = em.init(f"{node.name}_rsqrt2", np.array(2**-0.5, np.float32))
    one = em.init(f"{node.name}_one", np.array(1.0, np.float32))
    half = em.init(f"{node.name}_half", np.array(0.5, np.float32))
    e = em.add("Erf", [em.add("Mul", [ins[0], k], node.name + "_s")], node.name + "_erf")
    t = em.add("Mul", [ins[0], em.add("Add", [e, one], node.name + "_1p")], node.name + "_xt")
    return em.add("Mul", [t, half], node.name)


def _getitem(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """Basic tensor indexing, ``x[:, -1, 2:5]``, ``mask[:, None, None, :]``: ints
    (Gather, the axis goes), slices (Slice) and None (Unsqueeze); other index kinds
    (tensors, Ellipsis) are not translated. On a size list (``x.shape[0]``): one size."""
    import numpy as np

    from edgeq.export.shape_ops import is_size, size_item

    if isinstance(node.args[0], fx.Node) and is_size(node.args[0]):
        return size_item(em, node)
    index = node.args[1]
    items = index if isinstance(index, tuple) else (index,)
    if len(ins) != 1 or not all(isinstance(i, int | slice) or i is None for i in items):
        return None
    out, axis = ins[0], 0
    for k, item in enumerate(items):
        base = f"{node.name}_{k}"
        if item is None:
            at = em.init(f"{base}_axes", np.array([axis], np.int64))
            out = em.add("Unsqueeze", [out, at], base)
            axis += 1
            continue
        if isinstance(item, int):
            at = em.init(f"{base}_at", np.array(item, np.int64))
            out = em.add("Gather", [out, at], base, axis=axis)
            continue
        if item != slice(None):
            parts = (item.start or 0, 2**63 - 1 if item.stop is None else item.stop, item.step or 1)
            consts = []
            for n, v in zip(
                ("start", "end", "axis", "step"), (*parts[:2], axis, parts[2]), strict=True
            ):
                if isinstance(v, fx.Node) and is_size(v):  # x[:, :seq_len]
                    consts.append(em.names[v])
                elif isinstance(v, int):
                    consts.append(em.init(f"{base}_{n}", np.array([v], np.int64)))
                else:
                    return None
            out = em.add("Slice", [out, *consts], base)
        axis += 1
    return em.add("Identity", [out], node.name)


FUNCTIONS: dict[Any, Translator] = {
    operator.getitem: _getitem,
    torch.sigmoid: _unary("Sigmoid"),
    F.sigmoid: _unary("Sigmoid"),
    F.hardswish: _unary("HardSwish"),
    F.hardsigmoid: _unary("HardSigmoid", alpha=1 / 6, beta=0.5),
    F.silu: _silu,
    torch.tanh: _unary("Tanh"),
    operator.mul: _mul,
    torch.mul: _mul,
    F.adaptive_avg_pool2d: _adaptive_avg_pool,
    F.avg_pool2d: _avg_pool,
    F.layer_norm: _layer_norm_fn,
    torch.permute: _permute,
    torch.sum: _sum,
}
MODULES: dict[type[nn.Module], Translator] = {
    nn.Sigmoid: _unary("Sigmoid"),
    nn.Hardswish: _unary("HardSwish"),
    nn.Hardsigmoid: _unary("HardSigmoid", alpha=1 / 6, beta=0.5),
    nn.SiLU: _silu,
    nn.Tanh: _unary("Tanh"),
    nn.AvgPool2d: _avg_pool,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool,
    nn.BatchNorm2d: _batch_norm,
    nn.LayerNorm: _layer_norm,
    nn.GELU: _gelu,
}


METHODS: dict[str, Translator] = {
    "mean": _mean,
    "sum": _sum,
    "sigmoid": _unary("Sigmoid"),
    "permute": _permute,
}


def translator_for(node: fx.Node, modules: dict[str, nn.Module]) -> Translator | None:
    if node.op == "call_function":
        return FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return METHODS.get(str(node.target))
    if node.op == "call_module":
        return MODULES.get(type(modules[node.target]))
    return None
