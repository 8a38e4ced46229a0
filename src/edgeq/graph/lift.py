"""Lift an ATen-level graph (torch.export, TorchScript) back into module form.

An ExportedProgram keeps no ``nn.Conv2d`` or ``nn.Linear`` modules: its graph calls
``aten.conv2d(x, weight, bias, ...)`` on parameters fetched with ``get_attr``. The
rest of edgeq (BatchNorm folding, quantizer placement, the exporter) works on
modules, so this pass rebuilds them: every convolution, linear, batch norm and layer
norm becomes a module named after its parameters (``features.0.0.weight`` gives the
module ``features.0.0``, the name the user knows), and element-wise ATen ops become
the torch functions the rest of the pipeline recognises. ATen ops without a
counterpart here are kept as they are: they still run in PyTorch, and the quantizer
reports them as kept in float.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import fx, nn

aten = torch.ops.aten
# placeholder meta: the input's dynamic dimensions, {dim: axis name}, read by the exporter
AXES_META = "edgeq_dynamic_axes"


class LiftError(ValueError):
    """An ATen graph cannot be rebuilt into modules (names the node)."""


def _arg(node: fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


class _Lifter:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.lifted_names: set[str] = set()

    # ---- parameters and modules ---------------------------------------------------
    def tensor(self, node: Any, what: str, where: fx.Node) -> torch.Tensor | None:
        """The constant tensor a get_attr node fetches (None for None)."""
        if node is None:
            return None
        if not (isinstance(node, fx.Node) and node.op == "get_attr"):
            raise LiftError(
                f"node {where.name} ({where.target}): its {what} is computed, not a stored "
                "parameter; edgeq quantizes layers whose weights are parameters"
            )
        value: Any = self.gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach()

    def place(self, owner: Any, module: nn.Module, fallback: str) -> str:
        """Register ``module`` under the path its parameters had (``features.0.0``
        from ``features.0.0.weight``), or under ``fallback`` when that path is taken."""
        path = ""
        if isinstance(owner, fx.Node) and owner.op == "get_attr":
            parent, _, attr = str(owner.target).rpartition(".")
            # "attn.in_proj_weight" (nn.MultiheadAttention) names the module "attn.in_proj"
            path = parent if attr in ("weight", "running_mean") else str(owner.target)
            path = path.removesuffix("_weight")
        if not path or not self._free(path):
            base, i = fallback, 0
            path = base
            while not self._free(path):
                i += 1
                path = f"{base}_{i}"
        parent = self.root
        *parents, leaf = path.split(".")
        for part in parents:
            child = getattr(parent, part, None)
            if child is None:
                child = nn.Module()
                parent.add_module(part, child)
            parent = child
        parent.add_module(leaf, module)
        self.lifted_names.add(path)
        return path

    def _free(self, path: str) -> bool:
        """``path`` can hold a new module: nothing is there, and every module on the
        way is a plain container (not a lifted layer)."""
        obj: Any = self.root
        parts = path.split(".")
        for i, part in enumerate(parts):
            if i and ".".join(parts[:i]) in self.lifted_names:
                return False
            obj = getattr(obj, part, None)
            if obj is None:
                return True
            if i < len(parts) - 1 and type(obj) is not nn.Module:
                return False
        return False

    def call_module(self, path: str, x: Any) -> fx.Node:
        return self.graph.call_module(path, (self.env[x],))

    # ---- one ATen node ------------------------------------------------------------
    def lift(self, node: fx.Node) -> Any:
        target = node.target
        handler = _HANDLERS.get(target)  # type: ignore[arg-type]
        if handler is not None:
            out = handler(self, node)
            if out is not NotImplemented:
                return out
        return self.copy(node)

    def copy(self, node: fx.Node) -> Any:
        if node.op == "get_attr":
            value = self.tensor(node, "value", node)
            path = str(node.target)
            try:
                existing = self.root.get_submodule(path.rpartition(".")[0]) if "." in path else None
            except AttributeError:
                existing = None
            leaf = path.rpartition(".")[2]
            if existing is not None and getattr(existing, leaf, None) is not None:
                return self.graph.get_attr(path)
            safe = path.replace(".", "_")
            if isinstance(value, nn.Parameter) or value.requires_grad:
                self.root.register_parameter(safe, nn.Parameter(value.clone(), False))
            else:
                self.root.register_buffer(safe, value.clone())
            return self.graph.get_attr(safe)
        return self.graph.node_copy(node, lambda n: self.env[n])


Handler = Callable[[_Lifter, fx.Node], Any]


def _conv(lifter: _Lifter, node: fx.Node) -> Any:
    if node.target == aten.convolution.default:
        x, w, b, stride, padding, dilation, transposed, _out_pad, groups = node.args[:9]
        if transposed:
            return NotImplemented
    else:
        x, w = node.args[:2]
        b = _arg(node, 2, "bias", None)
        stride = _arg(node, 3, "stride", [1, 1])
        padding = _arg(node, 4, "padding", [0, 0])
        dilation = _arg(node, 5, "dilation", [1, 1])
        groups = _arg(node, 6, "groups", 1)
    if isinstance(padding, str):
        return NotImplemented
    weight = lifter.tensor(w, "weight", node)
    bias = lifter.tensor(b, "bias", node)
    assert weight is not None
    if weight.dim() != 4:
        return NotImplemented
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(stride),
        padding=tuple(padding),
        dilation=tuple(dilation),
        groups=groups,
        bias=bias is not None,
    )
    conv.weight = nn.Parameter(weight.clone(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return lifter.call_module(lifter.place(w, conv.eval(), "conv"), x)


def _linear(lifter: _Lifter, node: fx.Node) -> Any:
    x, w = node.args[:2]
    b = _arg(node, 2, "bias", None)
    weight = lifter.tensor(w, "weight", node)
    bias = lifter.tensor(b, "bias", node)
    assert weight is not None
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = nn.Parameter(weight.clone(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return lifter.call_module(lifter.place(w, linear.eval(), "linear"), x)


def _batch_norm(lifter: _Lifter, node: fx.Node) -> Any:
    if node.target == aten._native_batch_norm_legit_no_training.default:
        x, w, b, mean, var, _momentum, eps = node.args[:7]
    else:
        x, w, b, mean, var, training, _momentum, eps = node.args[:8]
        if training:
            return NotImplemented
    running_mean = lifter.tensor(mean, "running mean", node)
    running_var = lifter.tensor(var, "running variance", node)
    if running_mean is None or running_var is None:
        return NotImplemented
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    dims = val.dim() if isinstance(val, torch.Tensor) else 4
    cls: type[nn.BatchNorm1d | nn.BatchNorm2d]
    cls = nn.BatchNorm2d if dims == 4 else nn.BatchNorm1d
    if dims not in (2, 3, 4):
        return NotImplemented
    weight, bias = lifter.tensor(w, "weight", node), lifter.tensor(b, "bias", node)
    bn = cls(running_mean.numel(), eps=float(eps), affine=weight is not None)
    bn.running_mean.copy_(running_mean)
    bn.running_var.copy_(running_var)
    if weight is not None:
        bn.weight = nn.Parameter(weight.clone(), requires_grad=False)
        bn.bias = nn.Parameter(
            bias.clone() if bias is not None else torch.zeros_like(weight), requires_grad=False
        )
    out = lifter.call_module(lifter.place(w if w is not None else mean, bn.eval(), "bn"), x)
    if node.target == aten._native_batch_norm_legit_no_training.default:
        return (out, None, None)  # getitem(.., 0) picks the normalized tensor
    return out


def _layer_norm(lifter: _Lifter, node: fx.Node) -> Any:
    x, shape = node.args[:2]
    w, b = _arg(node, 2, "weight", None), _arg(node, 3, "bias", None)
    eps = _arg(node, 4, "eps", 1e-5)
    weight, bias = lifter.tensor(w, "weight", node), lifter.tensor(b, "bias", node)
    ln = nn.LayerNorm(list(shape), eps=float(eps), elementwise_affine=weight is not None)
    if weight is not None:
        ln.weight = nn.Parameter(weight.clone(), requires_grad=False)
        ln.bias = nn.Parameter(
            bias.clone() if bias is not None else torch.zeros_like(weight), requires_grad=False
        )
    return lifter.call_module(lifter.place(w, ln, "layer_norm"), x)


def _embedding(lifter: _Lifter, node: fx.Node) -> Any:
    """aten.embedding(weight, indices) as nn.Embedding under the table's name
    (``embeddings.word_embeddings``); padding_idx only matters for gradients."""
    weight = lifter.tensor(node.args[0], "weight", node)
    assert weight is not None
    embedding = nn.Embedding(weight.shape[0], weight.shape[1], _weight=weight.clone())
    embedding.weight.requires_grad_(False)
    return lifter.call_module(lifter.place(node.args[0], embedding, "embedding"), node.args[1])


def _drop(lifter: _Lifter, node: fx.Node) -> Any:
    """A run-time assertion torch.export inserts (dtype and device checks): no value."""
    return None


def _function(fn: Callable[..., Any], n_args: int | None = None) -> Handler:
    """The node's positional arguments handed to ``fn`` (the first ``n_args``)."""

    def handler(lifter: _Lifter, node: fx.Node) -> Any:
        args = node.args if n_args is None else node.args[:n_args]
        return lifter.graph.call_function(fn, fx.map_arg(tuple(args), lambda n: lifter.env[n]))

    return handler


