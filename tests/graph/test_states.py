"""The two states of a quantized model: training (fake quantization with STE/LSQ
gradients) and converted (integer-exact), switched by one call each."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgeq
from edgeq.graph.qmodules import (
    ActivationQuantizer,
    QState,
    QuantAdd,
    QuantConv2d,
    QuantGlobalAvgPool,
    QuantLinear,
)
from edgeq.graph.states import StateError, convert, to_training, training_modules
from edgeq.quant import QuantSpec, choose_qparams, dequantize, quantize
from edgeq.train.qat import parameter_groups

sys.path.insert(0, str(Path(__file__).parents[1] / "ptq"))
from test_static_pipeline import _model_and_data

UINT8 = QuantSpec(bits=8, signed=False, symmetric=False)


def _frozen_quantizer(lo: float, hi: float) -> ActivationQuantizer:
    q = ActivationQuantizer(UINT8, name="q")
    s, z = choose_qparams(torch.tensor(lo), torch.tensor(hi), UINT8)
    with torch.no_grad():
        q.scale.copy_(s)
        q.zero_point.copy_(z)
    q.observing = False
    return q


def test_quantizer_states_compute_the_same_values_and_only_training_has_gradients():
    q = _frozen_quantizer(-1.0, 3.0)
    x = torch.linspace(-2.0, 4.0, 301)
    exact = q(x)
    s, z = q.scale.detach(), q.zero_point
    assert torch.equal(exact, dequantize(quantize(x, s, z, UINT8), s, z, UINT8))
    to_training(q)
    xg = x.clone().requires_grad_(True)
    y = q(xg)
    assert torch.equal(y.detach(), exact)  # LSQ's forward is QDQ bit for bit
    y.sum().backward()
    # clipped straight-through estimator: 1 where the rounded level is inside the grid,
    # 0 where it saturates (exactly on the first or last level: either)
    level = torch.round(x / s) + z
    inside, outside = (level > 0) & (level < 255), (level < 0) | (level > 255)
    assert int(inside.sum()) > 150
    assert int(outside.sum()) > 50
    assert bool((xg.grad[inside] == 1).all())
    assert bool((xg.grad[outside] == 0).all())
    assert q.scale.grad is not None
    assert float(q.scale.grad.abs()) > 0


def test_lsq_scale_gradient_matches_finite_differences_of_the_smoothed_loss():
    # d/ds sum((q(x) - z) s) with STE; compare with the analytic LSQ formula per element
    q = _frozen_quantizer(-1.0, 1.0)
    to_training(q)
    x = torch.tensor([0.30, -0.77, 5.0, -5.0])
    q(x).sum().backward()
    s, z = float(q.scale.detach()), int(q.zero_point)
    v = x / s
    inside = ((v.round() + z) >= 0) & ((v.round() + z) <= 255)
    per = torch.where(inside, v.round() - v, torch.where(v > 0, 255.0 - z, 0.0 - z))
    g = 1.0 / (x.numel() * 255) ** 0.5  # LSQ gradient scale, one scale for 4 elements
    assert float(q.scale.grad) == pytest.approx(float(per.sum()) * g, rel=1e-5)


def test_scale_gradient_under_ddp_equals_the_whole_batch_in_one_process(monkeypatch):
    # DDP: each of 2 processes quantizes half the batch, its loss is a mean over its
    # half, and the gradients are averaged. LSQ's gradient scale must count the whole
    # step's elements, or the averaged scale gradient is sqrt(2) times the one-process
    # gradient (found by the 2-process test: 1.41x at step 0)
    import edgeq.graph.qmodules as qmodules

    q = _frozen_quantizer(-1.0, 1.0)
    to_training(q)
    x = torch.randn(16, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 0.6
    target = torch.randn(16, 3, 5, 5, generator=torch.Generator().manual_seed(1))

    def scale_grad(batch: torch.Tensor, wanted: torch.Tensor) -> float:
        q.scale.grad = None
        ((q(batch) - wanted) ** 2).mean().backward()
        assert q.scale.grad is not None
        return float(q.scale.grad)

    whole = scale_grad(x, target)
    monkeypatch.setattr(qmodules, "processes_in_step", lambda: 2)
    halves = [scale_grad(x[:8], target[:8]), scale_grad(x[8:], target[8:])]
    assert abs(whole) > 1e-4
    assert sum(halves) / 2 == pytest.approx(whole, rel=1e-5)


def _trained_tiny(steps: int = 3, bits: int = 8, *, zero_points: bool = False):
    model, x = _model_and_data()
    cfg = edgeq.PTQConfig()
    if bits != 8:
        import dataclasses

        cfg = dataclasses.replace(cfg, weight=dataclasses.replace(cfg.weight, bits=bits))
    qm = edgeq.prepare_qat(model, [x[:8], x[8:]], cfg, learn_zero_points=zero_points)
    groups = parameter_groups(qm.module, weight_decay=0.0, scale_lr=1e-5, zero_point_lr=0.3)
    opt = torch.optim.Adam(groups, lr=1e-3)
    target = model(x).detach()
    for _ in range(steps):
        opt.zero_grad()
        ((qm.module(x) - target) ** 2).mean().backward()
        opt.step()
    return qm, model, x


def test_every_parameter_of_a_prepared_model_gets_a_gradient():
    model, x = _model_and_data()
    qm = edgeq.prepare_qat(model, [x[:8], x[8:]])
    assert training_modules(qm.module)
    qm.module(x).square().mean().backward()
    params = {n: p for n, p in qm.module.named_parameters() if p.requires_grad}
    assert any(n.endswith(".scale") for n in params)  # activation scales are parameters
    missing = [n for n, p in params.items() if p.grad is None or not bool(p.grad.abs().sum())]
    assert missing == [], missing
    # only the LSQ+ zero points stay frozen by default
    frozen = [n for n, p in qm.module.named_parameters() if not p.requires_grad]
    assert frozen
    assert all(n.endswith("zero_point_float") for n in frozen)
    # the integer ops pass gradients in training (they blocked them before)
    mods = dict(qm.module.named_modules())
    assert any(isinstance(m, QuantAdd) for m in mods.values())
    assert any(isinstance(m, QuantGlobalAvgPool) for m in mods.values())


def test_scales_are_shared_by_reference_not_copied():
    model, x = _model_and_data()
    qm = edgeq.prepare_qat(model, [x[:8], x[8:]])
    gm = qm.module
    layers = [m for m in gm.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    for m in layers:
        assert m.input_quant is not None
        assert m.input_quant in list(gm.modules())  # the graph's own quantizer
    with torch.no_grad():
        layers[0].input_quant.scale.mul_(2.0)
    assert torch.equal(layers[0].input_scale, layers[0].input_quant.scale.detach())
    keys = gm.state_dict().keys()
    assert not [k for k in keys if k.endswith(("input_scale", "output_scale", "in_scale"))]
    copied = copy.deepcopy(gm)  # a deep copy keeps the sharing inside the copy
    cl = next(m for m in copied.modules() if isinstance(m, QuantConv2d | QuantLinear))
    assert cl.input_quant is not layers[0].input_quant
    assert any(cl.input_quant is m for m in copied.modules())


def test_training_and_conversion_are_explicit_states():
    qm, _, x = _trained_tiny(steps=1)
    assert {m.state for m in qm.module.modules() if hasattr(m, "state")} == {QState.TRAIN}
    with pytest.raises(StateError, match=r"call edgeq\.convert\(qmodel\) first"):
        edgeq.export_onnx(qm, "unused.onnx", x[:1])
    with pytest.raises(StateError, match="saving needs the converted model"):
        edgeq.save(qm, "unused")
    edgeq.convert(qm)
    assert training_modules(qm.module) == []
    assert not any(p.requires_grad for p in qm.module.parameters())
    # no-grad inference in training state still fake-quantizes: the state decides, not
    # requires_grad
    to_training(qm.module)
    with torch.no_grad():
        y_train = qm.module(x)
    convert(qm.module)
    with torch.no_grad():
        y_conv = qm.module(x)
    assert not torch.equal(y_train, y_conv)  # integer kernels' rounding differs
    assert float((y_train - y_conv).abs().max()) < 0.05 * float(y_conv.abs().max())


@pytest.mark.parametrize("bits", [8, 4], ids=["w8a8", "w4a8"])
def test_after_training_the_converted_model_is_bit_exact_in_onnxruntime(tmp_path, bits):
    qm, _, x = _trained_tiny(steps=5, bits=bits)
    edgeq.convert(qm)
    path = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_array_equal(got, qm(x).numpy())


def test_a_trained_model_saves_and_loads_bit_exact(tmp_path):
    qm, _, x = _trained_tiny(steps=5)
    qm.source = {"kind": "factory", "ref": "test_static_pipeline:TinyNet"}
    edgeq.convert(qm)
    # the learned scales moved away from PTQ's: the artifact must carry them
    quants = [m for m in qm.module.modules() if isinstance(m, ActivationQuantizer)]
    scales = [m.scale.detach().clone() for m in quants]
    edgeq.save(qm, tmp_path / "m")
    loaded = edgeq.load(tmp_path / "m", trust_model_file=True)
    got = [m.scale for m in loaded.module.modules() if isinstance(m, ActivationQuantizer)]
    assert all(torch.equal(a, b) for a, b in zip(scales, got, strict=True))
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))


def test_convert_refuses_a_scale_training_made_non_positive():
    model, x = _model_and_data()
    qm = edgeq.prepare_qat(model, [x])
    q = next(m for n, m in qm.module.named_modules() if isinstance(m, ActivationQuantizer))
    with torch.no_grad():
        q.scale.fill_(-0.1)
    with pytest.raises(StateError, match=r"\.scale: training left a scale that is not finite"):
        edgeq.convert(qm)


def test_prepare_qat_refuses_modes_without_anything_to_train():
    model, x = _model_and_data()
    with pytest.raises(edgeq.quant.SpecError, match="QAT trains"):
        edgeq.prepare_qat(model, [x], edgeq.PTQConfig(mode="dynamic"))


def test_weight_only_qat_trains_weights_and_their_scales():
    model, x = _model_and_data()
    qm = edgeq.prepare_qat(model, [], edgeq.PTQConfig(mode="weight_only"))
    qm.module(x).square().mean().backward()
    layers = [m for m in qm.module.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    assert all(m.weight.grad is not None and m.weight_scale.grad is not None for m in layers)


def test_learned_zero_points_move_on_the_integer_grid_and_deploy_bit_exact(tmp_path):
    """LSQ+: the asymmetric quantizers' zero points train (as floats, rounded in the
    forward); convert writes the rounded values back, ONNX Runtime runs them bit-exact,
    and the artifact carries them."""
    before, _, _ = _trained_tiny(steps=0, zero_points=True)
    start = {
        n: int(m.zero_point)
        for n, m in before.module.named_modules()
        if isinstance(m, ActivationQuantizer)
    }
    qm, model, x = _trained_tiny(steps=0, zero_points=True)
    groups = parameter_groups(qm.module, weight_decay=0.0, scale_lr=1e-5, zero_point_lr=0.3)
    opt = torch.optim.Adam(groups, lr=1e-4)
    wide = x * 3  # beyond the calibrated ranges: values saturate, zero points get a gradient
    target = model(wide).detach()
    for _ in range(8):
        opt.zero_grad()
        ((qm.module(wide) - target) ** 2).mean().backward()
        opt.step()
    quants = {n: m for n, m in qm.module.named_modules() if isinstance(m, ActivationQuantizer)}
    learned = {n for n, m in quants.items() if m.zero_point_float.requires_grad}
    assert learned  # the input and the residual sum are asymmetric
    assert learned == {n for n, m in quants.items() if m.learns_zero_point}
    assert all(float(quants[n].zero_point_float.grad.abs()) > 0 for n in learned)
    edgeq.convert(qm)
    moved = [n for n in learned if int(quants[n].zero_point) != start[n]]
    assert moved, "a zero point at lr 0.3 levels/step should move in 8 steps"
    for n in learned:
        z = quants[n].zero_point_float
        assert int(quants[n].zero_point) == int(torch.round(z.clamp(0, 255)))
    assert all(int(quants[n].zero_point) == start[n] for n in set(quants) - learned)
    path = edgeq.export_onnx(qm, tmp_path / "q.onnx", x[:1])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_array_equal(sess.run(None, {"input": x.numpy()})[0], qm(x).numpy())
    loaded = edgeq.load(edgeq.save(qm, tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))
