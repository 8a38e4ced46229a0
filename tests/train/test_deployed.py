"""Training on the deployed values: the training forward computes what the converted
model computes, with the fake-quantized model's gradients."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import edgeq
from edgeq.graph.states import convert, to_training
from edgeq.train.deployed import train_on_deployed_values

sys.path.insert(0, str(Path(__file__).parents[1] / "ptq"))
from test_static_pipeline import _model_and_data


class _WithDropout(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.inner(x)))


def _config(bits: int) -> edgeq.PTQConfig:
    base = edgeq.PTQConfig(bias_correction=False, percentile_search=(), min_depthwise_bits=bits)
    return dataclasses.replace(base, weight=dataclasses.replace(base.weight, bits=bits))


@pytest.mark.parametrize("bits", [8, 4])
def test_training_forward_equals_the_converted_model_and_still_has_gradients(bits):
    model, x = _model_and_data()
    qm = edgeq.prepare_qat(model, [x[:8], x[8:]], _config(bits))
    convert(qm.module)
    with torch.no_grad():
        deployed = qm.module(x)
    to_training(qm.module)
    fake = qm.module(x).detach()
    handle = train_on_deployed_values(qm.module)
    out = qm.module(x)
    assert torch.equal(out.detach(), deployed)
    print(f"bits {bits}: max |fake - deployed| {float((fake - deployed).abs().max()):.3g}")
    out.square().sum().backward()
    params = [p for p in qm.module.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and bool(p.grad.abs().sum()) for p in params)
    # evaluation without gradients runs once and is the training state's own forward
    with torch.no_grad():
        assert torch.equal(qm.module(x), fake)
    handle.remove()
    assert torch.equal(qm.module(x).detach(), fake)


def test_the_gradient_is_the_fake_quantized_gradient_at_the_deployed_activations():
    """With every activation quantizer's input already on its grid the two passes agree,
    so the gradients must equal plain fake-quantized training's exactly."""
    model, x = _model_and_data()
    qm = edgeq.prepare_qat(model, [x[:8], x[8:]], _config(8))
    to_training(qm.module)
    plain = qm.module(x)
    plain.sum().backward()
    g_plain = {n: p.grad.clone() for n, p in qm.module.named_parameters() if p.grad is not None}
    qm.module.zero_grad()
    handle = train_on_deployed_values(qm.module)
    out = qm.module(x)
    out.sum().backward()
    handle.remove()
    g = {n: p.grad.clone() for n, p in qm.module.named_parameters() if p.grad is not None}
    assert g.keys() == g_plain.keys()
    # the activations differ by at most a level here and there, so the gradients are
    # close but not equal; each is the same autograd graph evaluated at nearby points
    for n in g:
        cos = torch.nn.functional.cosine_similarity(g[n].flatten(), g_plain[n].flatten(), dim=0)
        assert float(cos) > 0.9, n


def test_dropout_masks_are_the_same_in_both_passes():
    model, x = _model_and_data()
    wrapped = _WithDropout(model).eval()
    qm = edgeq.prepare_qat(wrapped, [x[:8], x[8:]], _config(8))
    to_training(qm.module)
    qm.module.train()  # dropout on
    handle = train_on_deployed_values(qm.module)
    torch.manual_seed(3)
    out = qm.module(x)
    # replay the same random numbers through the converted model alone
    handle.remove()
    convert(qm.module)
    torch.manual_seed(3)
    with torch.no_grad():
        deployed = qm.module(x)
    assert torch.equal(out.detach(), deployed)
    # and the mask really is random: another seed gives other outputs
    torch.manual_seed(4)
    with torch.no_grad():
        assert not torch.equal(qm.module(x), deployed)
