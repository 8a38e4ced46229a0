"""The names of an exported model's inputs and outputs, and the structure that
rebuilds the model's tuple, list or dict of outputs from ONNX Runtime's flat list.

Inputs: one input is ``"input"``; several keep the model's argument names.

Outputs, flattened in the order the model returns them (a dict in its key order):

- a single tensor is ``"output"`` (as it always was);
- the elements of a returned tuple or list are ``"output_0"``, ``"output_1"``, ...;
- the values of a returned dict are named by their keys (``"boxes"``, ``"scores"``);
- a nested tuple, list or dict adds its indices or keys with ``_``: element 0 of
  output 1 is ``"output_1_0"``, key ``"xy"`` of ``"boxes"`` is ``"boxes_xy"``.

A name keeps letters, digits and ``_`` (anything else becomes ``_``) and starts with
a letter or ``_`` (else ``output_`` goes before it: key ``"0"`` is ``"output_0"``); a
name already taken by an input or an earlier output gets ``_1``, ``_2``, ...
Internal values of the graph that happen to bear an output's name are renamed
instead (a head module called ``boxes`` returned as ``{"boxes": ...}``).

Every output is a tensor: a model input returned as is, a constant buffer, or one
tensor returned twice is each an Identity of its own name; ``None``, numbers and
other non-tensors are an `ExportError` naming the output. A model with several
outputs records its structure in the ONNX metadata (``edgeq.outputs``), so that
`unflatten_outputs` rebuilds it from the file alone::

    arrays = session.run(None, {"input": x})
    result = unflatten_outputs(onnx.load(path), arrays)  # {"boxes": ..., "scores": ...}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import onnx
from torch import fx

from edgeq.export.errors import ExportError
from edgeq.ptq.static import QuantizedModel

OutputSpec: TypeAlias = (
    str | tuple["OutputSpec", ...] | list["OutputSpec"] | dict[str | int, "OutputSpec"]
)
"""The model's output structure with each tensor replaced by its ONNX output name."""

OUTPUTS_META = "edgeq.outputs"  # ONNX metadata key of the JSON output structure
Model: TypeAlias = fx.GraphModule | QuantizedModel | onnx.ModelProto
Key = str | int


@dataclass(frozen=True)
class OutputLeaf:
    """One output tensor: its ONNX name, where the model returns it (``"[1][0]"``,
    ``"['boxes']"``, ``""`` for a single tensor) and the graph node computing it."""

    name: str
    where: str
    node: fx.Node

    @property
    def label(self) -> str:
        """How errors name it: ``output [1] (output_1)``, ``the output``."""
        return _label(self.where, self.name)


def _label(where: str, name: str) -> str:
    return f"output {where} ({name})" if where else "the output"


