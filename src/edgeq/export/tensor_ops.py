"""ONNX translations of the ops of text models that are not float arithmetic:
embedding lookups, dtype casts, comparisons and masks, index ranges and filled
tensors. They run on int64 token ids and attention masks, so unlike `float_ops`
every constant takes the dtype of the tensor it meets (`edgeq.export.dtypes`).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import fx, nn

from edgeq.export.dtypes import cast_to, node_dtype, numpy_dtype, onnx_dtype, result_dtype
from edgeq.export.float_ops import FUNCTIONS, METHODS, MODULES, Translator

aten = torch.ops.aten


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _embedding_module(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """nn.Embedding in eval: rows of the table, ONNX Gather (padding_idx only matters
    for gradients; max_norm renormalizes the table in place, refused)."""
    m = em.modules[node.target]
    if m.max_norm is not None:
        return None
    table = em.init(f"{node.name}_weight", m.weight.detach().float().numpy())
    return em.add("Gather", [table, ins[0]], node.name, axis=0)


def _embedding_fn(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """F.embedding(input, weight) and aten.embedding(weight, input)."""
    if len(ins) < 2 or _arg(node, 3 if node.target is F.embedding else 9, "max_norm"):
        return None
    ids, table = (ins[0], ins[1]) if node.target is F.embedding else (ins[1], ins[0])
    return em.add("Gather", [table, ids], node.name, axis=0)


def _cast(em: Any, node: fx.Node, ins: list[str]) -> str:
    """Any dtype conversion (``.to(torch.float32)``, ``.float()``, ``.type_as(x)``):
    a Cast to the dtype PyTorch computed, an Identity when it is unchanged."""
    dtype = result_dtype(node)
    if node_dtype(node.args[0]) == dtype:
        return str(em.add("Identity", ins[:1], node.name))
    return str(em.add("Cast", ins[:1], node.name, to=onnx_dtype(dtype)))


def _compare(op: str, negate: bool = False) -> Translator:
    """``a == b`` and kin; a number is a constant of the tensor's dtype."""

    def emit(em: Any, node: fx.Node, ins: list[str]) -> str | None:
        a, b = node.args[:2]
        tensor = a if isinstance(a, fx.Node) else b
        dtype = node_dtype(tensor) or torch.float32
        names = []
        for k, v in enumerate((a, b)):
            if isinstance(v, fx.Node):
                names.append(cast_to(em, em.names[v], v, dtype, f"{node.name}.cast{k}"))
            elif isinstance(v, int | float | bool):
                names.append(em.init(f"{node.name}.c{k}", np.array(v, numpy_dtype(dtype))))
            else:
                return None
        out = em.add(op, names, node.name + ("_eq" if negate else ""))
        return em.add("Not", [out], node.name) if negate else out

    return emit


def _logical(op: str) -> Translator:
    def emit(em: Any, node: fx.Node, ins: list[str]) -> str | None:
        if len(ins) != (1 if op == "Not" else 2):
            return None
        if any(node_dtype(a) not in (torch.bool, None) for a in node.all_input_nodes):
            return None  # bitwise arithmetic on integers: not a mask
        return em.add(op, ins, node.name)

    return emit


def _fill_value(em: Any, node: fx.Node, value: Any, dtype: torch.dtype) -> str | None:
    if isinstance(value, fx.Node):
        return cast_to(em, em.names[value], value, dtype, f"{node.name}.value")
    if isinstance(value, int | float | bool):
        return em.init(f"{node.name}.value", np.array(value, numpy_dtype(dtype)))
    return None


