"""QAT on the real pretrained MobileNetV2: every trainable parameter gets a gradient,
and the training state's fake quantization equals the converted integer simulation
within one quantization step per layer on real images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

import edgeq
from edgeq.data import load_labeled_images
from edgeq.graph.qmodules import QuantConv2d, QuantLinear
from edgeq.graph.states import convert, to_training
from edgeq.ptq.config import LayerOverride
from edgeq.train.qat import parameter_groups

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnv2_and_images(mobilenet_v2_state_dict, imagenet_train):
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(mobilenet_v2_state_dict)
    x, _ = load_labeled_images(imagenet_train).tensors(range(0, 1000, 50))  # 20 images
    return model.eval(), x


def _w4a8() -> edgeq.PTQConfig:
    base = edgeq.PTQConfig(bias_correction=False, percentile_search=())
    return dataclasses.replace(
        base,
        weight=dataclasses.replace(base.weight, bits=4),
        overrides=(LayerOverride("features.0.0", bits=8), LayerOverride("classifier.1", bits=8)),
    )


def test_every_trainable_parameter_of_mobilenet_v2_gets_a_gradient(mnv2_and_images):
    model, x = mnv2_and_images
    qm = edgeq.prepare_qat(model, [x[:8]], _w4a8())
    logits = qm.module(x[8:12])
    torch.nn.functional.cross_entropy(logits, logits.detach().argmax(1) + 1).backward()
    params = dict(qm.module.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    zero = [n for n, p in trainable.items() if p.grad is None or not bool(p.grad.abs().sum())]
    print(f"{len(trainable)} trainable parameters; without a gradient: {zero}")
    frozen = set(params) - set(trainable)
    assert all(n.endswith("zero_point_float") for n in frozen)  # LSQ+ is opt-in
    assert sum(n.endswith(".scale") for n in trainable) >= 50  # activation scales
    assert zero == []
    groups = parameter_groups(qm.module, weight_decay=1e-5, scale_lr=1e-6)
    assert sum(len(g["params"]) for g in groups) == len(trainable)


@pytest.mark.parametrize("bits", [8, 4], ids=["w8a8", "w4a8"])
def test_fake_quantization_equals_the_integer_simulation_within_one_step(mnv2_and_images, bits):
    """Each layer gets the same input in both states (captured in the converted run),
    and its output levels (after its output quantizer) are compared."""
    model, x = mnv2_and_images
    config = _w4a8() if bits == 4 else edgeq.PTQConfig(bias_correction=False)
    qm = edgeq.prepare_qat(model, [x[:8]], config)
    convert(qm.module)
    layers = {
        n: m
        for n, m in qm.module.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear) and m.output_quant is not None
    }
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach()))
        for n, m in layers.items()
    ]
    with torch.no_grad():
        qm.module(x[8:12])
    for h in hooks:
        h.remove()
    worst, off_by_one, total = 0.0, 0, 0
    for name, m in layers.items():
        q = m.output_quant
        with torch.no_grad():
            converted = q(m(inputs[name]))
            to_training(qm.module)
            trained = q(m(inputs[name]))
            convert(qm.module)
        s, z = q.scale.detach(), q.zero_point.float()
        diff = (torch.round(trained / s) + z) - (torch.round(converted / s) + z)
        worst = max(worst, float(diff.abs().max()))
        off_by_one += int((diff != 0).sum())
        total += diff.numel()
        assert float(diff.abs().max()) <= 1.0, f"{name}: {float(diff.abs().max())} steps"
    print(
        f"W{bits}A8: {len(layers)} layers, worst {worst:.0f} step, "
        f"{off_by_one / total:.2e} of the output levels differ by one"
    )
