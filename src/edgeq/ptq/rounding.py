"""Which integer level each weight takes: nearest, or learned from calibration data.

Nearest rounding minimizes each weight's own error; the layer's output error is what
matters, and below 8 bits the two differ a lot. `round_weights` visits the quantized
conv and linear layers in graph order and re-chooses each one's levels on the grid it
already has (scales and zero points stay), with the inputs the quantized model
really gives it: those of the layers before it, already re-rounded (the sequential
scheme of GPTQ and AdaRound). The levels are written back as the layer's weight
(`write_levels`), so the result is the same representation as nearest rounding and
saves, loads and exports bit for bit like it.

Methods: `Rounding.GPTQ` (`edgeq.ptq.gptq`) and `Rounding.ADAROUND`
(`edgeq.ptq.adaround`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import fx

from edgeq.graph.qmodules import QuantConv2d, QuantLinear, fake_quantized
from edgeq.ptq.adaround import adaround_layer, write_levels
from edgeq.ptq.gptq import gptq_levels, hessian_of_inputs, output_error
from edgeq.ptq.range_search import Batch
from edgeq.quant import dequantize
from edgeq.quant.layout import expand_param

__all__ = ["ROUNDING_IMAGES", "Rounding", "layer_columns", "round_weights"]

# calibration images the levels are learned from (the first ones)
ROUNDING_IMAGES = 256
ROUNDING_CHUNK = 32  # images per piece when a solver walks the inputs


class Rounding(StrEnum):
    """How weights are rounded to their grid (`PTQConfig.rounding`)."""

    AUTO = "auto"  # GPTQ when weights have fewer than 8 bits, else nearest
    NEAREST = "nearest"
    GPTQ = "gptq"
    ADAROUND = "adaround"


Layer = QuantConv2d | QuantLinear


def layer_columns(m: Layer, x: torch.Tensor) -> torch.Tensor:
    """The input vectors each weight row multiplies, (groups, d, n): a conv's patches
    (``F.unfold``: in_channels/groups * kh * kw per group), a linear layer's rows."""
    if isinstance(m, QuantConv2d):
        kernel = tuple(m.weight.shape[2:])
        p = F.unfold(x, kernel, dilation=m.dilation, padding=m.padding, stride=m.stride)
        n, _, positions = p.shape
        p = p.reshape(n, m.groups, -1, positions).permute(1, 2, 0, 3)
        return p.reshape(m.groups, p.shape[1], n * positions)
    return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)


def grouped(m: Layer, t: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as (groups, rows per group, d)."""
    groups = m.groups if isinstance(m, QuantConv2d) else 1
    return t.reshape(groups, t.shape[0] // groups, -1)


def _grid(m: Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's scales and zero points, one per weight, grouped like `grouped`."""
    w, spec = m.weight.detach(), m.weight_spec
    s = expand_param(m.weight_scale.detach(), spec, w).expand_as(w)
    z = expand_param(m.weight_zero_point, spec, w).expand_as(w)
    return grouped(m, s), grouped(m, z)


def _layers(gm: fx.GraphModule) -> list[tuple[str, Layer]]:
    modules = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(m, QuantConv2d | QuantLinear) and m.quantized:
            out.append((str(node.target), m))
    return out


class _Sequential(fx.Interpreter):
    """One pass over the graph on all calibration images at once: at each layer to
    re-round, its input (computed by the layers before it, already re-rounded) goes
    to ``visit`` first, then the layer runs with its new levels. One forward in all,
    instead of one per layer."""

    def __init__(
        self,
        gm: fx.GraphModule,
        targets: set[str],
        visit: Callable[[str, Layer, torch.Tensor], None],
    ):
        super().__init__(gm)
        self.visit = visit
        self.targets = targets

    def call_module(self, target, args, kwargs):  # type: ignore[no-untyped-def]
        if target in self.targets:
            self.visit(str(target), self.fetch_attr(str(target)), args[0])
        return super().call_module(target, args, kwargs)


def _joined(batches: Sequence[Batch]) -> tuple[torch.Tensor, ...]:
    """The batches as one batch per input."""
    if isinstance(batches[0], tuple):
        return tuple(torch.cat([b[i] for b in batches]) for i in range(len(batches[0])))  # type: ignore[index]
    return (torch.cat(list(batches)),)  # type: ignore[arg-type]


def _gptq_layer(m: Layer, xs: list[torch.Tensor]) -> dict[str, float]:
    h = sum(hessian_of_inputs(layer_columns(m, x)) for x in xs)
    assert isinstance(h, torch.Tensor)
    spec = m.weight_spec
    w = m.weight.detach().clone()  # write_levels changes the parameter in place
    nearest = m.weight_levels()
    s, z = _grid(m)
    levels = gptq_levels(grouped(m, w), h, s, z, spec.qmin, spec.qmax)
    write_levels(m, levels)
    deployed = m.weight_levels()  # pair-limited where the target needs it
    sw, zw = m.weight_scale.detach(), m.weight_zero_point

    def error(q: torch.Tensor) -> float:
        return output_error(grouped(m, dequantize(q, sw, zw, spec)), grouped(m, w), h)

    e_near, e_learned = error(nearest), error(deployed)
    keep = not e_learned <= e_near  # NaN too
    if keep:  # rare: the damping or a pair limit undid the gain; nearest it is
        with torch.no_grad():
            m.weight.copy_(w)
    return {
        "nearest": e_near,
        "learned": e_near if keep else e_learned,
        "kept_nearest": float(keep),
    }


def round_weights(
    gm: fx.GraphModule,
    batches: Sequence[Batch],
    method: Rounding,
    *,
    progress: bool = False,
    layer_fn: Callable[[Layer, list[torch.Tensor]], dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Re-choose the levels of every quantized conv and linear layer of ``gm``.

    Args:
        gm: a calibrated quantized graph (weight scales and activation ranges fixed).
        batches: calibration batches (the first `ROUNDING_IMAGES` images are enough).
        method: `Rounding.GPTQ` or `Rounding.ADAROUND` (`Rounding.NEAREST`: nothing
            to do).
        progress: a progress bar over the layers.
        layer_fn: the per-layer solver (tests; default: the method's).

    Returns:
        Per layer: ``nearest`` and ``learned``, the squared output error over the
        calibration inputs with nearest and with the learned levels (the solver's own
        measure: ``tr(D H D^T)`` for GPTQ, the reconstruction loss for AdaRound), and
        ``seconds``.
    """
    if method is Rounding.NEAREST:
        return {}
    if layer_fn is None:
        layer_fn = _gptq_layer if method is Rounding.GPTQ else adaround_layer
    layers = _layers(gm)
    if not batches:
        raise ValueError("round_weights: no calibration batch")
    report: dict[str, dict[str, float]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(layers), desc=f"rounding ({method.value})", unit="layer", disable=None)
    solve = layer_fn

    def visit(name: str, m: Layer, x: torch.Tensor) -> None:
        t = time.perf_counter()
        xs = list(x.detach().split(ROUNDING_CHUNK))
        with torch.enable_grad():
            row = solve(m, xs)
        row["seconds"] = time.perf_counter() - t
        report[name] = row
        if bar is not None:
            bar.update()

    try:
        with torch.no_grad(), fake_quantized(gm):
            _Sequential(gm, {name for name, _ in layers}, visit).run(*_joined(batches))
    finally:
        if bar is not None:
            bar.close()
    return report
