"""ONNX translations of the ATen ops that graphs captured with torch.export keep
(`edgeq.graph.lift`): shape arithmetic on the dynamic batch size, layout ops and
attention, all in float.

Sizes: torch.export makes every size a constant except the batch dimension, which
arrives through ``aten.sym_size.int`` and Python arithmetic on it. Such a size is
emitted as a one-element int64 tensor (ONNX Shape -> Gather), so the exported model
keeps a dynamic batch. Static sizes come from ShapeProp's ``tensor_meta``.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
from torch import fx

from edgeq.export.dtypes import cast_to, node_dtype, numpy_dtype, result_dtype
from edgeq.export.float_ops import FUNCTIONS, Translator

aten = torch.ops.aten


def _rank(node: Any) -> int | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _shape(node: Any) -> list[int] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return list(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def batch_dims(node: Any) -> set[int]:
    """Dimensions of ``node``'s value that follow the batch size (measured by the
    exporter with two batch sizes); their sizes must not be baked in."""
    return set(getattr(node, "meta", {}).get("batch_dims", {0}))


def is_size(node: Any) -> bool:
    """An fx node whose value is a Python int (a size), not a tensor."""
    return isinstance(node, fx.Node) and "tensor_meta" not in node.meta


def _i64(em: Any, name: str, values: list[int] | int) -> str:
    return em.init(name, np.array(values, np.int64))


def sizes(em: Any, items: Any, base: str) -> str:
    """A list of sizes (ints and batch-size nodes) as a 1-d int64 ONNX tensor."""
    items = list(items) if isinstance(items, list | tuple | torch.Size) else [items]
    if all(isinstance(i, int) for i in items):
        return _i64(em, base, [int(i) for i in items])
    parts = [
        em.names[i] if isinstance(i, fx.Node) else _i64(em, f"{base}.{k}", [int(i)])
        for k, i in enumerate(items)
    ]
    return em.add("Concat", parts, base, axis=0)


def _sym_size(em: Any, node: fx.Node, ins: list[str]) -> str:
    shape = em.add("Shape", ins[:1], f"{node.name}.shape")
    return em.add("Gather", [shape, _i64(em, f"{node.name}.at", [node.args[1]])], node.name)


def arithmetic(op: str, em: Any, node: fx.Node, *, sizes_only: bool = False) -> str | None:
    """``a <op> b`` where one side is a size or a tensor and the other may be a Python
    number: sizes stay int64; a tensor operand is cast to the result's dtype where
    PyTorch promotes it (an int64 mask times a float), and a number becomes a constant
    of that dtype."""
    a, b = node.args[:2]
    if not any(isinstance(v, fx.Node) for v in (a, b)):
        return None
    as_size = all(is_size(v) or isinstance(v, int) for v in (a, b))
    dtype = result_dtype(node)
    names = []
    for k, v in enumerate((a, b)):
        if isinstance(v, fx.Node):
            name = em.names[v]
            names.append(name if as_size else cast_to(em, name, v, dtype, f"{node.name}.cast{k}"))
        elif as_size:
            names.append(_i64(em, f"{node.name}.c{k}", [int(v)]))
        elif isinstance(v, int | float | bool):
            names.append(em.init(f"{node.name}.c{k}", np.array(v, numpy_dtype(dtype))))
        else:
            return None
    if sizes_only and not as_size:
        return None
    return em.add(op, names, node.name)


def _reshape(em: Any, node: fx.Node, ins: list[str]) -> str:
    return em.add("Reshape", [ins[0], sizes(em, node.args[1], f"{node.name}.to")], node.name)


def _expand(em: Any, node: fx.Node, ins: list[str]) -> str:
    # -1 keeps a dimension: Expand broadcasts a target of 1 to the input's size
    target = [1 if (isinstance(s, int) and s == -1) else s for s in node.args[1]]
    return em.add("Expand", [ins[0], sizes(em, target, f"{node.name}.to")], node.name)


def _transpose(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    rank = _rank(node.args[0])
    if rank is None:
        return None
    a, b = (int(d) % rank for d in node.args[1:3])
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return em.add("Transpose", ins[:1], node.name, perm=perm)


def _select(em: Any, node: fx.Node, ins: list[str]) -> str:
    at = _i64(em, f"{node.name}.at", int(node.args[2]))
    return em.add("Gather", [ins[0], at], node.name, axis=int(node.args[1]))


def _squeeze(em: Any, node: fx.Node, ins: list[str]) -> str:
    axes = node.args[1] if isinstance(node.args[1], list | tuple) else [node.args[1]]
    return em.add("Squeeze", [ins[0], _i64(em, f"{node.name}.axes", list(axes))], node.name)


def _unsqueeze(em: Any, node: fx.Node, ins: list[str]) -> str:
    return em.add("Unsqueeze", [ins[0], _i64(em, f"{node.name}.axes", [node.args[1]])], node.name)


def _unflatten(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    shape = _shape(node.args[0])
    if shape is None:
        return None
    dim = int(node.args[1]) % len(shape)
    dynamic = batch_dims(node.args[0])
    if dim in dynamic or any(d > dim for d in dynamic):
        return None
    # 0 copies a leading dimension (the batch's); the trailing ones are static
    target = [0] * dim + list(node.args[2]) + shape[dim + 1 :]  # type: ignore[arg-type]
    return em.add("Reshape", [ins[0], _i64(em, f"{node.name}.to", target)], node.name)


def _chunk(em: Any, node: fx.Node, ins: list[str]) -> tuple[str, ...] | None:
    shape = _shape(node.args[0])
    chunks = int(node.args[1])
    dim = int(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0))
    if shape is None or dim % len(shape) in batch_dims(node.args[0]):
        return None
    size = shape[dim]
    step = -(-size // chunks)
    split = [min(step, size - s) for s in range(0, size, step)]
    outs = [f"{node.name}.{k}" for k in range(len(split))]
    em.nodes.append(
        _node(em, "Split", [ins[0], _i64(em, f"{node.name}.split", split)], outs, axis=dim)
    )
    return tuple(outs)


def _unbind(em: Any, node: fx.Node, ins: list[str]) -> tuple[str, ...] | None:
    shape = _shape(node.args[0])
    dim = int(node.args[1]) if len(node.args) > 1 else 0
    if shape is None or dim % len(shape) in batch_dims(node.args[0]):
        return None
    n = shape[dim]
    parts = [f"{node.name}.part{k}" for k in range(n)]
    em.nodes.append(
        _node(em, "Split", [ins[0], _i64(em, f"{node.name}.split", [1] * n)], parts, axis=dim)
    )
    axes = _i64(em, f"{node.name}.axes", [dim])
    return tuple(em.add("Squeeze", [p, axes], f"{node.name}.{k}") for k, p in enumerate(parts))


def _node(em: Any, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=outputs[0], **attrs)


def _matmul(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    return em.add("MatMul", ins[:2], node.name) if len(ins) == 2 else None


def _softmax(em: Any, node: fx.Node, ins: list[str]) -> str:
    return em.add("Softmax", ins[:1], node.name, axis=int(node.args[1]))


def _einsum(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    equation, tensors = node.args[:2]
    if not all(isinstance(t, fx.Node) for t in tensors):  # type: ignore[union-attr]
        return None
    inputs = [em.names[t] for t in tensors]  # type: ignore[union-attr]
    return em.add("Einsum", inputs, node.name, equation=str(equation).replace(" ", ""))


def _attention(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """scaled_dot_product_attention(q, k, v, attn_mask) without dropout or causal
    masking: softmax(q k^T * scale + mask) v, in float. A float mask is added (a text
    encoder's (1 - mask) * finfo.min); a bool mask keeps the scores where it is True."""
    q, k, v = node.args[:3]
    names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    extra = dict(zip(names, node.args[3:], strict=False)) | dict(node.kwargs)
    mask = extra.get("attn_mask")
    if extra.get("is_causal") or extra.get("enable_gqa") or extra.get("dropout_p", 0.0):
        return None
    shape = _shape(q)
    if shape is None or not (mask is None or isinstance(mask, fx.Node)):
        return None
    scale = extra.get("scale") or 1.0 / math.sqrt(shape[-1])
    rank = len(shape)
    perm = [*range(rank - 2), rank - 1, rank - 2]
    kt = em.add("Transpose", [em.names[k]], f"{node.name}.kt", perm=perm)
    scores = em.add("MatMul", [em.names[q], kt], f"{node.name}.qk")
    factor = em.init(f"{node.name}.scale", np.array(scale, np.float32))
    scaled = em.add("Mul", [scores, factor], f"{node.name}.scaled")
    if mask is not None and node_dtype(mask) == torch.bool:
        low = em.init(f"{node.name}.masked", np.array(-np.inf, np.float32))
        scaled = em.add("Where", [em.names[mask], scaled, low], f"{node.name}.masked_scores")
    elif mask is not None:
        scaled = em.add("Add", [scaled, em.names[mask]], f"{node.name}.masked_scores")
    weights = em.add("Softmax", [scaled], f"{node.name}.softmax", axis=-1)
    return em.add("MatMul", [weights, em.names[v]], node.name)


def _pad(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    rank = _rank(node.args[0])
    pad = list(node.args[1])  # type: ignore[arg-type]
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    if rank is None or mode != "constant" or not all(isinstance(p, int) for p in pad):
        return None
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # torch lists the last dimension first
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    fill = em.init(f"{node.name}.value", np.array(value or 0.0, np.float32))
    return em.add("Pad", [ins[0], _i64(em, f"{node.name}.pads", begins + ends), fill], node.name)


def _slice(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """x[start:end:step] along one dimension; start and end may be sizes
    (``position_ids[:, :seq_len]``)."""
    names = ("input", "dim", "start", "end", "step")
    a = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    start, end, step = a.get("start") or 0, a.get("end"), a.get("step") or 1
    end = 2**63 - 1 if end is None else end
    bounds = []
    for k, v in (("start", start), ("end", end)):
        if isinstance(v, fx.Node) and is_size(v):
            bounds.append(em.names[v])
        elif isinstance(v, int):
            bounds.append(_i64(em, f"{node.name}.{k}", [v]))
        else:
            return None
    if not isinstance(step, int):
        return None
    axis, stride = (
        _i64(em, f"{node.name}.axis", [a.get("dim", 0)]),
        _i64(em, f"{node.name}.step", [step]),
    )
    return em.add("Slice", [ins[0], *bounds, axis, stride], node.name)


def _roll(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """torch.roll as Slice + Concat per rolled dimension (static sizes only)."""
    shape = _shape(node.args[0])
    shifts, dims = node.args[1], node.args[2] if len(node.args) > 2 else []
    shifts = list(shifts) if isinstance(shifts, list | tuple) else [shifts]
    dims = list(dims) if isinstance(dims, list | tuple) else [dims]
    if shape is None or len(shifts) != len(dims) or not dims:
        return None
    out = ins[0]
    for k, (shift, dim) in enumerate(zip(shifts, dims, strict=True)):
        dim = int(dim) % len(shape)
        if dim in batch_dims(node.args[0]):
            return None
        n = shape[dim]
        s = int(shift) % n
        if s == 0:
            continue
        base = f"{node.name}.{k}"
        axis = _i64(em, f"{base}.axis", [dim])
        tail = em.add(
            "Slice",
            [out, _i64(em, f"{base}.t0", [n - s]), _i64(em, f"{base}.t1", [n]), axis],
            f"{base}.tail",
        )
        head = em.add(
            "Slice",
            [out, _i64(em, f"{base}.h0", [0]), _i64(em, f"{base}.h1", [n - s]), axis],
            f"{base}.head",
        )
        out = em.add("Concat", [tail, head], base, axis=dim)
    return em.add("Identity", [out], node.name)


def _vector_norm(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    names = ("input", "ord", "dim", "keepdim")
    a = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    dims = a.get("dim")
    if a.get("ord", 2) != 2 or dims is None:
        return None
    axes = [int(d) for d in (dims if isinstance(dims, list | tuple) else [dims])]
    return em.add("ReduceL2", ins[:1], node.name, axes=axes, keepdims=int(bool(a.get("keepdim"))))


def _clamp_min(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    low = node.args[1]
    if not isinstance(low, int | float):
        return None
    bound = em.init(f"{node.name}.min", np.array(low, np.float32))
    return em.add("Max", [ins[0], bound], node.name)


def _expand_as(em: Any, node: fx.Node, ins: list[str]) -> str:
    shape = em.add("Shape", [ins[1]], f"{node.name}.shape")
    return em.add("Expand", [ins[0], shape], node.name)


def _add_scalar(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    alpha = node.args[2] if len(node.args) > 2 else node.kwargs.get("alpha", 1)
    return arithmetic("Add", em, node) if alpha == 1 else None


ATEN: dict[Any, Translator] = {
    aten.sym_size.int: _sym_size,
    aten.expand.default: _expand,
    aten.transpose.int: _transpose,
    aten.swapaxes.default: _transpose,
    aten.select.int: _select,
    aten.squeeze.dim: _squeeze,
    aten.squeeze.dims: _squeeze,
    aten.unsqueeze.default: _unsqueeze,
    aten.unflatten.int: _unflatten,
    aten.chunk.default: _chunk,  # type: ignore[dict-item]
    aten.unbind.int: _unbind,  # type: ignore[dict-item]
    aten.matmul.default: _matmul,
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.einsum.default: _einsum,
    aten.scaled_dot_product_attention.default: _attention,
    aten.pad.default: _pad,
    aten.constant_pad_nd.default: _pad,
    aten.slice.Tensor: _slice,
    aten.roll.default: _roll,
    aten.add.Tensor: _add_scalar,
    aten.mul.Tensor: lambda em, node, ins: arithmetic("Mul", em, node),
    aten.sub.Tensor: lambda em, node, ins: arithmetic("Sub", em, node),
    torch.reshape: _reshape,
    operator.mul: lambda em, node, ins: arithmetic("Mul", em, node),
    torch.mul: lambda em, node, ins: arithmetic("Mul", em, node),
    operator.floordiv: lambda em, node, ins: arithmetic("Div", em, node, sizes_only=True),
    aten.div.Tensor: lambda em, node, ins: arithmetic("Div", em, node),
    aten.linalg_vector_norm.default: _vector_norm,
    aten.clamp_min.default: _clamp_min,
    aten.expand_as.default: _expand_as,
    operator.sub: lambda em, node, ins: arithmetic("Sub", em, node),
}


def register() -> None:
    """Add these translators to the exporter's table (done on import of the exporter)."""
    FUNCTIONS.update(ATEN)
