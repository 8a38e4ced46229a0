"""The architecture record: the float graph an artifact was quantized from, as data.

`edgeq.save` records the captured, BatchNorm-folded float graph (the one `rewrite`
turns into the quantized model) in ``edgeq.json``: its nodes, the torch.nn modules they
call with their constructor arguments, and the shapes of the tensors they fetch. So
`edgeq.load` rebuilds the model from the artifact alone: no torchvision name, no
factory to import, no model file to read, and a model whose structure a pass changed
before quantization (pruned channels, factorized layers) loads with its own shapes.

Nothing recorded is code. Modules are torch.nn classes named by their class name and
built from JSON values; functions and methods are looked up by name in fixed tables
(the ops edgeq places and exports), never imported; anything else is refused when
saving (`ArchitectureError`: the artifact then records only its source, as before) and
when loading (an `ArtifactError` naming the key). Modules are built on the meta device
first, and their sizes are checked against a bound from the tensors file before any
memory is allocated.

Saving checks the record by rebuilding from it: same code, same tensors' names, shapes
and dtypes, same module attributes, or no record.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgeq.artifact.errors import ArtifactError
from edgeq.artifact.validate import At, as_dict, as_int, as_str, get, show
from edgeq.graph.lift import AXES_META

ARCHITECTURE_VERSION = 1
MAX_NODES = 200_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_GETATTR_NAMES = ("shape", "dtype", "device", "is_cuda", "requires_grad", "ndim")
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}
_MEMORY_FORMATS = {
    str(f).removeprefix("torch."): f
    for f in (torch.contiguous_format, torch.channels_last, torch.preserve_format)
}
_SKIPPED_INIT = ("self", "device", "dtype")


class ArchitectureError(ValueError):
    """A graph that cannot be recorded as data (names the node or module and why)."""


# ---------------------------------------------------------------- op tables


def _function_name(fn: Any) -> str:
    if isinstance(fn, torch._ops.OpOverload):
        return str(fn)  # "aten.transpose.int"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


@functools.cache
def _functions() -> dict[str, Callable[..., Any]]:
    """Every function edgeq places or exports, by its recorded name."""
    import torchvision

    from edgeq.export import aten_ops  # imported here: the exporter imports the artifact
    from edgeq.export.float_ops import FUNCTIONS
    from edgeq.graph import insert

    fns: set[Any] = set(FUNCTIONS) | set(aten_ops.ATEN)
    fns |= insert.ADD_TARGETS | insert.CAT_TARGETS | insert.FLATTEN_TARGETS
    fns |= set(insert.DATA_MOVEMENT)
    fns |= {
        F.relu,
        torch.relu,
        F.relu6,
        F.hardtanh,
        F.gelu,
        F.dropout,
        F.max_pool2d,
        F.adaptive_avg_pool2d,
        torch.flatten,
        getattr,
        operator.getitem,
        torch._assert,  # a shape check some models trace (ViT): no value
        torchvision.ops.stochastic_depth,  # identity in eval (graph.insert drops it)
    }
    table: dict[str, Callable[..., Any]] = {}
    for fn in fns:
        table.setdefault(_function_name(fn), fn)
    return table


@functools.cache
def _methods() -> frozenset[str]:
    from edgeq.export.float_ops import METHODS
    from edgeq.graph import insert

    return frozenset(METHODS) | insert.DATA_MOVEMENT_METHODS | {"flatten", "view", "reshape", "dim"}


def _module_class(name: str) -> type[nn.Module] | None:
    """A torch.nn module class by its name (``Conv2d``), or None."""
    cls = getattr(nn, name, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and cls.__module__.startswith("torch.nn.modules.")
        and cls not in (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)
    ):
        return cls
    return None


# ---------------------------------------------------------------- values


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.Size | tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str | int) for k in value):
            raise ArchitectureError(f"{where}: a dict with keys other than str or int")
        return {"dict": [[k, _encode(v, where)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in _DTYPES:
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ArchitectureError(f"{where}: a value of type {type(value).__name__} ({show(value)})")


def _decode(value: Any, at: At, nodes: dict[str, fx.Node] | None, depth: int = 0) -> Any:
    if depth > 32:
        at.fail("nested too deeply")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_decode(v, at.child(str(i)), nodes, depth + 1) for i, v in enumerate(value)]
    if not isinstance(value, dict) or len(value) != 1:
        at.bad(value, "a JSON value or a one-key tagged object")
    (tag, inner), sub = next(iter(value.items())), at.child(next(iter(value)))
    if tag == "node":
        if nodes is None:
            sub.bad(inner, "no node reference here")
        if not isinstance(inner, str) or inner not in nodes:
            sub.bad(inner, "the name of an earlier node")
        return nodes[inner]
    if tag == "float":
        if inner not in ("nan", "inf", "-inf"):
            sub.bad(inner, "'nan', 'inf' or '-inf'")
        return float(inner)
    if tag == "tuple":
        if not isinstance(inner, list):
            sub.bad(inner, "a list")
        return tuple(_decode(v, sub.child(str(i)), nodes, depth + 1) for i, v in enumerate(inner))
    if tag == "dict":
        return _decode_pairs(inner, sub, nodes, depth)
    if tag == "slice":
        if not isinstance(inner, list) or len(inner) != 3:
            sub.bad(inner, "[start, stop, step]")
        return slice(*(_decode(v, sub, nodes, depth + 1) for v in inner))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "dtype":
        if inner not in _DTYPES:
            sub.bad(inner, f"one of {', '.join(_DTYPES)}")
        return _DTYPES[inner]
    if tag == "device":
        if inner not in ("cpu", "meta") and not re.fullmatch(r"cuda(:\d{1,3})?", str(inner)):
            sub.bad(inner, "'cpu' or 'cuda[:N]'")
        return torch.device(inner)
    if tag == "memory_format":
        if inner not in _MEMORY_FORMATS:
            sub.bad(inner, f"one of {', '.join(_MEMORY_FORMATS)}")
        return _MEMORY_FORMATS[inner]
    at.bad(value, "a known tag (node, float, tuple, dict, slice, ellipsis, dtype, ...)")


def _decode_pairs(
    value: Any, at: At, nodes: dict[str, fx.Node] | None, depth: int
) -> dict[str | int, Any]:
    if not isinstance(value, list) or not all(
        isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], str | int) for kv in value
    ):
        at.bad(value, "a list of [key, value] pairs")
    return {k: _decode(v, at.item(str(k)), nodes, depth + 1) for k, v in value}


# ---------------------------------------------------------------- modules


def _init_parameters(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """The named constructor parameters of ``cls``. A class that forwards ``*args,
    **kwargs`` (``nn.LSTM``) takes its base's (``RNNBase``), less the ``mode`` the
    subclass passes itself."""
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters  # type: ignore[misc]
        named = {
            k: p
            for k, p in params.items()
            if k not in _SKIPPED_INIT and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        if named or not any(p.kind is p.VAR_POSITIONAL for p in params.values()):
            if klass is nn.RNNBase and cls is not nn.RNNBase:
                named.pop("mode", None)
            return named
    return {}


def _init_arguments(m: nn.Module, where: str) -> dict[str, Any]:
    """The constructor arguments that rebuild ``m``, read from its attributes."""
    cls = type(m)
    if _module_class(cls.__name__) is not cls:
        raise ArchitectureError(
            f"{where}: {cls.__module__}.{cls.__qualname__} is not a torch.nn module "
            "(an artifact records torch.nn modules only)"
        )
    args: dict[str, Any] = {}
    for name, p in _init_parameters(cls).items():
        if name in m._parameters or name in m._buffers:  # bias=True: a tensor is present
            value: Any = (m._parameters.get(name, m._buffers.get(name))) is not None
        elif hasattr(m, name) and not isinstance(getattr(m, name), torch.Tensor | nn.Module):
            value = getattr(m, name)
        elif p.default is not p.empty:
            continue  # not kept as an attribute: the default, checked by the rebuild
        else:
            raise ArchitectureError(f"{where}: {cls.__name__}({name}=...) is not recorded")
        args[name] = _encode(value, f"{where}.{name}")
    return args


def _attributes(m: nn.Module) -> dict[str, Any]:
    """What a module's forward reads besides its tensors: public plain attributes."""
    return {
        k: v
        for k, v in vars(m).items()
        if not k.startswith("_") and k != "training" and not isinstance(v, torch.Tensor)
    }


