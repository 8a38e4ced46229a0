"""Train on the values the deployed model computes (straight-through to them).

Fake quantization computes in float on the deployed grids, so each layer is within one
level of the integer simulation that ships; but one-level flips compound over depth
(MobileNetV2 W8A8: the training-state logits differ from the converted model's by up to
1.4, and QAT that improves the fake-quantized model's agreement with FP32 can lower the
converted one's). With `train_on_deployed_values` installed, every training forward of
the model runs twice:

1. the converted (integer-exact) simulation, without gradients, recording the output
   of every activation quantizer and the model's output;
2. the training (fake-quantized) forward, in which each activation quantizer's output
   and the model's output are replaced by the recorded values with a straight-through
   gradient: ``y + (deployed - y).detach()``.

So the loss is the deployed model's loss, and each layer's gradient is the fake-quantized
layer's gradient evaluated at the deployed model's activations. Both passes see the
same random numbers (dropout), so the recorded values belong to the same masks. Evaluation
forwards (``no_grad``, or a converted model) run once, unchanged. The cost is one extra
forward pass of the integer simulation per training step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgeq.graph.qmodules import ActivationQuantizer, IntegerOp, QState, _WeightQuantMixin


class DeployedValuesError(RuntimeError):
    """The deployed pass and the training pass did not run the same quantizers."""


def _quantized(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, ActivationQuantizer | IntegerOp | _WeightQuantMixin)
    ]


def _straight_through(y: object, deployed: object, where: str) -> object:
    """``deployed``'s values with ``y``'s gradient (tensors, and tuples/lists/dicts of
    them, matched by position or key)."""
    if isinstance(y, torch.Tensor):
        if not isinstance(deployed, torch.Tensor) or deployed.shape != y.shape:
            raise DeployedValuesError(f"{where}: the deployed pass gave another output")
        return y + (deployed.to(y.dtype) - y).detach()
    if isinstance(y, tuple | list) and isinstance(deployed, tuple | list):
        if len(y) != len(deployed):
            raise DeployedValuesError(f"{where}: the deployed pass gave another output")
        return type(y)(_straight_through(a, b, where) for a, b in zip(y, deployed, strict=True))
    if isinstance(y, dict) and isinstance(deployed, dict):
        return {k: _straight_through(v, deployed[k], where) for k, v in y.items()}
    return y


def _detach(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple | list):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


class _RNG:
    """The random state of the CPU and of the CUDA device in use, to replay a pass."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


class DeployedValues:
    """The hooks installed by `train_on_deployed_values`; ``remove()`` takes them off."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
        self._records: dict[int, list[torch.Tensor]] = {}
        self._phase: str | None = None  # "record" | "replay"
        self._output: object = None
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]
        self._handles += [q.register_forward_hook(self._at_quantizer) for q in self.quantizers]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _active(self) -> bool:
        return torch.is_grad_enabled() and any(
            getattr(m, "state", None) is QState.TRAIN for m in _quantized(self.model)
        )

    def _before(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._phase = None  # a pass that raised left nothing to replay
        if not self._active():
            return
        training = [m for m in _quantized(model) if m.state is QState.TRAIN]
        rng = _RNG()
        self._records = {id(q): [] for q in self.quantizers}
        self._phase = "record"
        try:
            for m in training:
                m.state = QState.CONVERTED  # type: ignore[assignment]
            with torch.no_grad():
                # `forward`, not `__call__`: these hooks stay out of the deployed pass
                self._output = _detach(model.forward(*args, **kwargs))
        except BaseException:
            self._phase = None
            raise
        finally:
            for m in training:
                m.state = QState.TRAIN  # type: ignore[assignment]
        rng.restore()
        self._phase = "replay"

    def _at_quantizer(self, q: nn.Module, args: tuple, output: torch.Tensor) -> object:
        if self._phase == "record":
            self._records[id(q)].append(output.detach())
            return None
        if self._phase != "replay":
            return None
        queue = self._records.get(id(q))
        if not queue:
            raise DeployedValuesError(
                f"{getattr(q, 'name', type(q).__name__)}: ran in the training pass but not "
                "in the deployed one"
            )
        return _straight_through(output, queue.pop(0), getattr(q, "name", "quantizer"))

    def _after(self, model: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        if self._phase != "replay":
            return None
        deployed, self._output, self._phase = self._output, None, None
        left = [q.name for q in self.quantizers if self._records.get(id(q))]
        self._records = {}
        if left:
            raise DeployedValuesError(
                f"{left[0]}: ran in the deployed pass but not in the training one"
            )
        return _straight_through(output, deployed, "the model's output")


def train_on_deployed_values(model: nn.Module) -> DeployedValues:
    """Make ``model``'s training forwards compute the deployed model's values, with the
    fake-quantized model's gradients (see the module docstring). Returns the handle;
    ``.remove()`` restores plain fake-quantized training.

    Example:
        >>> handle = train_on_deployed_values(qmodel.module)  # doctest: +SKIP
        >>> loss = criterion(qmodel.module(x), y)  # the converted model's values
        >>> handle.remove()  # doctest: +SKIP
    """
    return DeployedValues(model)
