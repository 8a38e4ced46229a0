"""Static post-training quantization: capture, fold, place quantizers, calibrate, freeze."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from edgeq.graph.capture import capture
from edgeq.graph.fold_bn import fold_batchnorm
from edgeq.graph.insert import PlacementReport, prepare
from edgeq.graph.qlstm import QuantLSTM
from edgeq.graph.qmodules import (
    QUANT_MODULES,
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
)
from edgeq.ptq.bias_correction import BIAS_CORRECTION_IMAGES, correct_biases
from edgeq.ptq.config import Mode, PTQConfig, Target
from edgeq.ptq.range_search import (
    Batch,
    best_percentile,
    first_images,
    run_batch,
    search_percentile,
)
from edgeq.ptq.rounding import ROUNDING_IMAGES, Rounding, round_weights
from edgeq.quant import QuantInputError


@dataclass
class QuantizedModel:
    """The result: ``module`` simulates the integer model; ``float_module`` is the same
    graph (BatchNorm folded) in float, for the FP32 baseline export (None when loaded
    from a packed artifact); ``source`` records how to rebuild the architecture
    (``model.edgeq_source``, set by `edgeq.load_model`), needed by `edgeq.save`."""

    module: fx.GraphModule
    float_module: fx.GraphModule | None
    config: PTQConfig
    placement: PlacementReport
    seconds: float
    source: dict | None = None
    # what calibration chose ("activation_percentile", "percentile_search_sqnr_db":
    # {candidate: output SQNR against float}, "bias_corrected_layers", ...) and how
    # long each phase took ("seconds"); empty when nothing was calibrated
    calibration: dict = field(default_factory=dict)
    # the float graph as data (`edgeq.artifact.architecture`), when loaded from an
    # artifact that recorded it: saving again writes it back
    architecture: dict | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


def _batches(data: Iterable, n_inputs: int) -> Iterator[Batch]:
    """Calibration items as model inputs. One-input models: a tensor, or ``(x, label)``
    (the label is ignored). Models with ``n_inputs`` > 1: a tuple of that many tensors
    (more items, such as a label, are ignored)."""
    for i, item in enumerate(data):
        if n_inputs == 1:
            x = item[0] if isinstance(item, tuple | list) and item else item
            if not isinstance(x, torch.Tensor):
                raise QuantInputError(
                    f"calibration item {i}: expected a tensor or an (x, label) tuple, got "
                    f"{type(x).__name__}"
                )
            yield x
            continue
        if not isinstance(item, tuple | list) or len(item) < n_inputs:
            raise QuantInputError(
                f"calibration item {i}: the model takes {n_inputs} inputs, so each item is a "
                f"tuple of {n_inputs} tensors (got {type(item).__name__}"
                + (f" of {len(item)}" if isinstance(item, tuple | list) else "")
                + "); or pass a function that runs the model: lambda m: [m(a, b) for ...]"
            )
        args = tuple(item[:n_inputs])
        bad = [type(a).__name__ for a in args if not isinstance(a, torch.Tensor)]
        if bad:
            raise QuantInputError(f"calibration item {i}: inputs must be tensors, got {bad}")
        yield args


def quantizable_layers(gm: fx.GraphModule) -> dict[str, nn.Module]:
    """The layers of a captured graph that have a quantized module (name -> module)."""
    modules = dict(gm.named_modules())
    return {
        str(n.target): modules[str(n.target)]
        for n in gm.graph.nodes
        if n.op == "call_module" and type(modules[str(n.target)]) in QUANT_MODULES
    }


def check_config(model: nn.Module, config: PTQConfig) -> fx.GraphModule:
    """Check ``config`` against ``model`` before any calibration: the model captures,
    every override matches a layer, per-group sizes divide the layers' channels.
    Returns the captured, BN-folded graph (for callers that inspect it).

    Raises:
        CaptureError: the model cannot be traced.
        SpecError: an override matches nothing, or a group size does not fit a layer.
    """
    gm = fold_batchnorm(capture(model))
    config.check_layers(quantizable_layers(gm))
    return gm


def rewrite(float_gm: fx.GraphModule, config: PTQConfig) -> tuple[fx.GraphModule, PlacementReport]:
    """A copy of the BN-folded graph rewritten for ``config.mode`` (quantized modules and
    quantizers placed, not yet calibrated). Shared by `quantize` and `edgeq.load`.

    Raises:
        SpecError: the config does not fit the model's layers (`PTQConfig.check_layers`).
    """
    config.check_layers(quantizable_layers(float_gm))
    gm = copy.deepcopy(float_gm)
    if config.mode is Mode.FLOAT16:  # the graph is unchanged; only values are rounded
        return gm, PlacementReport()
    static = config.mode is Mode.STATIC
    gm, report = prepare(
        gm,
        config.weight,
        config.activation if static else None,
        limit_pairs=static and config.target is Target.PORTABLE,
        layer_bits=config.layer_bits,
    )
    if config.mode is Mode.DYNAMIC:
        for m in gm.modules():
            if isinstance(m, QuantLinear):
                m.dynamic = True
            elif isinstance(m, QuantLSTM):
                m.runtime_threads = config.runtime_threads
    gm.eval()
    return gm, report


@torch.no_grad()
def quantize(
    model: nn.Module,
    calib_data: Iterable | Callable[[nn.Module], object],
    config: PTQConfig | None = None,
    *,
    progress: bool = False,
) -> QuantizedModel:
    """Quantize ``model`` with static W8A8 PTQ calibrated on ``calib_data``.

    Args:
        model: a float ``nn.Module`` (traceable with torch.fx).
        calib_data: an iterable of input batches, or a function that runs the model
            being calibrated itself. Batches of a one-input model are tensors or
            ``(x, label)`` tuples (the label is ignored); of a model with N inputs,
            tuples of N tensors (``(a, b)``; anything after them is ignored). Both keep
            the percentile search and bias correction, which replay the first
            batches. A function (``lambda m: [m(a, b) for a, b in loader]``) cannot be
            replayed: both are skipped, with a warning naming them. Unused (may be
            empty) in the weight_only, float16 and dynamic modes.
        config: `PTQConfig`; defaults are chosen to minimize accuracy loss.
        progress: show a progress bar.

    Returns:
        A `QuantizedModel` whose ``module`` is a plain nn.Module simulating the
        exported integer model.

    Raises:
        QuantInputError: empty calibration data, NaN/Inf in an activation (naming the
            layer).
        CaptureError: the model cannot be traced.
    """
    config = config or PTQConfig()
    t0 = time.perf_counter()
    source = getattr(model, "edgeq_source", None)
    float_gm = fold_batchnorm(capture(model))
    gm, report = rewrite(float_gm, config)
    if config.mode is Mode.FLOAT16:
        with torch.no_grad():
            for t in [*gm.parameters(), *gm.buffers()]:
                if t.is_floating_point():
                    t.copy_(t.half().float())  # float16-representable from now on
        return QuantizedModel(gm, float_gm, config, report, time.perf_counter() - t0, source)
    static = config.mode is Mode.STATIC
    unsupported = [f for f in report.float_ops if "by the config" not in f]
    if unsupported and static:
        msg = (
            f"{len(unsupported)} op(s) stay in float (no integer kernel edgeq can place): "
            + report.float_summary()
        )
        if config.strict:
            raise QuantInputError(msg + " (strict=True)")
        warnings.warn(msg, stacklevel=2)
    if not static:  # weight-only, dynamic: no activation ranges to calibrate
        freeze(gm)
        calibration = _round_weight_only(gm, calib_data, float_gm, config, progress)
        seconds = time.perf_counter() - t0
        return QuantizedModel(gm, float_gm, config, report, seconds, source, calibration)
    if callable(calib_data) and not isinstance(calib_data, nn.Module | torch.Tensor):
        # a function that runs the model itself (models with several inputs)
        calib_data(gm)
        quantizers = [m for m in gm.modules() if isinstance(m, ActivationQuantizer)]
        if not any(int(q.observer.batches) > 0 for q in quantizers):
            raise QuantInputError("the calibration callable did not run the model")
        freeze(gm)
        skipped = [
            what
            for what, on in (
                ("bias correction", config.bias_correction),
                ("the activation percentile search", len(config.percentile_candidates()) > 1),
            )
            if on
        ]
        if skipped:
            warnings.warn(
                f"calibration through a callable cannot be replayed: {' and '.join(skipped)} "
                "skipped (PTQConfig(bias_correction=False, percentile_search=()) says so "
                "and silences this)",
                stacklevel=2,
            )
        return QuantizedModel(gm, float_gm, config, report, time.perf_counter() - t0, source)
    n_inputs = sum(1 for n in float_gm.graph.nodes if n.op == "placeholder")
    batches: Iterable[Batch] = _batches(calib_data, n_inputs)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="calibrating", unit="batch", disable=None)
    seen: list[Batch] = []
    t_calib = time.perf_counter()
    for x in batches:
        run_batch(gm, x)
        seen.append(x)
        if config.max_calibration_batches and len(seen) >= config.max_calibration_batches:
            break
    if not seen:
        raise QuantInputError("calibration data is empty: no batch was produced")
    phases = {"capture_and_rewrite": t_calib - t0, "calibration": time.perf_counter() - t_calib}
    t = time.perf_counter()
    freeze(gm)
    phases["weight_scales"] = time.perf_counter() - t
    calibration = _refine(gm, float_gm, seen, config, phases, progress)
    calibration["seconds"] = phases
    seconds = time.perf_counter() - t0
    return QuantizedModel(gm, float_gm, config, report, seconds, source, calibration)


def _round_weight_only(
    gm: fx.GraphModule,
    calib_data: Iterable | Callable[[nn.Module], object],
    float_gm: fx.GraphModule,
    config: PTQConfig,
    progress: bool,
) -> dict:
    """Weight-only mode with learned rounding: the levels learned from the first
    calibration images (float inputs). Nothing to do with nearest rounding."""
    method = config.rounding_method()
    if method is Rounding.NEAREST:
        return {}
    if callable(calib_data) and not isinstance(calib_data, nn.Module | torch.Tensor):
        raise QuantInputError(
            f"weight.rounding={method.value} replays calibration batches: pass them as an "
            "iterable, not a function"
        )
    n_inputs = sum(1 for n in float_gm.graph.nodes if n.op == "placeholder")
    seen: list[Batch] = []
    for x in _batches(calib_data, n_inputs):
        seen.append(x)
        if sum(len(b[0] if isinstance(b, tuple) else b) for b in seen) >= ROUNDING_IMAGES:
            break
    if not seen:
        if config.rounding is Rounding.AUTO:  # the best without images: nearest
            return {"rounding": {"method": "nearest", "why": "no calibration images"}}
        raise QuantInputError(
            f"weight.rounding={method.value} learns from calibration images, and none was "
            "given (nearest rounding needs none)"
        )
    t = time.perf_counter()
    rows = round_weights(gm, first_images(seen, ROUNDING_IMAGES), method, progress=progress)
    return {
        "rounding": {"method": method.value, "layers": rows},
        "seconds": {"rounding": time.perf_counter() - t},
    }


def _refine(
    gm: fx.GraphModule,
    float_gm: fx.GraphModule,
    seen: list[Batch],
    config: PTQConfig,
    phases: dict[str, float],
    progress: bool = False,
) -> dict:
    """After calibration: the activation percentile search, then bias correction, on
    the first calibration batches. Returns what they chose (`QuantizedModel.calibration`)
    and adds their durations to ``phases``."""
    calibration: dict = {}
    candidates = config.percentile_candidates()
    t = time.perf_counter()
    if len(candidates) > 1:
        scores = search_percentile(
            gm,
            float_gm,
            first_images(seen),
            candidates,
            lambda p: refreeze_activations(gm, percentile=p),
        )
        calibration["activation_percentile"] = best_percentile(scores)
        calibration["percentile_search_sqnr_db"] = scores
        phases["percentile_search"] = time.perf_counter() - t
    method = config.rounding_method()
    if method is not Rounding.NEAREST:
        t = time.perf_counter()
        rows = round_weights(gm, first_images(seen, ROUNDING_IMAGES), method, progress=progress)
        calibration["rounding"] = {"method": method.value, "layers": rows}
        phases["rounding"] = time.perf_counter() - t
    if config.bias_correction:
        t = time.perf_counter()
        batches = first_images(seen, BIAS_CORRECTION_IMAGES)
        calibration["bias_corrected_layers"] = correct_biases(gm, batches, float_gm)
        calibration["bias_correction_images"] = sum(
            len(x[0] if isinstance(x, tuple) else x) for x in batches
        )
        phases["bias_correction"] = time.perf_counter() - t
    return calibration


def freeze(gm: fx.GraphModule) -> None:
    """Turn observers into fixed (scale, zero point) and choose the weights' scales
    (layers read their quantizers' parameters through `bind_quantizers`' references)."""
    modules = dict(gm.named_modules())
    for m in modules.values():
        if isinstance(m, ActivationQuantizer):
            m.freeze()
    for node in gm.graph.nodes:
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(m, QuantLSTM):
            m.freeze_weights()
        elif isinstance(m, QuantConv2d | QuantLinear):
            m.freeze_weight()


def refreeze_activations(gm: fx.GraphModule, *, percentile: float) -> None:
    """Activation ranges from another percentile of the histograms already collected;
    every layer and integer op sees them (they share the quantizers); weight scales
    stay."""
    for m in gm.modules():
        if isinstance(m, ActivationQuantizer):
            m.freeze(percentile)
