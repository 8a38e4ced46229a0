"""Quantization-aware training: start from PTQ, train the fake-quantized model.

    qmodel = edgeq.prepare_qat(model, calib_batches, edgeq.PTQConfig(weight=...))
    ... train qmodel.module (gradients reach weights, biases and every scale) ...
    edgeq.convert(qmodel)          # the integer-exact simulation, for export and save

`prepare_qat` runs the whole PTQ pipeline (calibration, percentile search, bias
correction) so training starts from its ranges; the observers are then frozen for
good and the scales become learned step sizes (LSQ, Esser et al. 2019). BatchNorm is
folded into the conv weights before quantization, so QAT trains the folded weights
(the deployed ones; Krishnamoorthi 2018 section 3.2 trains them too, with frozen
statistics, which folding gives by construction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from edgeq.graph.qmodules import ActivationQuantizer, _WeightQuantMixin
from edgeq.graph.states import convert as convert_module
from edgeq.graph.states import to_training
from edgeq.ptq.config import Mode, PTQConfig
from edgeq.ptq.static import QuantizedModel, quantize
from edgeq.quant import SpecError

QAT_MODES = (Mode.STATIC, Mode.WEIGHT_ONLY)


def prepare_qat(
    model: nn.Module,
    calib_data: Iterable | Callable[[nn.Module], object],
    config: PTQConfig | None = None,
    *,
    learn_scales: bool = True,
    learn_zero_points: bool = False,
    progress: bool = False,
) -> QuantizedModel:
    """Quantize ``model`` with PTQ, then put it in the training state.

    Args:
        model: a float ``nn.Module`` the PTQ pipeline takes.
        calib_data: calibration batches, as for `edgeq.quantize`.
        config: static (W8A8, W4A8, per-layer bits) or weight-only; float16 and
            dynamic have nothing to train here.
        learn_scales: train weight and activation scales with LSQ; False keeps the
            PTQ scales (plain straight-through estimator).
        learn_zero_points: train the zero points of asymmetric activations too
            (LSQ+; see `edgeq.graph.states.to_training`).
        progress: a progress bar for calibration.

    Returns:
        A `QuantizedModel` whose ``module`` trains (`QState.TRAIN`); call
        `convert` before exporting or saving it.

    Raises:
        SpecError: a mode QAT does not train.
    """
    config = config or PTQConfig()
    if config.mode not in QAT_MODES:
        allowed = [m.value for m in QAT_MODES]
        raise SpecError(f"mode={config.mode.value!r}: QAT trains {allowed} models")
    qmodel = quantize(model, calib_data, config, progress=progress)
    to_training(qmodel.module, learn_scales=learn_scales, learn_zero_points=learn_zero_points)
    return qmodel


def convert(qmodel: QuantizedModel | nn.Module) -> QuantizedModel | nn.Module:
    """Switch a trained model (or its module) to the integer-exact simulation, in
    place, and return it; see `edgeq.graph.states.convert`."""
    convert_module(qmodel.module if isinstance(qmodel, QuantizedModel) else qmodel)
    return qmodel


def parameter_groups(
    module: nn.Module,
    *,
    weight_decay: float,
    scale_lr: float | None = None,
    zero_point_lr: float | None = None,
) -> list[dict]:
    """The trainable parameters of a prepared model in optimizer groups: weights (with
    ``weight_decay``), the learned scales (no decay, which would shrink the steps;
    their own learning rate ``scale_lr`` when given) and the rest (biases, and any
    extra modules' such as distillation adapters: no decay).

    Why a learning rate of their own: Adam moves every parameter by about its
    learning rate per step, whatever its magnitude. A weight scale is ~1e-3 to 1e-2
    and weights ~1e-2 to 1: at the weights' rate a scale would halve in a few dozen
    steps (or turn negative), so scales usually train at 1e-2 of it."""
    zero_points = {
        id(m.zero_point_float) for m in module.modules() if isinstance(m, ActivationQuantizer)
    }
    scales = {id(m.scale) for m in module.modules() if isinstance(m, ActivationQuantizer)} | {
        id(m.weight_scale) for m in module.modules() if isinstance(m, _WeightQuantMixin)
    }
    decay: list[nn.Parameter] = []
    scale: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    zps: list[nn.Parameter] = []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if id(p) in zero_points:
            zps.append(p)
        elif id(p) in scales:
            scale.append(p)
        else:
            (decay if p.ndim > 1 else rest).append(p)
    scale_group: dict = {"params": scale, "weight_decay": 0.0}
    if scale_lr is not None:
        scale_group["lr"] = scale_lr
    groups = [{"params": decay, "weight_decay": weight_decay}, scale_group]
    groups.append({"params": rest, "weight_decay": 0.0})
    zp_group: dict = {"params": zps, "weight_decay": 0.0}
    if zero_point_lr is not None:
        zp_group["lr"] = zero_point_lr
    groups.append(zp_group)
    return [g for g in groups if g["params"]]