def _identity(lifter: _Lifter, node: fx.Node) -> Any:
    return lifter.env[node.args[0]]


def _dropout(lifter: _Lifter, node: fx.Node) -> Any:
    if _arg(node, 2, "train", False):
        return NotImplemented
    return lifter.env[node.args[0]]


def _hardtanh(lifter: _Lifter, node: fx.Node) -> Any:
    lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    x = lifter.env[node.args[0]]
    if (lo, hi) == (0.0, 6.0):
        return lifter.graph.call_function(F.relu6, (x,))
    return lifter.graph.call_function(F.hardtanh, (x, lo, hi))


def _add(lifter: _Lifter, node: fx.Node) -> Any:
    a, b = node.args[:2]
    if _arg(node, 2, "alpha", 1) != 1 or not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return NotImplemented
    return lifter.graph.call_function(operator.add, (lifter.env[a], lifter.env[b]))


def _mul(lifter: _Lifter, node: fx.Node) -> Any:
    a, b = node.args[:2]
    return lifter.graph.call_function(operator.mul, fx.map_arg((a, b), lambda n: lifter.env[n]))


def _cat(lifter: _Lifter, node: fx.Node) -> Any:
    tensors = [lifter.env[t] for t in node.args[0]]  # type: ignore[union-attr]
    return lifter.graph.call_function(torch.cat, (tensors, _arg(node, 1, "dim", 0)))