def _tensors(m: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype, bool]]:
    out = {k: (tuple(v.shape), v.dtype, True) for k, v in m.named_parameters()}
    out.update({k: (tuple(v.shape), v.dtype, False) for k, v in m.named_buffers()})
    return out


# ---------------------------------------------------------------- record


def describe(gm: fx.GraphModule, *, check: bool = True) -> dict[str, Any]:
    """The architecture record of a float GraphModule (see the module docstring).

    ``check``: rebuild from the record and compare (the default; `edgeq.save` keeps a
    record only when its rebuild is the same graph).

    Raises:
        ArchitectureError: a node, module or value that is not recorded as data, or a
            record that does not rebuild the same graph (names it).
    """
    functions = {id(fn): name for name, fn in _functions().items()}
    methods = _methods()
    modules, attributes, nodes = {}, {}, []
    for node in gm.graph.nodes:
        where = f"node {node.name!r}"
        entry: dict[str, Any] = {"op": node.op, "name": node.name}
        if node.op == "call_function":
            name = functions.get(id(node.target))
            if name is None:
                raise ArchitectureError(
                    f"{where}: function {_function_name(node.target)} is not one edgeq records"
                )
            if node.target is getattr and node.args[1:2] and node.args[1] not in _GETATTR_NAMES:
                raise ArchitectureError(f"{where}: getattr(x, {node.args[1]!r})")
            entry["target"] = name
        elif node.op == "call_method":
            if node.target not in methods:
                raise ArchitectureError(f"{where}: method .{node.target}() is not recorded")
            entry["target"] = node.target
        else:
            entry["target"] = str(node.target)
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            modules[str(node.target)] = {
                "type": type(m).__name__,
                "init": _init_arguments(m, f"module {node.target!r}"),
            }
        elif node.op == "get_attr":
            t = _attr(gm, str(node.target))
            if not isinstance(t, torch.Tensor):
                raise ArchitectureError(f"{where}: get_attr of a {type(t).__name__}")
            attributes[str(node.target)] = {
                "shape": list(t.shape),
                "dtype": _encode(t.dtype, where)["dtype"],
                "parameter": isinstance(t, nn.Parameter),
            }
        entry["args"] = _encode(node.args, where)["tuple"]
        entry["kwargs"] = _encode(dict(node.kwargs), where)["dict"]
        axes = node.meta.get(AXES_META)
        if node.op == "placeholder" and axes:
            entry["dynamic_axes"] = [[int(d), str(n)] for d, n in sorted(axes.items())]
        nodes.append(entry)
    record = {
        "version": ARCHITECTURE_VERSION,
        "class_name": type(gm).__name__,
        "modules": modules,
        "attributes": attributes,
        "nodes": nodes,
    }
    if check:
        _check_rebuilds(gm, record)
    return record


