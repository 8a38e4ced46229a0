"""AVX2 pair saturation: the kernels' pair order, with and without padded channels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.quant.saturation import (
    from_kernel_order,
    input_channel_pad,
    kernel_order,
    limit_pairs,
    saturating_pairs,
)


@pytest.mark.parametrize(
    ("channels", "groups", "pad"),
    [(3, 1, 1), (1, 1, 3), (4, 1, 0), (6, 1, 2), (32, 1, 0), (32, 32, 0), (6, 2, 0)],
    ids=["rgb", "gray", "four", "six", "wide", "depthwise", "grouped"],
)
def test_input_channel_pad_reaches_the_symmetric_kernels_multiple(channels, groups, pad):
    assert input_channel_pad(channels, groups) == pad


def test_padding_changes_which_products_pair():
    # one 1x2 kernel position pair of 3 channels: unpadded, K = (p0c0 p0c1 p0c2 p1c0 p1c1
    # p1c2) pairs (p0c0,p0c1) (p0c2,p1c0) (p1c1,p1c2); padded after to 4 channels,
    # (p0c0,p0c1) (p0c2,0) (p1c0,p1c1) (p1c2,0); padded before, (0,p0c0) (p0c1,p0c2) ...
    w = torch.zeros(1, 3, 1, 2, dtype=torch.int32)
    w[0, :, 0, 1] = torch.tensor([100, 100, 0])  # p1: c0 and c1 large, same sign
    assert int(saturating_pairs(w)) == 0  # c0 and c1 of p1 are in different pairs
    assert int(saturating_pairs(w, (0, 1))) == 1  # padded after, they pair
    assert int(saturating_pairs(w, (1, 0))) == 0  # padded before, c1 pairs with c2


@given(
    o=st.integers(1, 3),
    i=st.integers(1, 5),
    k=st.sampled_from([(1, 1), (3, 3), (1, 2)]),
    before=st.integers(0, 3),
    after=st.integers(0, 3),
)
@settings(max_examples=60, deadline=None)
def test_kernel_order_round_trips_with_padding(o, i, k, before, after):
    q = torch.arange(o * i * k[0] * k[1], dtype=torch.int64).reshape(o, i, *k) + 1
    rows = kernel_order(q, (before, after))
    assert rows.shape == (o, k[0] * k[1] * (i + before + after))
    assert int((rows == 0).sum()) == o * k[0] * k[1] * (before + after)  # the zeros
    assert torch.equal(from_kernel_order(rows, q.shape, (before, after)), q)


@given(seed=st.integers(0, 2**16), pad=st.sampled_from([(0, 0), (0, 1), (1, 0), (2, 1)]))
@settings(max_examples=40, deadline=None)
def test_limit_pairs_leaves_no_saturating_pair_in_the_layout_it_was_given(seed, pad):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(8, 3, 3, 3, generator=g) * 60  # many same-sign pairs over 128
    q = real.round().clamp(-128, 127).to(torch.int32)
    limited = limit_pairs(q, real, pad)
    assert int(saturating_pairs(limited, pad)) == 0
    assert int((limited - q).abs().sum()) > 0 or int(saturating_pairs(q, pad)) == 0
    # only magnitudes go down, and the levels stay int8
    assert bool((limited.abs() <= q.abs()).all())
    assert int(limited.min()) >= -128
    assert int(limited.max()) <= 127


def test_linear_weights_cannot_be_padded():
    with pytest.raises(ValueError, match="input padding only for 4-d"):
        kernel_order(torch.zeros(4, 3), (0, 1))