def _adaptive_avg_pool(lifter: _Lifter, node: fx.Node) -> Any:
    size = tuple(node.args[1])  # type: ignore[arg-type]
    return lifter.graph.call_function(F.adaptive_avg_pool2d, (lifter.env[node.args[0]], size))


def _max_pool(lifter: _Lifter, node: fx.Node) -> Any:
    x, kernel = node.args[:2]
    stride = _arg(node, 2, "stride", []) or kernel
    padding = _arg(node, 3, "padding", 0)
    dilation = _arg(node, 4, "dilation", 1)
    ceil = _arg(node, 5, "ceil_mode", False)
    args = (lifter.env[x], tuple(kernel), tuple(stride), _tuple(padding), _tuple(dilation), ceil)
    return lifter.graph.call_function(F.max_pool2d, args)


def _avg_pool(lifter: _Lifter, node: fx.Node) -> Any:
    x, kernel = node.args[:2]
    stride = _arg(node, 2, "stride", []) or kernel
    args = (
        lifter.env[x],
        tuple(kernel),
        tuple(stride),
        _tuple(_arg(node, 3, "padding", 0)),
        _arg(node, 4, "ceil_mode", False),
        _arg(node, 5, "count_include_pad", True),
        _arg(node, 6, "divisor_override", None),
    )
    return lifter.graph.call_function(F.avg_pool2d, args)


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list | tuple) else v


def _flatten(lifter: _Lifter, node: fx.Node) -> Any:
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    return lifter.graph.call_function(torch.flatten, (lifter.env[node.args[0]], start, end))


def _mean(lifter: _Lifter, node: fx.Node) -> Any:
    x, dims = node.args[:2]
    keepdim = _arg(node, 2, "keepdim", False)
    return lifter.graph.call_method("mean", (lifter.env[x], list(dims), keepdim))  # type: ignore[arg-type]


def _gelu(lifter: _Lifter, node: fx.Node) -> Any:
    approximate = node.kwargs.get("approximate", "none")
    gelu = nn.GELU(approximate=str(approximate))
    return lifter.call_module(lifter.place(None, gelu, "gelu"), node.args[0])