def _attr(gm: nn.Module, path: str) -> Any:
    owner = gm
    *parents, leaf = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    return getattr(owner, leaf)


def _check_rebuilds(gm: fx.GraphModule, record: dict[str, Any]) -> None:
    try:
        rebuilt = rebuild(record, At("architecture"), max_numel=None)
    except ArtifactError as e:
        raise ArchitectureError(f"the record does not rebuild: {e}") from e
    again = describe(rebuilt, check=False)
    for a, b in zip(record["nodes"], again["nodes"], strict=False):
        if a != b:
            raise ArchitectureError(f"node {a['name']!r} rebuilds as {show(b)}")
    if again != record:
        raise ArchitectureError("the rebuilt graph differs from the model's")
    for path in record["modules"]:
        a, b = gm.get_submodule(path), rebuilt.get_submodule(path)
        if _tensors(a) != _tensors(b):
            raise ArchitectureError(f"module {path!r}: rebuilt with other tensors")
        if _attributes(a) != _attributes(b):
            diff = sorted(k for k in _attributes(a) if _attributes(a)[k] != _attributes(b).get(k))
            raise ArchitectureError(f"module {path!r}: rebuilt with other {diff or 'attributes'}")
    if _tensors(gm) != _tensors(rebuilt):
        raise ArchitectureError("the rebuilt graph holds other tensors")


