"""GPTQ's math (`edgeq.ptq.gptq`): known answers and the error it minimizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.graph.qmodules import QuantConv2d
from edgeq.ptq.gptq import gptq_levels, hessian_of_inputs, output_error
from edgeq.ptq.rounding import grouped, layer_columns
from edgeq.quant import QuantSpec, choose_qparams, dequantize, quantize

INT4 = QuantSpec(bits=4, signed=True, symmetric=True)


def _per_row_grid(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 scales per row of (groups, rows, d) weights."""
    hi = w.abs().amax(dim=2, keepdim=True)
    return choose_qparams(-hi, hi, INT4)


def _nearest(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return quantize(w, s.expand_as(w), z.expand_as(w), INT4)


def _dq(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return dequantize(q, s.expand_as(q).contiguous(), z.expand_as(q).contiguous(), INT4)


def test_with_uncorrelated_inputs_gptq_is_nearest_rounding() -> None:
    # H diagonal: a column's error cannot be cancelled by the others, nothing moves
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 6, 10, generator=g)
    h = torch.diag_embed(torch.rand(1, 10, generator=g) + 0.5)
    s, z = _per_row_grid(w)
    assert torch.equal(gptq_levels(w, h, s, z, INT4.qmin, INT4.qmax), _nearest(w, s, z))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), correlation=st.floats(0.3, 0.95))
def test_gptq_output_error_is_below_nearest_rounding_on_correlated_inputs(
    seed: int, correlation: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    d, n = 24, 400
    common = torch.randn(1, n, generator=g)
    x = correlation * common + (1 - correlation) * torch.randn(d, n, generator=g)
    h = hessian_of_inputs(x.unsqueeze(0))
    w = torch.randn(1, 8, d, generator=g)
    s, z = _per_row_grid(w)
    q = gptq_levels(w, h, s, z, INT4.qmin, INT4.qmax, damp=0.0)
    err_gptq = output_error(_dq(q, s, z), w, h)
    err_near = output_error(_dq(_nearest(w, s, z), s, z), w, h)
    assert q.min() >= INT4.qmin
    assert q.max() <= INT4.qmax
    assert err_gptq <= err_near


def test_output_error_is_the_squared_error_of_the_layer_outputs() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 30, generator=g)
    w, ref = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    direct = float(((w.double() - ref.double()) @ x.double()).pow(2).sum())
    assert output_error(w, ref, hessian_of_inputs(x)) == pytest.approx(direct, rel=1e-9)


def test_groups_are_solved_independently_in_one_batch() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 9, 200, generator=g) + 0.5 * torch.randn(3, 1, 200, generator=g)
    h = hessian_of_inputs(x)
    w = torch.randn(3, 2, 9, generator=g)
    s, z = _per_row_grid(w)
    together = gptq_levels(w, h, s, z, INT4.qmin, INT4.qmax)
    for k in range(3):
        alone = gptq_levels(w[k : k + 1], h[k : k + 1], s[k : k + 1], z[k : k + 1], -8, 7)
        assert torch.equal(together[k : k + 1], alone)


def test_an_input_that_never_varies_rounds_to_nearest_without_nan() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 6, 100, generator=g)
    x[0, 2] = 0.0  # a dead input: zero row and column in H
    h = hessian_of_inputs(x)
    w = torch.randn(1, 4, 6, generator=g)
    s, z = _per_row_grid(w)
    q = gptq_levels(w, h, s, z, INT4.qmin, INT4.qmax)
    assert torch.equal(q[..., 2], _nearest(w, s, z)[..., 2])


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"must be \(groups, rows, d\)"):
        gptq_levels(torch.zeros(4, 5), torch.zeros(5, 5), torch.ones(1), torch.zeros(1), -8, 7)


@pytest.mark.parametrize(
    ("groups", "stride", "padding"),
    [(1, 1, 1), (4, 2, 1), (8, 1, 0)],
    ids=["full", "grouped", "dw"],
)
def test_layer_columns_reproduce_the_convolution(groups: int, stride: int, padding: int) -> None:
    conv = torch.nn.Conv2d(8, 8, 3, stride=stride, padding=padding, groups=groups, bias=False)
    m = QuantConv2d(conv, QuantSpec(bits=8, granularity="per_channel", axis=0))
    x = torch.randn(2, 8, 9, 9)
    cols = layer_columns(m, x)  # (groups, d, n)
    y = grouped(m, m.weight.detach()) @ cols  # (groups, rows, n)
    ref = F.conv2d(x, conv.weight, None, stride, padding, 1, groups)
    n, c, hh, ww = ref.shape
    ref = (
        ref.reshape(n, groups, c // groups, hh * ww)
        .permute(1, 2, 0, 3)
        .reshape(groups, c // groups, -1)
    )
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
