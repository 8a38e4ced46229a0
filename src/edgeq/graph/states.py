"""The two states of a quantized model, switched by one named call each.

- `to_training`: fake quantization in float arithmetic with gradients to the
  weights, biases, weight scales and activation scales (LSQ), and to the inputs.
- `convert`: the integer-exact simulation that export, evaluation and the bit-exact
  tests use. Calibration ends in this state.

Nothing else switches them: no module looks at ``requires_grad`` to decide what it
computes.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeq.graph.qmodules import ActivationQuantizer, IntegerOp, QState, _WeightQuantMixin


class StateError(RuntimeError):
    """A quantized model is in the wrong state for an operation, or holds a learned
    parameter that cannot be deployed (names the module)."""


def _quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, ActivationQuantizer | IntegerOp | _WeightQuantMixin)
    ]


def to_training(
    model: nn.Module, *, learn_scales: bool = True, learn_zero_points: bool = False
) -> nn.Module:
    """Put every quantized module of ``model`` in `QState.TRAIN`, in place.

    Args:
        model: a calibrated quantized model (``QuantizedModel.module``).
        learn_scales: the weight and activation scales are trained with LSQ's
            gradient (Esser et al. 2019); False keeps them fixed (plain STE).
        learn_zero_points: the zero points of asymmetric activation quantizers not
            pinned at 0 by a ReLU are trained too (LSQ+, Bhalgat et al. 2020), as
            floats rounded in the forward; `convert` writes the rounded values back.

    Returns:
        ``model``, whose weights, biases (and scales) require grad.

    Raises:
        StateError: an activation quantizer was never calibrated.
    """
    for name, m in _quantized_modules(model):
        if isinstance(m, ActivationQuantizer):
            if m.observing:
                raise StateError(f"{name}: not calibrated; quantize the model first")
            m.scale.requires_grad_(learn_scales)
            m.zero_point_float.requires_grad_(learn_zero_points and m.learns_zero_point)
        elif isinstance(m, _WeightQuantMixin):
            m.weight.requires_grad_(True)
            if m.bias is not None:
                m.bias.requires_grad_(True)
            m.weight_scale.requires_grad_(learn_scales and m.quantized)
        m.state = QState.TRAIN  # type: ignore[assignment]
    return model


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Put every quantized module of ``model`` in `QState.CONVERTED` (the integer-exact
    simulation), in place; parameters stop requiring grad.

    Returns:
        ``model``.

    Raises:
        StateError: a learned scale is not finite and positive (names the module).
    """
    for name, m in _quantized_modules(model):
        scales = []
        if isinstance(m, ActivationQuantizer) and not m.observing:
            scales.append(("scale", m.scale))
        elif isinstance(m, _WeightQuantMixin) and m.quantized:
            scales.append(("weight_scale", m.weight_scale))
        for what, s in scales:
            if not bool((torch.isfinite(s) & (s > 0)).all()):
                raise StateError(
                    f"{name}.{what}: training left a scale that is not finite and positive "
                    f"(min {float(s.min()):.3g}); lower the learning rate of the scales"
                )
        if isinstance(m, ActivationQuantizer) and m.zero_point_float.requires_grad:
            z = m.zero_point_float
            if not bool(torch.isfinite(z)):
                raise StateError(f"{name}.zero_point_float: training left {float(z)}")
            m.zero_point.copy_(torch.round(z.clamp(m.spec.qmin, m.spec.qmax)).to(torch.int32))
        m.state = QState.CONVERTED  # type: ignore[assignment]
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    return model


def training_modules(model: nn.Module) -> list[str]:
    """Names of the quantized modules of ``model`` in the training state."""
    return [n for n, m in _quantized_modules(model) if getattr(m, "state", None) is QState.TRAIN]


def require_converted(model: nn.Module, what: str) -> None:
    """Refuse ``what`` (an export, a save) on a model that is still training.

    Raises:
        StateError: naming the first module in the training state.
    """
    names = training_modules(model)
    if names:
        raise StateError(
            f"{what} needs the converted model, but {names[0]} (and {len(names) - 1} more) "
            "is in the training state: call edgeq.convert(qmodel) first"
        )
