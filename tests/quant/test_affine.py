"""Known answers, properties and bad input for uniform quantization."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.quant import (
    QuantInputError,
    QuantSpec,
    choose_qparams,
    dequantize,
    fake_quantize,
    lsq_fake_quantize,
    quantize,
    quantize_tensor,
)
from edgeq.quant.affine import lsq_fake_quantize_reference
from edgeq.quant.spec import Granularity

UINT8 = QuantSpec(bits=8, signed=False, symmetric=False)
INT8 = QuantSpec(bits=8, signed=True, symmetric=True)


# -- known answers, computed by hand ------------------------------------------------


def test_affine_qparams_known_answer():
    # range [-1, 3] over 255 steps: scale 4/255; zero point round(0 - (-1)/(4/255)) = 64
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), UINT8)
    assert float(scale) == pytest.approx(4 / 255, rel=1e-7)
    assert int(zp) == 64


def test_symmetric_qparams_known_answer():
    scale, zp = choose_qparams(torch.tensor(-2.54), torch.tensor(1.0), INT8)
    assert float(scale) == pytest.approx(2.54 / 127, rel=1e-7)
    assert int(zp) == 0


def test_quantize_known_answer_rounds_half_to_even():
    # x / 1.0: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2; saturation at the ends
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0])
    q = quantize(x, torch.tensor(1.0), torch.tensor(0), INT8)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]


def test_range_is_widened_to_include_zero():
    scale, zp = choose_qparams(torch.tensor(2.0), torch.tensor(4.0), UINT8)
    assert int(zp) == 0
    assert float(scale) == pytest.approx(4 / 255)


def test_narrow_range_clips_to_minus_127():
    spec = QuantSpec(bits=8, narrow_range=True)
    q = quantize(torch.tensor([-1000.0]), torch.tensor(1.0), torch.tensor(0), spec)
    assert q.tolist() == [-127]


def test_per_channel_equals_per_tensor_channel_by_channel():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).reshape(6, 1, 1, 1)
    spec = QuantSpec(granularity="per_channel", axis=0)
    q, scale, _zp = quantize_tensor(w, spec)
    for c in range(6):
        qc, sc, _zc = quantize_tensor(w[c], INT8)
        assert torch.equal(q[c], qc)
        assert float(scale[c]) == float(sc)


def test_per_group_scale_shape_and_partial_last_group():
    w = torch.randn(4, 10)
    spec = QuantSpec(bits=4, granularity="per_group", axis=1, group_size=4)
    _q, scale, _ = quantize_tensor(w, spec)
    assert scale.shape == (4, 3)
    for r in range(4):
        for g, cols in enumerate([slice(0, 4), slice(4, 8), slice(8, 10)]):
            assert float(scale[r, g]) == pytest.approx(float(w[r, cols].abs().max()) / 7)


# -- properties (hypothesis) ------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
specs = st.sampled_from(
    [
        UINT8,
        INT8,
        QuantSpec(bits=4, signed=True),
        QuantSpec(bits=4, signed=False, symmetric=False),
        QuantSpec(bits=2, signed=True, symmetric=False),
        QuantSpec(bits=16, signed=True),
        QuantSpec(bits=8, narrow_range=True),
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=64), specs)
def test_error_inside_range_is_at_most_half_a_step(values, spec):
    x = torch.tensor(values, dtype=torch.float32)
    scale, zp = choose_qparams(x.min(), x.max(), spec)
    x_hat = dequantize(quantize(x, scale, zp, spec), scale, zp, spec)
    lo = (spec.qmin - int(zp)) * float(scale)
    hi = (spec.qmax - int(zp)) * float(scale)
    inside = (x >= lo) & (x <= hi)
    err = (x_hat - x).abs()[inside]
    # half a step, plus float32 rounding of the scale products
    assert bool((err <= float(scale) / 2 * (1 + 1e-5) + 1e-6 * x.abs().max()).all())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-128, 127), min_size=1, max_size=64), st.floats(1e-6, 1e3))
def test_grid_values_round_trip_exactly(levels, scale_value):
    q = torch.tensor(levels, dtype=torch.int32)
    scale = torch.tensor(scale_value, dtype=torch.float32)
    x = dequantize(q, scale, torch.tensor(0), INT8)
    assert torch.equal(quantize(x, scale, torch.tensor(0), INT8), q)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=2, max_size=64), specs)
def test_quantization_is_monotone(values, spec):
    x = torch.sort(torch.tensor(values, dtype=torch.float32)).values
    scale, zp = choose_qparams(x.min(), x.max(), spec)
    q = quantize(x, scale, zp, spec)
    assert bool((q[1:] >= q[:-1]).all())


@settings(max_examples=200, deadline=None)
@given(finite, finite, specs)
def test_zero_is_exact(a, b, spec):
    lo, hi = min(a, b), max(a, b)
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), spec)
    zero = dequantize(quantize(torch.zeros(1), scale, zp, spec), scale, zp, spec)
    assert float(zero) == 0.0


def test_inputs_are_not_mutated():
    x = torch.randn(100)
    before = x.clone()
    scale, zp = choose_qparams(x.min(), x.max(), UINT8)
    fake_quantize(x, scale, zp, UINT8)
    quantize(x, scale, zp, UINT8)
    assert torch.equal(x, before)


# -- gradients --------------------------------------------------------------------------


def test_fake_quantize_straight_through_gradient_is_clipped():
    x = torch.tensor([-5.0, -0.3, 0.0, 0.7, 5.0], requires_grad=True)
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), INT8)
    y = fake_quantize(x, scale, zp, INT8)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    expected = dequantize(quantize(x.detach(), scale, zp, INT8), scale, zp, INT8)
    assert torch.equal(y.detach(), expected)


def test_lsq_forward_and_scale_gradient_match_the_paper():
    # s = 0.5, int4 signed [-8, 7]: x = 1.2 -> v = 2.4 -> grad_s = round(v) - v = -0.4;
    # x = 10 saturates at 7 -> grad_s = qmax = 7; x = -10 -> qmin = -8.
    spec = QuantSpec(bits=4, signed=True)
    x = torch.tensor([1.2, 10.0, -10.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    y = lsq_fake_quantize(x, s, torch.tensor(0), spec, grad_scale=1.0)
    assert y.detach().tolist() == pytest.approx([1.0, 3.5, -4.0])
    y[0].backward(retain_graph=True)
    assert float(s.grad) == pytest.approx(-0.4, abs=1e-6)
    assert float(x.grad[0]) == 1.0
    s.grad = None
    y[1].backward(retain_graph=True)
    assert float(s.grad) == pytest.approx(7.0)
    s.grad = None
    y[2].backward()
    assert float(s.grad) == pytest.approx(-8.0)


def test_lsq_default_gradient_scale():
    spec = QuantSpec(bits=8, signed=True)
    x = torch.full((100,), 1000.0)  # all saturate at qmax=127
    s = torch.tensor(1.0, requires_grad=True)
    lsq_fake_quantize(x, s, torch.tensor(0), spec).sum().backward()
    assert float(s.grad) == pytest.approx(100 * 127 / math.sqrt(100 * 127), rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    bits=st.sampled_from([2, 4, 8]),
    signed=st.booleans(),
    per_channel=st.booleans(),
    zero_point=st.integers(-3, 3),
)
def test_fused_lsq_equals_the_composed_reference_in_values_and_gradients(
    seed: int, bits: int, signed: bool, per_channel: bool, zero_point: int
) -> None:
    """The fused autograd function (per tensor / per channel) computes the composed
    reference's forward bit for bit and its gradients (to x and to the scales), with
    values exactly on rounding ties and on the clipping limits included (a value that
    rounds onto qmin or qmax is inside: its gradient passes)."""
    g = torch.Generator().manual_seed(seed)
    spec = QuantSpec(
        bits=bits,
        signed=signed,
        granularity=Granularity.PER_CHANNEL if per_channel else Granularity.PER_TENSOR,
        axis=1 if per_channel else None,
    )
    scale = (torch.rand(3 if per_channel else (), generator=g) + 0.05).requires_grad_(True)
    zp = torch.full(scale.shape, zero_point, dtype=torch.int32)
    x = torch.randn(2, 3, 4, 5, generator=g) * 6 * float(scale.detach().max())
    view = [1, -1, 1, 1] if per_channel else []
    s_view = scale.detach().reshape(view) if per_channel else scale.detach()
    x[0, :, 0, :2] = 2.5 * s_view.reshape(-1, 1) if per_channel else 2.5 * s_view  # a tie
    x[1, :, 1, 0] = (spec.qmax - zero_point) * s_view.reshape(-1)  # on the upper limit
    x.requires_grad_(True)
    upstream = torch.randn(x.shape, generator=g)

    def run(fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs = x.detach().clone().requires_grad_(True)
        ss = scale.detach().clone().requires_grad_(True)
        y = fn(xs, ss, zp, spec)
        (y * upstream).sum().backward()
        return y.detach(), xs.grad, ss.grad

    y, gx, gs = run(lsq_fake_quantize)
    y_ref, gx_ref, gs_ref = run(lsq_fake_quantize_reference)
    assert torch.equal(y, y_ref)
    # the reference's d/dx is (g * s) / s, the fused one g: equal up to the last bit
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=0.0)
    assert torch.equal(gx != 0, gx_ref != 0)  # the same straight-through mask
    torch.testing.assert_close(gs, gs_ref, rtol=1e-5, atol=1e-6)


def test_fused_lsq_gradients_pass_gradcheck() -> None:
    """Finite differences (float64, away from rounding steps) against the fused
    backward: the scale gradient of the saturated part and the straight-through one."""
    spec = QuantSpec(bits=4, signed=True, granularity=Granularity.PER_CHANNEL, axis=0)
    s = torch.tensor([0.5, 0.25], dtype=torch.float64, requires_grad=True)
    zp = torch.zeros(2, dtype=torch.int32)
    # saturated values only: out = qmax * s there, smooth in s (rounding has zero
    # derivative almost everywhere, so only saturation is checkable numerically)
    x = torch.tensor([[9.0, -9.0, 20.0], [5.0, -5.0, 7.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda scale: lsq_fake_quantize(x, scale, zp, spec, grad_scale=1.0), (s,)
    )


# -- degenerate and bad input -----------------------------------------------------------


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(torch.zeros(10), id="all-zero"),
        pytest.param(torch.full((10,), 3.25), id="constant-positive"),
        pytest.param(torch.full((10,), -7.0), id="constant-negative"),
        pytest.param(torch.tensor([0.125]), id="one-element"),
        pytest.param(torch.tensor([1e-38, -1e-39, 1e-45]), id="subnormals"),
        pytest.param(torch.tensor([-3e38, 1e-30, 3e38]), id="huge-range"),
    ],
)
@pytest.mark.parametrize("spec", [UINT8, INT8], ids=["uint8", "int8"])
def test_degenerate_tensors_quantize_to_finite_values(x, spec):
    q, scale, zp = quantize_tensor(x, spec)
    x_hat = dequantize(q, scale, zp, spec)
    assert torch.isfinite(x_hat).all()
    assert float(scale) > 0
    if x.abs().max() > 0 and x.abs().max() == x.abs().min() and x.numel() > 1:
        # a constant tensor lands on a grid point at the end of its range
        assert torch.allclose(x_hat, x, rtol=1e-6)


def test_all_zero_tensor_is_exact():
    q, scale, zp = quantize_tensor(torch.zeros(5), UINT8)
    assert float(scale) == 1.0
    assert torch.equal(dequantize(q, scale, zp, UINT8), torch.zeros(5))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        pytest.param(torch.tensor([1.0, float("nan")]), r"weight: holds 1 NaN and 0 Inf", id="nan"),
        pytest.param(
            torch.tensor([float("inf"), -float("inf")]), r"weight: holds 0 NaN and 2 Inf", id="inf"
        ),
        pytest.param(torch.empty(0, 3), r"weight: empty tensor \(shape \(0, 3\)\)", id="empty"),
        pytest.param(
            torch.tensor([1, 2]), r"weight: dtype torch.int64 is not floating point", id="int"
        ),
        pytest.param(torch.tensor([1 + 2j]), r"weight: complex dtype", id="complex"),
    ],
)
def test_bad_tensors_are_rejected_naming_the_tensor(x, match):
    with pytest.raises(QuantInputError, match=match):
        quantize_tensor(x, INT8, name="weight")


def test_quantize_rejects_nan_input():
    with pytest.raises(QuantInputError, match="quantize input: holds 1 NaN"):
        quantize(torch.tensor([float("nan")]), torch.tensor(1.0), torch.tensor(0), INT8)


def test_choose_qparams_rejects_reversed_range():
    with pytest.raises(ValueError, match="min_val > max_val"):
        choose_qparams(torch.tensor(1.0), torch.tensor(-1.0), INT8)


def test_lsq_passes_the_gradient_of_values_that_round_onto_a_limit():
    # uint8-style [0, 3], s = 0.5: 0.2 rounds onto qmin = 0 and 1.6 onto qmax = 3; both
    # lie inside the range, so their gradient passes; 2.0 (v = 4) saturates
    spec = QuantSpec(bits=2, signed=False)
    x = torch.tensor([0.2, 1.6, 2.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    lsq_fake_quantize(x, s, torch.tensor(0), spec, grad_scale=1.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]
    # d/ds: (0 - 0.4) + (3 - 3.2) + 3 (saturated at qmax)
    assert float(s.grad) == pytest.approx(-0.4 - 0.2 + 3.0, abs=1e-6)


def test_a_learned_zero_point_gets_the_lsq_plus_gradient_known_answer():
    """d out / d z: 0 for values inside the range, -s where they saturate, times the
    gradient scale; the forward uses round(z)."""
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    s = torch.tensor(0.5)
    z = torch.tensor(10.4, requires_grad=True)
    x = torch.tensor([-20.0, -4.0, 0.0, 3.0, 200.0])  # levels -30, 2, 10, 16, 410
    y = lsq_fake_quantize(x, s, z, spec, grad_scale=0.25)
    ref = fake_quantize(x, s, torch.tensor(10), spec)
    assert torch.equal(y.detach(), ref)
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    # saturated: x=-20 (level 0) and x=200 (level 255): -(1 + 5) * s * 0.25
    assert float(z.grad) == pytest.approx(-(1.0 + 5.0) * 0.5 * 0.25)