def rebuild(record: object, at: At, *, max_numel: int | None) -> fx.GraphModule:
    """The float GraphModule of an architecture record, every tensor zero.

    Args:
        record: the ``architecture`` object of ``edgeq.json``.
        at: where it was read (for error messages).
        max_numel: refuse a record whose tensors hold more values than this (checked
            on the meta device, before any allocation); None: no bound.

    Raises:
        ArtifactError: a key that is missing, ill-typed or names something that is not
            recorded (a module class outside torch.nn, a function outside the tables),
            a module that cannot be built from its arguments, or a graph that fails.
    """
    rec = as_dict(record, at)
    version, at_v = get(rec, "version", at)
    if version != ARCHITECTURE_VERSION:
        at_v.bad(version, str(ARCHITECTURE_VERSION))
    class_name = as_str(*get(rec, "class_name", at))
    if not _NAME.fullmatch(class_name):
        at.child("class_name").bad(class_name, "a Python identifier")
    root: dict[str, Any] = {}
    modules, at_m = get(rec, "modules", at)
    for path, spec in as_dict(modules, at_m).items():
        root[_path(path, at_m)] = _module_from(spec, at_m.item(path))
    attributes, at_a = get(rec, "attributes", at)
    for path, spec in as_dict(attributes, at_a).items():
        root[_path(path, at_a)] = _tensor_from(spec, at_a.item(path))
    if max_numel is not None:
        numel = sum(
            t.numel()
            for v in root.values()
            for t in ([v] if isinstance(v, torch.Tensor) else [*v.parameters(), *v.buffers()])
        )
        if numel > max_numel:
            at.fail(
                f"its tensors hold {numel} values, more than the tensors file can store "
                f"({max_numel}): the record does not belong to this artifact"
            )
    graph = _graph_from(*get(rec, "nodes", at), root)
    try:
        gm = fx.GraphModule(root, graph, class_name)
        gm.graph.lint()
    except Exception as e:  # fx raises several types for a malformed graph
        at.fail(f"not a valid graph ({type(e).__name__}: {e})")
    gm.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*gm.parameters(), *gm.buffers()]:
            t.zero_()
    return gm.eval()


def _path(path: str, at: At) -> str:
    if not _PATH.fullmatch(path) or len(path) > 1000:
        at.bad(path, "a dotted module path")
    return path


def _module_from(spec: object, at: At) -> nn.Module:
    d = as_dict(spec, at)
    type_name = as_str(*get(d, "type", at))
    cls = _module_class(type_name)
    if cls is None:
        at.child("type").bad(type_name, "a torch.nn module class")
    init, at_init = get(d, "init", at)
    args = {
        as_str(k, at_init): _decode(v, at_init.child(k), None)
        for k, v in as_dict(init, at_init).items()
    }
    params = _init_parameters(cls)
    unknown = [k for k in args if k not in params]
    if unknown:
        at_init.child(unknown[0]).fail(f"not an argument of {type_name}")
    try:
        with torch.device("meta"):  # no memory until the sizes are checked
            return cls(**args)
    except Exception as e:  # the class validates its own arguments
        at.fail(f"{type_name}(...) cannot be built ({type(e).__name__}: {e})")