_HANDLERS: dict[Any, Handler] = {
    aten.conv2d.default: _conv,
    aten.convolution.default: _conv,
    aten.linear.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    aten.layer_norm.default: _layer_norm,
    aten.embedding.default: _embedding,
    aten._assert_tensor_metadata.default: _drop,
    aten.relu.default: _function(F.relu, 1),
    aten.relu_.default: _function(F.relu, 1),
    aten.hardtanh.default: _hardtanh,
    aten.hardtanh_.default: _hardtanh,
    aten.hardswish.default: _function(F.hardswish, 1),
    aten.hardswish_.default: _function(F.hardswish, 1),
    aten.hardsigmoid.default: _function(F.hardsigmoid, 1),
    aten.hardsigmoid_.default: _function(F.hardsigmoid, 1),
    aten.sigmoid.default: _function(torch.sigmoid, 1),
    aten.sigmoid_.default: _function(torch.sigmoid, 1),
    aten.silu.default: _function(F.silu, 1),
    aten.silu_.default: _function(F.silu, 1),
    aten.tanh.default: _function(torch.tanh, 1),
    aten.gelu.default: _gelu,
    aten.add.Tensor: _add,
    aten.add_.Tensor: _add,
    aten.mul.Tensor: _mul,
    aten.cat.default: _cat,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten.max_pool2d.default: _max_pool,
    aten.avg_pool2d.default: _avg_pool,
    aten.flatten.using_ints: _flatten,
    aten.mean.dim: _mean,
    aten.permute.default: _function(torch.permute, 2),
    aten.dropout.default: _dropout,
    aten.dropout_.default: _dropout,
    aten.contiguous.default: _identity,  # views below become reshapes
    aten.view.default: _function(torch.reshape, 2),
    aten._unsafe_view.default: _function(torch.reshape, 2),
    aten.reshape.default: _function(torch.reshape, 2),
    aten.alias.default: _identity,
    aten.detach.default: _identity,
}


def lift_aten(gm: fx.GraphModule, out_spec: pytree.TreeSpec | None = None) -> fx.GraphModule:
    """Rebuild ``gm`` (the ``module()`` of an ExportedProgram: ATen ops on
    ``get_attr`` parameters) as a GraphModule of modules and torch functions.

    ``out_spec``: the program's output structure (``call_spec.out_spec``). Its graph
    returns a flat tuple; a structure of tuples, lists and dicts of tensors is rebuilt
    around it, so the lifted model returns what the model returned (a dict keeps its
    keys, which name the ONNX outputs). Other containers stay flat.

    Raises:
        LiftError: a layer's weight is computed rather than stored.
    """
    lifter = _Lifter(gm)
    params: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            lifter.env[node] = lifter.graph.placeholder(node.name)
        elif node.op == "get_attr":
            params.append(node)  # materialized only where a kept op uses it
            lifter.env[node] = _Deferred(lifter, node)
        elif node.op == "call_module":  # torch.export's input guards: not model code
            continue
        elif node.op == "output":
            out = node.args[0]
            if out_spec is not None and _plain_containers(out_spec):
                out = pytree.tree_unflatten(list(out), out_spec)
            elif isinstance(out, tuple | list) and len(out) == 1:
                out = out[0]
            lifter.graph.output(fx.map_arg(out, lambda n: _resolve(lifter.env[n])))
        elif node.target is operator.getitem and isinstance(lifter.env.get(node.args[0]), tuple):
            lifter.env[node] = lifter.env[node.args[0]][node.args[1]]
        else:
            env = lifter.env
            lifter.env = _ResolvingEnv(env)
            try:
                result = lifter.lift(node)
            finally:
                lifter.env = env
            if isinstance(result, fx.Node) and "stack_trace" not in result.meta:
                result.meta["stack_trace"] = node.meta.get("stack_trace")  # the model's line
            env[node] = result
    lifted = fx.GraphModule(lifter.root, lifter.graph, class_name="LiftedModel")
    lifted.graph.eliminate_dead_code()
    lifted.graph.lint()
    lifted.recompile()
    return lifted.eval()


def _plain_containers(spec: pytree.TreeSpec) -> bool:
    """A structure of tuples, lists and dicts only (leaves are the tensors)."""
    if spec.is_leaf():
        return True
    return spec.type in (tuple, list, dict) and all(_plain_containers(c) for c in spec.children())


class _Deferred:
    """A parameter fetched by get_attr: emitted into the new graph only when an op
    that was not lifted into a module uses it."""

    def __init__(self, lifter: _Lifter, node: fx.Node) -> None:
        self.lifter, self.node = lifter, node
        self.emitted: fx.Node | None = None

    def get(self) -> fx.Node:
        if self.emitted is None:
            self.emitted = self.lifter.copy(self.node)
        return self.emitted


def _resolve(value: Any) -> Any:
    return value.get() if isinstance(value, _Deferred) else value


class _ResolvingEnv(dict):  # type: ignore[type-arg]
    """The node environment, turning deferred parameters into get_attr nodes on use."""

    def __init__(self, env: dict[fx.Node, Any]) -> None:
        super().__init__()
        self.env = env

    def __getitem__(self, key: fx.Node) -> Any:
        return _resolve(self.env[key])

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        return _resolve(self.env.get(key, default))


