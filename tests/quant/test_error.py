"""SQNR: the one definition of quantization error (known answers and properties)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgeq.quant import sqnr_db
from edgeq.quant.error import ratio_db, signal_and_noise


def test_known_answers():
    assert sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])) == math.inf
    # signal 25, noise 0.25 -> 20 dB
    assert sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.5, 4.0])) == 20.0
    assert sqnr_db(np.array([3.0, 4.0]), np.array([3.5, 4.0])) == 20.0  # arrays too
    assert ratio_db(0.0, 1.0) < -2000  # a zero signal: very negative, no math error


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=32), st.floats(1e-3, 10.0))
def test_scaling_both_leaves_the_ratio_and_sums_add_up(values, k):
    ref = torch.tensor(values, dtype=torch.float64)
    assume(float((ref**2).sum()) > 1e-6)  # a zero signal is clamped, not scaled
    approx = ref + 0.1
    assert math.isclose(sqnr_db(k * ref, k * approx), sqnr_db(ref, approx), abs_tol=1e-9)
    s1, n1 = signal_and_noise(ref[:1], approx[:1])
    s2, n2 = signal_and_noise(ref[1:], approx[1:])
    assert math.isclose(ratio_db(s1 + s2, n1 + n2), sqnr_db(ref, approx), abs_tol=1e-9)