def input_names(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """The ONNX input name of each placeholder: ``"input"`` alone, else its argument's."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return {n: ("input" if len(placeholders) == 1 else str(n.target)) for n in placeholders}


def output_leaves(gm: fx.GraphModule) -> tuple[OutputSpec, list[OutputLeaf]]:
    """The output structure of a captured graph and its tensors in ONNX order.

    Raises:
        ExportError: an output is None or a constant rather than a tensor, a dict key
            is neither a string nor an int, or the model returns no tensor.
    """
    returned = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    taken = set(input_names(gm).values())
    leaves: list[OutputLeaf] = []
    spec = _walk(returned, (), taken, leaves)
    if not leaves:
        raise ExportError(f"the model returns {returned!r}: no tensor for the ONNX outputs")
    return spec, leaves


def _walk(arg: Any, path: tuple[Key, ...], taken: set[str], out: list[OutputLeaf]) -> OutputSpec:
    where = "".join(f"[{p!r}]" for p in path)
    if isinstance(arg, fx.Node):
        name = _unique(_onnx_name(path), taken)
        out.append(OutputLeaf(name, where, arg))
        return name
    if isinstance(arg, tuple | list):
        items = [_walk(a, (*path, i), taken, out) for i, a in enumerate(arg)]
        return tuple(items) if isinstance(arg, tuple) else items
    if isinstance(arg, dict):
        bad = [k for k in arg if not isinstance(k, str | int) or isinstance(k, bool)]
        if bad:
            raise ExportError(
                f"output {where or 'dict'} has the key {bad[0]!r} ({type(bad[0]).__name__}); "
                "the ONNX export names outputs by str or int keys: use strings"
            )
        return {k: _walk(v, (*path, k), taken, out) for k, v in arg.items()}
    what = "None" if arg is None else f"the constant {arg!r} ({type(arg).__name__})"
    raise ExportError(
        f"{_label(where, _onnx_name(path))} is {what}, not a tensor; the ONNX export "
        "writes tensors only: return a tensor there or leave it out"
    )


def _onnx_name(path: tuple[Key, ...]) -> str:
    if not path:
        return "output"
    name = re.sub(r"[^0-9A-Za-z_]", "_", "_".join(str(p) for p in path))
    if isinstance(path[0], int) or not re.match(r"[A-Za-z_]", name):
        return f"output_{name}" if name else "output"
    return name


def _unique(name: str, taken: set[str]) -> str:
    unique, k = name, 1
    while unique in taken:
        unique, k = f"{name}_{k}", k + 1
    taken.add(unique)
    return unique


def output_spec(model: Model) -> OutputSpec:
    """The output structure of a model, its tensors replaced by their ONNX names.

    Args:
        model: a captured GraphModule, a `QuantizedModel`, or an exported ONNX model
            (its recorded structure; without one, its single output's name, or a
            tuple of its output names).

    Returns:
        ``"output"`` for one tensor; a tuple, list or dict of names otherwise.

    Raises:
        ExportError: an output is not a tensor (see `output_leaves`).

    Example::

        output_spec(capture(model))  # {"boxes": "boxes", "scores": "scores"}
    """
    if isinstance(model, onnx.ModelProto):
        meta = {p.key: p.value for p in model.metadata_props}
        if OUTPUTS_META in meta:
            return spec_from_json(meta[OUTPUTS_META])
        names = [o.name for o in model.graph.output]
        return names[0] if len(names) == 1 else tuple(names)
    gm = model.module if isinstance(model, QuantizedModel) else model
    return output_leaves(gm)[0]


def output_names(model: Model | OutputSpec) -> list[str]:
    """The ONNX output names of a model (or of an `output_spec`), in ONNX Runtime's order.

    Example::

        output_names(qmodel)  # ["boxes", "scores"]
    """
    return list(_names(_as_spec(model)))


def flatten_outputs(model: Model | OutputSpec, value: Any) -> list[Any]:
    """The tensors of a model's returned ``value`` in ONNX output order (so that the
    simulation ``qmodel(x)`` compares with ``session.run(None, ...)`` pairwise).

    Raises:
        ValueError: ``value`` does not have the model's output structure.
    """
    return list(_leaves(_as_spec(model), value, ""))


def unflatten_outputs(model: Model | OutputSpec, arrays: Sequence[Any] | Mapping[str, Any]) -> Any:
    """Rebuild the model's tuple, list or dict of outputs from ONNX Runtime's results.

    Args:
        model: a GraphModule, a `QuantizedModel`, the exported ONNX model, or an
            `output_spec`.
        arrays: ``session.run(None, feeds)`` (a list in output order), or a mapping
            from output name to array.

    Returns:
        The arrays in the structure the model returns: one array for a single output.

    Raises:
        ValueError: the number of arrays is not the number of outputs, or a name is
            missing from the mapping.

    Example::

        boxes, scores = unflatten_outputs(qmodel, session.run(None, {"input": x}))
    """
    spec = _as_spec(model)
    names = list(_names(spec))
    if isinstance(arrays, Mapping):
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"no array for the outputs {missing}; the outputs are {names}")
        by_name = dict(arrays)
    else:
        if len(arrays) != len(names):
            raise ValueError(
                f"the model has {len(names)} outputs {names}; got {len(arrays)} arrays"
            )
        by_name = dict(zip(names, arrays, strict=True))
    return _rebuild(spec, by_name)


def _as_spec(model: Model | OutputSpec) -> OutputSpec:
    if isinstance(model, fx.GraphModule | QuantizedModel | onnx.ModelProto):
        return output_spec(model)
    return model


def _names(spec: OutputSpec) -> Iterator[str]:
    if isinstance(spec, str):
        yield spec
    else:
        for sub in spec.values() if isinstance(spec, dict) else spec:
            yield from _names(sub)


def _leaves(spec: OutputSpec, value: Any, where: str) -> Iterator[Any]:
    if isinstance(spec, str):
        yield value
    elif isinstance(spec, dict):
        if not isinstance(value, Mapping) or set(value) != set(spec):
            got = list(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"output{where}: expected a dict with keys {list(spec)}, got {got}")
        for k, sub in spec.items():
            yield from _leaves(sub, value[k], f"{where}[{k!r}]")
    else:
        if not isinstance(value, tuple | list) or len(value) != len(spec):
            got = f"{len(value)}" if isinstance(value, tuple | list) else type(value).__name__
            raise ValueError(f"output{where}: expected {len(spec)} values, got {got}")
        for i, sub in enumerate(spec):
            yield from _leaves(sub, value[i], f"{where}[{i}]")


def _rebuild(spec: OutputSpec, by_name: dict[str, Any]) -> Any:
    if isinstance(spec, str):
        return by_name[spec]
    if isinstance(spec, dict):
        return {k: _rebuild(sub, by_name) for k, sub in spec.items()}
    items = [_rebuild(sub, by_name) for sub in spec]
    return tuple(items) if isinstance(spec, tuple) else items


def spec_json(spec: OutputSpec) -> str:
    """The structure as JSON (for the ONNX metadata): a name, ``{"tuple": [...]}``,
    ``{"list": [...]}`` or ``{"dict": [[key, ...], ...]}`` (keys keep str or int)."""
    return json.dumps(_to_json(spec), separators=(",", ":"))


def _to_json(spec: OutputSpec) -> Any:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return {"dict": [[k, _to_json(v)] for k, v in spec.items()]}
    return {"tuple" if isinstance(spec, tuple) else "list": [_to_json(v) for v in spec]}


def spec_from_json(text: str) -> OutputSpec:
    """The structure `spec_json` wrote (read from the ONNX metadata ``edgeq.outputs``)."""
    return _from_json(json.loads(text))


def _from_json(data: Any) -> OutputSpec:
    if isinstance(data, str):
        return data
    if "dict" in data:
        return {k: _from_json(v) for k, v in data["dict"]}
    if "tuple" in data:
        return tuple(_from_json(v) for v in data["tuple"])
    return [_from_json(v) for v in data["list"]]


def free_names(
    nodes: Sequence[onnx.NodeProto],
    inits: Sequence[onnx.TensorProto],
    names: set[str],
    *,
    inputs: Iterable[str] = (),
) -> dict[str, str]:
    """Rename, in place, the internal values (and nodes) that bear one of ``names``
    (the outputs'), to ``NAME_1``, ... (a name no value, node or input holds);
    returns old -> new name (empty when none clash, leaving the graph as it was)."""
    used = {o for n in nodes for o in n.output} | {i.name for i in inits}
    clash = (used | {n.name for n in nodes}) & names
    used |= names | {n.name for n in nodes} | set(inputs)
    mapping = {old: _unique(old, used) for old in sorted(clash)}
    if not mapping:
        return mapping
    for node in nodes:
        node.input[:] = [mapping.get(v, v) for v in node.input]
        node.output[:] = [mapping.get(v, v) for v in node.output]
        node.name = mapping.get(node.name, node.name)
    for init in inits:
        init.name = mapping.get(init.name, init.name)
    return mapping