def _tensor_from(spec: object, at: At) -> torch.Tensor:
    d = as_dict(spec, at)
    shape = get(d, "shape", at)
    if not isinstance(shape[0], list) or len(shape[0]) > 8:
        shape[1].bad(shape[0], "a list of at most 8 sizes")
    sizes = [as_int(s, shape[1].child(str(i)), 0, 2**40) for i, s in enumerate(shape[0])]
    dtype = _decode({"dtype": get(d, "dtype", at)[0]}, at.child("dtype"), None)
    parameter = get(d, "parameter", at)[0]
    if not isinstance(parameter, bool):
        at.child("parameter").bad(parameter, "true or false")
    t = torch.empty(sizes, dtype=dtype, device="meta")
    return nn.Parameter(t, requires_grad=False) if parameter else t


def _graph_from(value: object, at: At, root: dict[str, Any]) -> fx.Graph:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_NODES:
        at.bad(value, f"a list of 1 to {MAX_NODES} nodes")
    functions, methods = _functions(), _methods()
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for i, raw in enumerate(value):
        at_n = at.child(str(i))
        d = as_dict(raw, at_n)
        op = as_str(*get(d, "op", at_n))
        name = as_str(*get(d, "name", at_n))
        if not _NAME.fullmatch(name) or name in nodes:
            at_n.child("name").bad(name, "a new Python identifier")
        target_raw = as_str(*get(d, "target", at_n))
        args_raw, at_args = get(d, "args", at_n)
        kwargs_raw, at_kw = get(d, "kwargs", at_n)
        if not isinstance(args_raw, list):
            at_args.bad(args_raw, "a list")
        args = tuple(_decode(v, at_args.child(str(j)), nodes) for j, v in enumerate(args_raw))
        pairs = _decode_pairs(kwargs_raw, at_kw, nodes, 0)
        kwargs = {k: v for k, v in pairs.items() if isinstance(k, str)}
        if len(kwargs) != len(pairs):
            at_kw.bad(kwargs_raw, "keyword arguments with string names")
        target: Any = target_raw
        if op == "call_function":
            if target_raw not in functions:
                at_n.child("target").bad(target_raw, "a function edgeq records")
            target = functions[target_raw]
            if target is getattr and (len(args) != 2 or args[1] not in _GETATTR_NAMES):
                at_args.bad(args_raw, f"getattr(x, one of {', '.join(_GETATTR_NAMES)})")
        elif op == "call_method":
            if target_raw not in methods:
                at_n.child("target").bad(target_raw, "a method edgeq records")
        elif op in ("call_module", "get_attr"):
            if target_raw not in root:
                at_n.child("target").bad(target_raw, "a path listed in modules / attributes")
            if isinstance(root[target_raw], nn.Module) != (op == "call_module"):
                at_n.child("target").bad(
                    target_raw, f"a {'module' if op == 'call_module' else 'tensor'}"
                )
        elif op == "placeholder":
            if not _NAME.fullmatch(target_raw):
                at_n.child("target").bad(target_raw, "an argument name")
        elif op == "output":
            if i != len(value) - 1:
                at_n.child("op").fail("the output node must be the last")
        else:
            at_n.child("op").bad(op, "an fx node op")
        node = graph.create_node(op, target, args, kwargs, name=name)
        if node.name != name:
            at_n.child("name").bad(name, "a name fx keeps (not a reserved word)")
        axes = d.get("dynamic_axes")
        if axes is not None:
            if (
                op != "placeholder"
                or not isinstance(axes, list)
                or not all(
                    isinstance(p, list)
                    and len(p) == 2
                    and type(p[0]) is int
                    and isinstance(p[1], str)
                    for p in axes
                )
            ):
                at_n.child("dynamic_axes").bad(axes, "[[dim, name], ...] on an input")
            node.meta[AXES_META] = {int(k): str(v) for k, v in axes}
        nodes[name] = node
    if value and as_dict(value[-1], at).get("op") != "output":
        at.fail("the last node must be the output")
    return graph
