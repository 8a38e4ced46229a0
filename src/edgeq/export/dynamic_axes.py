"""Which dimensions of an exported model stay dynamic, found by running it twice.

Every other size is written into the ONNX graph as a constant, so the exporter must
know which ones follow an input's size. It runs the model on the example inputs and
then on a probe per named axis: ``"batch"`` doubles dimension 0 of every input (as
before sequences existed); any other name (``"sequence"``) grows that dimension by
one in every input that declares it, together, so token ids and their attention
mask stay the same length. A node dimension that changes with a probe is dynamic
(``node.meta["batch_dims"]``: the set, read by `aten_ops.batch_dims`;
``node.meta["dynamic_dims"]``: dimension -> axis name, for the ONNX value types).

The axes come from ``export_onnx(dynamic_axes=...)`` (torch.onnx's format:
``{"input_ids": {0: "batch", 1: "sequence"}}``), else from the capture
(`edgeq.graph.lift.export_and_lift` records its dynamic shapes in the placeholders'
``meta[AXES_META]``), else ``{0: "batch"}`` for every input.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from edgeq.graph.lift import AXES_META

BATCH = "batch"
Axes = dict[str, dict[int, str]]


class DynamicAxesError(ValueError):
    """A dynamic axis that names no input or dimension, or that the model cannot vary."""


def input_axes(
    placeholders: list[fx.Node],
    names: list[str],
    examples: tuple[torch.Tensor, ...],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
) -> Axes:
    """The dynamic axes of every input, by ONNX input name (checked against the
    examples' ranks)."""
    if dynamic_axes is not None:
        unknown = sorted(set(dynamic_axes) - set(names))
        if unknown:
            raise DynamicAxesError(
                f"dynamic_axes names {unknown}, which are not inputs; the inputs are {names}"
            )
    axes: Axes = {}
    for node, name, x in zip(placeholders, names, examples, strict=True):
        if dynamic_axes is not None:
            chosen = dict(dynamic_axes.get(name, {}))
        else:
            chosen = dict(node.meta.get(AXES_META, {0: BATCH}))
        for d in chosen:
            if not -x.dim() <= d < x.dim():
                raise DynamicAxesError(
                    f"dynamic_axes[{name!r}] names dimension {d}; the example has {x.dim()}"
                )
        axes[name] = {d % x.dim(): str(n) for d, n in chosen.items()}
    return axes


def _grow(x: torch.Tensor, dim: int, axis: str) -> torch.Tensor:
    if axis == BATCH and dim == 0:
        return torch.cat([x, x])
    return torch.cat([x, x.narrow(dim, 0, 1)], dim)


def _shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[fx.Node, list[int]]:
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    out = {}
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            out[n] = list(meta.shape)
    return out


def mark_dynamic_dims(
    gm: fx.GraphModule, examples: tuple[torch.Tensor, ...], names: list[str], axes: Axes
) -> None:
    """Set every node's ``meta["batch_dims"]`` and ``meta["dynamic_dims"]`` from one
    probe per axis name, then leave ShapeProp's ``tensor_meta`` of the examples.

    Raises:
        DynamicAxesError: the model does not run with an axis other than the default
            batch grown (names the axis and the error).
        RuntimeError: the model does not run on the examples themselves.
    """
    base = _shapes(gm, examples)
    found: dict[fx.Node, dict[int, str]] = {}
    compared: set[fx.Node] = set()
    for axis in sorted({a for dims in axes.values() for a in dims.values()}):
        grown = tuple(
            _grow(x, d, axis) if (d := _dim_of(axes[name], axis)) is not None else x
            for name, x in zip(names, examples, strict=True)
        )
        try:
            shapes = _shapes(gm, grown)
        except Exception as e:
            if axis == BATCH and all(a == {0: BATCH} for a in axes.values()):
                continue  # inputs whose first dimension is not the batch (LSTM states)
            raise DynamicAxesError(
                f"the model does not run with its {axis!r} axis grown ({type(e).__name__}: "
                f"{e}); leave that axis out of dynamic_axes to keep it static"
            ) from e
        for n, shape in base.items():
            other = shapes.get(n)
            if other is not None and len(other) == len(shape):
                compared.add(n)
                for d, (a, b) in enumerate(zip(shape, other, strict=True)):
                    if a != b:
                        found.setdefault(n, {})[d] = axis
    for n in compared:  # the others: dimension 0 is taken for the batch (`batch_dims`)
        dims = found.get(n, {})
        n.meta["dynamic_dims"] = dims
        n.meta["batch_dims"] = set(dims)
    _shapes(gm, examples)


def _dim_of(dims: dict[int, str], axis: str) -> int | None:
    return next((d for d, a in dims.items() if a == axis), None)


def value_shape(shape: list[int], dims: Mapping[int, str]) -> list[int | str]:
    """An ONNX value type's shape: dynamic dimensions by their axis name."""
    return [dims.get(d, s) for d, s in enumerate(shape)]
