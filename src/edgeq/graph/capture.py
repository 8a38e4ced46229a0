"""Capture a model as a torch.fx GraphModule.

Why torch.fx and not torch.export: fx keeps the model's own module hierarchy (names
like ``features.3.conv.0``), so per-layer overrides by name glob, BN folding and
module swapping act on the user's names, and the result is still an ``nn.Module``
that trains, evaluates and exports (DESIGN principle 1). torch.export lowers to ATen
ops and functionalizes; its graph is not a module one keeps fine-tuning.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch import fx, nn

from edgeq.graph.lift import AXES_META


class CaptureError(RuntimeError):
    """The model cannot be traced (data-dependent control flow, unsupported ops)."""


_LIBRARY_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).resolve().parents[1]))


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch and edgeq: the model's own line."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = str(Path(frame.filename).resolve())
        if not path.startswith(_LIBRARY_DIRS):
            return f"{frame.filename}:{frame.lineno}: {frame.line}"
    return "unknown source line"


def capture(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode) into a GraphModule.

    Raises:
        CaptureError: tracing failed; the message names the failing operation and the
            model's source line.
    """
    model = model.eval()
    tracer = fx.Tracer()
    tracer.record_stack_traces = True  # export errors name the model's source line
    tracer.proxy_buffer_attributes = True  # position_ids[:, :seq_len] slices a buffer
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError...
        raise CaptureError(
            f"cannot trace {type(model).__name__}: {type(e).__name__}: {e} "
            f"(at {_user_frame(e)}). Data-dependent Python control flow cannot be "
            "captured; wrap that part in a leaf module or make it shape-independent."
        ) from e
    name = model.__class__.__name__ if isinstance(model, nn.Module) else model.__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    if isinstance(model, fx.GraphModule):
        _keep_meta(model, gm)
    gm.graph.lint()
    return gm


def _keep_meta(source: fx.GraphModule, traced: fx.GraphModule) -> None:
    """Re-tracing a GraphModule (a torch.export capture lifted into modules) keeps what
    its nodes knew: the inputs' dynamic axes and the model's source lines."""
    before = {n.name: n for n in source.graph.nodes}
    for node in traced.graph.nodes:
        old = before.get(node.name)
        if old is None:
            continue
        if AXES_META in old.meta:
            node.meta[AXES_META] = dict(old.meta[AXES_META])
        if old.meta.get("stack_trace"):
            node.meta["stack_trace"] = old.meta["stack_trace"]