# ops whose result depends on their first argument's dtype and device, not its values
_FACTORIES_FROM_TENSOR = {
    aten.new_zeros.default,
    aten.new_ones.default,
    aten.new_full.default,
    aten.new_empty.default,
}


def fold_constants(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """Replace every computation that does not depend on the inputs' values or batch
    size (Swin's attention masks, relative position biases gathered from their
    tables) by its value, stored as a buffer ``folded_N``. The exporter then sees
    one constant instead of in-place fills of views, which ONNX cannot express.
    """
    dynamic: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            dynamic.add(node)
            continue
        args = list(node.all_input_nodes)
        if node.target in _FACTORIES_FROM_TENSOR:
            args = [n for n in args if n is not node.args[0]]
        if node.op == "output" or any(a in dynamic for a in args):
            dynamic.add(node)
    constant = [
        n for n in gm.graph.nodes if n not in dynamic and n.op not in ("get_attr", "output")
    ]
    if not any(u in dynamic for n in constant for u in n.users):
        return gm
    interpreter = fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*example)
    folded = 0
    for node in constant:
        if not any(u in dynamic for u in node.users):
            continue
        value = interpreter.env[node]
        if not isinstance(value, torch.Tensor):
            continue  # a Python value: left to run (it is cheap and exact)
        name = f"folded_{folded}"
        folded += 1
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
        node.replace_all_uses_with(attr)
    for node in reversed(constant):  # in-place fills included: nothing reads them now
        if not node.users:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def export_and_lift(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    *,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> fx.GraphModule:
    """Capture ``model`` with torch.export, lift the ATen graph back into modules and
    fold its constants: the capture for models torch.fx traces into shape arithmetic
    the exporter cannot translate (Swin, ViT, MaxViT, Hugging Face transformers).

    ``dynamic_axes``: the dimensions that stay dynamic, by argument name, in
    torch.onnx's format (``{"input_ids": {0: "batch", 1: "sequence"}}``; one name
    is one size, shared by the inputs that carry it); None: dimension 0 of every
    input (``"batch"``). They are recorded in the placeholders' ``meta[AXES_META]``,
    where `edgeq.export_onnx` finds them. An example size of 1 on a dynamic axis is
    repeated to 2 (torch.export specializes sizes 0 and 1).

    Raises:
        LiftError: torch.export fails (names the reason), a dynamic axis names no
            argument, or a layer's weight is computed.
    """
    names = _argument_names(model, len(example))
    axes = _axes(names, example, dynamic_axes)
    example = tuple(_at_least_two(x, axes[n]) for n, x in zip(names, example, strict=True))
    # the batch is a named range as before; other axes (a sequence, bounded by the
    # position table) take the range torch.export infers
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple(
        {d: batch if a == "batch" else torch.export.Dim.DYNAMIC for d, a in axes[n].items()}
        for n in names
    )
    try:
        program = torch.export.export(model.eval(), example, dynamic_shapes=shapes)
    except Exception as e:  # torch.export raises many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise LiftError(
            f"torch.export cannot capture {type(model).__name__}: {type(e).__name__}: {first}"
        ) from e
    # fold first: a layer's weight or bias computed from parameters alone (Swin V2's
    # concatenated qkv bias) becomes a stored tensor the lift can turn into a module
    lifted = lift_aten(fold_constants(program.module(), example), program.call_spec.out_spec)
    for node in lifted.graph.nodes:
        if node.op == "placeholder" and node.name in axes:
            node.meta[AXES_META] = dict(axes[node.name])
    return lifted


def _argument_names(model: nn.Module, count: int) -> list[str]:
    params = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def _axes(
    names: list[str],
    example: tuple[torch.Tensor, ...],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
) -> dict[str, dict[int, str]]:
    if dynamic_axes is None:
        return {n: {0: "batch"} for n in names}
    unknown = sorted(set(dynamic_axes) - set(names))
    if unknown:
        raise LiftError(f"dynamic_axes names {unknown}; the model's arguments are {names}")
    return {
        n: {int(d) % x.dim(): str(a) for d, a in dynamic_axes.get(n, {}).items()}
        for n, x in zip(names, example, strict=True)
    }


def _at_least_two(x: torch.Tensor, dims: Mapping[int, str]) -> torch.Tensor:
    for d in dims:
        if x.shape[d] == 1:
            x = torch.cat([x, x], d)
    return x