def _where(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """torch.where(cond, a, b): a number takes the result's dtype."""
    cond, a, b = node.args[:3]
    dtype = result_dtype(node)
    values = [_fill_value(em, node, v, dtype) for v in (a, b)]
    if not isinstance(cond, fx.Node) or None in values:
        return None
    return em.add("Where", [em.names[cond], *values], node.name)


def _masked_fill(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """x.masked_fill(mask, value): Where(mask, value, x)."""
    x, mask, value = node.args[:3]
    fill = _fill_value(em, node, value, result_dtype(node))
    if not isinstance(mask, fx.Node) or fill is None:
        return None
    return em.add("Where", [em.names[mask], fill, em.names[x]], node.name)


def _scalar(em: Any, node: fx.Node, v: Any, dtype: torch.dtype, k: int) -> str | None:
    """A 0-d value for Range: a number, or a size (1-element int64) squeezed."""
    if isinstance(v, fx.Node):
        return em.add("Squeeze", [em.names[v]], f"{node.name}.s{k}")
    if isinstance(v, int | float):
        return em.init(f"{node.name}.s{k}", np.array(v, numpy_dtype(dtype)))
    return None


def _arange(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """torch.arange(end) / (start, end[, step]), ends often a sequence length: Range."""
    args = list(node.args)
    if node.target in (aten.arange.start, aten.arange.start_step) or len(args) > 1:
        start, end, step = args[0], args[1], (args[2] if len(args) > 2 else 1)
    else:
        start, end, step = 0, args[0], 1
    dtype = result_dtype(node)
    parts = [_scalar(em, node, v, dtype, k) for k, v in enumerate((start, end, step))]
    if None in parts or dtype != torch.int64:
        return None
    return em.add("Range", parts, node.name)


def _filled(value: float) -> Translator:
    """zeros_like / ones_like (the shape of the argument) and new_zeros / new_ones
    (a size list): ConstantOfShape of the result's dtype."""

    def emit(em: Any, node: fx.Node, ins: list[str]) -> str | None:
        from edgeq.export.aten_ops import sizes

        if node.target in (aten.new_zeros.default, aten.new_ones.default):
            shape = sizes(em, node.args[1], f"{node.name}.shape")
        else:
            shape = em.add("Shape", ins[:1], f"{node.name}.shape")
        fill = np.array([value], numpy_dtype(result_dtype(node)))
        tensor = numpy_helper.from_array(fill, f"{node.name}.fill")
        return em.add("ConstantOfShape", [shape], node.name, value=tensor)

    return emit


def _clamp(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """clamp(x, min, max) with number bounds: Max / Min (the pooling's clamp(min=1e-9))."""
    low, high = _arg(node, 1, "min"), _arg(node, 2, "max")
    out, dtype = ins[0], result_dtype(node)
    for k, (bound, op) in enumerate(((low, "Max"), (high, "Min"))):
        if bound is None:
            continue
        if not isinstance(bound, int | float):
            return None
        const = em.init(f"{node.name}.{op.lower()}", np.array(bound, numpy_dtype(dtype)))
        out = em.add(op, [out, const], f"{node.name}.{k}")
    return em.add("Identity", [out], node.name)


def _rsub(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """aten.rsub(x, other): other - x (``1.0 - mask``)."""
    other, alpha = node.args[1], _arg(node, 2, "alpha", 1)
    if alpha != 1 or not isinstance(other, int | float):
        return None
    dtype = result_dtype(node)
    x = cast_to(em, ins[0], node.args[0], dtype, f"{node.name}.cast")
    const = em.init(f"{node.name}.c", np.array(other, numpy_dtype(dtype)))
    return em.add("Sub", [const, x], node.name)


def _sum(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    dims, keepdim = _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False)
    if dims is None or len(ins) != 1:
        return None
    axes = [int(d) for d in (dims if isinstance(dims, list | tuple) else [dims])]
    at = em.init(f"{node.name}.axes", np.array(axes, np.int64))
    return em.add("ReduceSum", [ins[0], at], node.name, keepdims=int(bool(keepdim)))


def _unary(op: str) -> Translator:
    return lambda em, node, ins: em.add(op, ins[:1], node.name)


_CASTS = ("to", "float", "long", "int", "bool", "type_as", "half", "double")
_COMPARE = {
    "eq": ("Equal", False),
    "ne": ("Equal", True),
    "lt": ("Less", False),
    "le": ("LessOrEqual", False),
    "gt": ("Greater", False),
    "ge": ("GreaterOrEqual", False),
}


def _table() -> dict[Any, Translator]:
    table: dict[Any, Translator] = {
        F.embedding: _embedding_fn,
        aten.embedding.default: _embedding_fn,
        torch.where: _where,
        aten.where.self: _where,
        aten.masked_fill.Scalar: _masked_fill,
        aten.masked_fill.Tensor: _masked_fill,
        torch.arange: _arange,
        aten.arange.default: _arange,
        aten.arange.start: _arange,
        aten.arange.start_step: _arange,
        torch.zeros_like: _filled(0.0),
        torch.ones_like: _filled(1.0),
        aten.zeros_like.default: _filled(0.0),
        aten.ones_like.default: _filled(1.0),
        aten.new_zeros.default: _filled(0.0),
        aten.new_ones.default: _filled(1.0),
        torch.clamp: _clamp,
        aten.clamp.default: _clamp,
        aten.rsub.Scalar: _rsub,
        aten.sum.dim_IntList: _sum,
        aten.neg.default: _unary("Neg"),
        operator.neg: _unary("Neg"),
        aten.logical_not.default: _logical("Not"),
        aten.bitwise_not.default: _logical("Not"),
        operator.invert: _logical("Not"),
        aten.__and__.Tensor: _logical("And"),
        aten.bitwise_and.Tensor: _logical("And"),
        aten.logical_and.default: _logical("And"),
        operator.and_: _logical("And"),
        aten.__or__.Tensor: _logical("Or"),
        aten.bitwise_or.Tensor: _logical("Or"),
        operator.or_: _logical("Or"),
    }
    for target in (
        aten.to.dtype,
        aten.to.device,
        aten.to.dtype_layout,
        aten._to_copy.default,
        aten.type_as.default,
    ):
        table[target] = _cast
    for name, (op, negate) in _COMPARE.items():
        for overload in ("Scalar", "Tensor"):
            table[getattr(getattr(aten, name), overload)] = _compare(op, negate)
        table[getattr(operator, name)] = _compare(op, negate)
    return table


def register() -> None:
    """Add these translators to the exporter's tables (done on import of the exporter)."""
    FUNCTIONS.update(_table())
    MODULES[nn.Embedding] = _embedding_module
    for name in _CASTS:
        METHODS[name] = _cast
    for name, (op, negate) in _COMPARE.items():
        METHODS[name] = _compare(op, negate)
    METHODS.update({"masked_fill": _masked_fill, "clamp": _clamp, "clamp_min": _clamp})
