"""AdaRound (`edgeq.ptq.adaround`): the rectified sigmoid, and learned rounding that
reconstructs a layer's output at least as well as nearest rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeq.graph.qmodules import QuantLinear
from edgeq.ptq.adaround import AdaRoundSettings, _initial_v, adaround_layer, rectified_sigmoid
from edgeq.quant import QuantSpec, quantize


def test_rectified_sigmoid_reaches_0_and_1_and_inverts() -> None:
    v = torch.tensor([-20.0, 0.0, 20.0])
    assert rectified_sigmoid(v).tolist() == [0.0, pytest.approx(0.5), 1.0]
    frac = torch.linspace(0.01, 0.99, 50)
    torch.testing.assert_close(rectified_sigmoid(_initial_v(frac)), frac, rtol=0, atol=1e-5)


def _layer(seed: int, activation: str | None = None) -> QuantLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(16, 8)
    m = QuantLinear(
        lin, QuantSpec(bits=3, granularity="per_channel", axis=0), activation=activation
    )
    m.freeze_weight()
    return m


@pytest.mark.parametrize("activation", [None, "relu"])
def test_learned_levels_reconstruct_better_than_nearest(activation: str | None) -> None:
    m = _layer(0, activation)
    g = torch.Generator().manual_seed(1)
    # correlated inputs: rounding errors can cancel, so learned rounding has room
    x = torch.randn(256, 16, generator=g) + torch.randn(256, 1, generator=g)
    before = m.weight.detach().clone()
    nearest = quantize(before, m.weight_scale, m.weight_zero_point, m.weight_spec)
    row = adaround_layer(m, list(x.split(64)), AdaRoundSettings(steps=300, batch=64))
    assert row["kept_nearest"] == 0.0
    assert row["learned"] < 0.8 * row["nearest"]
    levels = m.weight_levels()
    floor = torch.floor(before / m.weight_scale.reshape(-1, 1))
    # every weight went down or up to a neighbour of its float value, and some differ
    assert bool(((levels == floor) | (levels == floor + 1)).all())
    assert int((levels != nearest).sum()) > 0


def test_adaround_is_deterministic() -> None:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    runs = []
    for _ in range(2):
        m = _layer(3)
        adaround_layer(m, [x], AdaRoundSettings(steps=50, batch=16, seed=5))
        runs.append(m.weight_levels())
    assert torch.equal(runs[0], runs[1])


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="steps and batch >= 1"):
        AdaRoundSettings(steps=0)
