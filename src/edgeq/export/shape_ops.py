"""ONNX translations of torch.fx's shape arithmetic: ``x.shape``, ``x.size(1)``,
``b, t = x.shape`` and the method forms of the layout ops (``x.view(b, t, h, d)``,
``x.transpose(1, 2)``), as torch.fx records them from a model's Python code.

A size is what `edgeq.export.aten_ops` makes of torch.export's ``sym_size``: a
1-element int64 tensor read from the tensor at run time (Shape -> Gather), so a
reshape built from it keeps the batch and sequence dimensions dynamic.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from edgeq.export import aten_ops
from edgeq.export.aten_ops import is_size, sizes
from edgeq.export.float_ops import FUNCTIONS, METHODS, Translator

_NOT_TENSORS = ("dtype", "device", "is_cuda", "requires_grad")


def _getattr(em: Any, node: fx.Node, ins: list[str]) -> str | None:
    """``x.shape`` is Shape; ``x.dtype`` or ``x.device`` yield no ONNX value (the ops
    using them read their result's dtype from ShapeProp)."""
    attr = node.args[1]
    if attr == "shape":
        return str(em.add("Shape", ins[:1], node.name))
    if attr in _NOT_TENSORS:
        return node.name  # never an ONNX input: a consumer would fail the checker
    return None


def _size(em: Any, node: fx.Node, ins: list[str]) -> str:
    """``x.size()`` (Shape) or ``x.size(d)`` (Shape -> Gather: one element)."""
    shape = em.add("Shape", ins[:1], f"{node.name}.shape")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dim is None:
        return str(em.add("Identity", [shape], node.name))
    at = em.init(f"{node.name}.at", np.array([int(dim)], np.int64))
    return str(em.add("Gather", [shape, at], node.name))


def size_item(em: Any, node: fx.Node) -> str | None:
    """``shape[i]`` or ``shape[i:j]`` on a size list (``b, t = x.shape``)."""
    index = node.args[1]
    src = em.names[node.args[0]]
    if isinstance(index, int):
        at = em.init(f"{node.name}.at", np.array([index], np.int64))
        return str(em.add("Gather", [src, at], node.name))
    if isinstance(index, slice) and index.step in (None, 1):
        start = em.init(f"{node.name}.start", np.array([index.start or 0], np.int64))
        stop = 2**63 - 1 if index.stop is None else index.stop
        end = em.init(f"{node.name}.end", np.array([stop], np.int64))
        return str(em.add("Slice", [src, start, end], node.name))
    return None


def reshape(em: Any, node: fx.Node, x: str) -> str:
    """``x.view(b, -1, 4)``, ``x.reshape((b, t, h, d))`` or ``torch.reshape(x, shape)``:
    Reshape to a shape made of constants and run-time sizes."""
    dims: Any = node.args[1:] if node.op == "call_method" else node.args[1]
    if node.op == "call_method" and len(dims) == 1 and not isinstance(dims[0], int):
        dims = dims[0]  # x.view((b, t)) or x.view(shape_node)
    if isinstance(dims, fx.Node):  # a whole size list (x.view(y.shape))
        return str(em.add("Reshape", [x, em.names[dims]], node.name))
    return str(em.add("Reshape", [x, sizes(em, list(dims), f"{node.name}.to")], node.name))


def _method_dims(translate: Translator) -> Translator:
    """A method whose dims come as varargs (``x.permute(0, 2, 1)``) or a list, to the
    aten translator that takes them as one list."""

    def emit(em: Any, node: fx.Node, ins: list[str]) -> str | None:
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], list | tuple | fx.Node):
            dims = dims[0]
        proxy = _Args(node, (node.args[0], list(dims) if isinstance(dims, tuple) else dims))
        return translate(em, proxy, ins)  # type: ignore[arg-type]

    return emit


class _Args:
    """A node seen with other positional arguments (name, meta and users kept)."""

    def __init__(self, node: fx.Node, args: tuple) -> None:
        self._node, self.args, self.kwargs = node, args, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


def _softmax(em: Any, node: fx.Node, ins: list[str]) -> str:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
    return str(em.add("Softmax", ins[:1], node.name, axis=int(dim)))


def _identity(em: Any, node: fx.Node, ins: list[str]) -> str:
    return str(em.add("Identity", ins[:1], node.name))


def register() -> None:
    """Add these translators to the exporter's tables (done on import of the exporter)."""
    aten = torch.ops.aten
    A = aten_ops.ATEN
    FUNCTIONS.update(
        {
            getattr: _getattr,
            torch.transpose: A[aten.transpose.int],
            torch.unsqueeze: A[aten.unsqueeze.default],
            torch.matmul: A[aten.matmul.default],
            operator.matmul: A[aten.matmul.default],
            torch.softmax: _softmax,
            F.softmax: _softmax,
            F.scaled_dot_product_attention: A[aten.scaled_dot_product_attention.default],
            operator.truediv: lambda em, node, ins: aten_ops.arithmetic("Div", em, node),
        }
    )
    METHODS.update(
        {
            "size": _size,
            "transpose": A[aten.transpose.int],
            "unsqueeze": A[aten.unsqueeze.default],
            "squeeze": A[aten.squeeze.dim],
            "expand": _method_dims(A[aten.expand.default]),
            "softmax": _softmax,
            "matmul": A[aten.matmul.default],
            "contiguous": _identity,
            "chunk": A[aten.chunk.default],
        }
    )


__all__ = ["is_size", "register", "reshape", "size_item"]
