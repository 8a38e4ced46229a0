"""Capture a model as a torch.fx GraphModule.

Why torch.fx and not torch.export: fx keeps the model's own module hierarchy (names
like ``features.3.conv.0``), so per-layer overrides by name glob, BN folding and
module swapping act on the user's names, and the result is still an ``nn.Module``
that trains, evaluates and exports (DESIGN principle 1). torch.export lowers to ATen
ops and functionalizes; its graph is not a module one keeps fine-tuning.
"""

from __future__ import annotations

import traceback

from torch import fx, nn


class CaptureError(RuntimeError):
    """The model cannot be traced (data-dependent control flow, unsupported ops)."""


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if "/torch/" not in frame.filename and "/edgeq/" not in frame.filename:
            return f"{frame.filename}:{frame.lineno}: {frame.line}"
    return "unknown source line"


def capture(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode) into a GraphModule.

    Raises:
        CaptureError: tracing failed; the message names the failing operation and the
            model's source line.
    """
    model = model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError...
        raise CaptureError(
            f"cannot trace {type(model).__name__}: {type(e).__name__}: {e} "
            f"(at {_user_frame(e)}). Data-dependent Python control flow cannot be "
            "captured; wrap that part in a leaf module or make it shape-independent."
        ) from e
    gm.graph.lint()
    return gm
