"""Calibration sampling: seeded, spread evenly over the classes (property tests)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.data import DataError, describe_sample, sample_indices

labels_st = st.lists(st.integers(0, 12), max_size=80)


@settings(max_examples=200, deadline=None)
@given(labels=labels_st, n=st.integers(0, 100), seed=st.integers(0, 2**32))
def test_sample_is_deterministic_sorted_unique_and_balanced(labels, n, seed):
    idx = sample_indices(labels, n, seed)
    assert idx == sample_indices(list(labels), n, seed)  # deterministic for a seed
    assert idx == sorted(set(idx))  # ascending, no duplicates
    assert all(0 <= i < len(labels) for i in idx)
    assert len(idx) == min(n, len(labels))
    taken = Counter(labels[i] for i in idx)
    available = Counter(labels)
    # classes that still have images left got k or k+1; exhausted ones at most k+1
    open_counts = [taken[c] for c in available if taken[c] < available[c]]
    if open_counts:
        assert max(open_counts) - min(open_counts) <= 1
        assert max(taken.values(), default=0) <= min(open_counts) + 1


@settings(max_examples=50, deadline=None)
@given(labels=labels_st, n=st.integers(0, 100), seed=st.integers(0, 2**32))
def test_every_class_is_reached_before_any_gets_a_second_image(labels, n, seed):
    covered = {labels[i] for i in sample_indices(labels, n, seed)}
    assert len(covered) == min(n, len(set(labels)))


def test_one_image_per_class_is_not_the_first_classes():
    labels = list(range(1000))  # one image per class, sorted like a folder of classes
    idx = sample_indices(labels, 256, seed=0)
    assert idx != list(range(256))
    assert max(idx) > 900
    assert sample_indices(labels, 256, seed=1) != idx  # the seed matters


def test_all_indices_when_n_covers_the_set():
    assert sample_indices([3, 1, 1], 3) == [0, 1, 2]
    assert sample_indices([3, 1, 1], 10, seed=5) == [0, 1, 2]
    assert sample_indices([], 4) == []


def test_negative_n_is_an_error():
    with pytest.raises(DataError, match=r"n=-1: expected a number of images >= 0"):
        sample_indices([0, 1], -1)


def test_description_for_the_report():
    labels = [c for c in range(1000) for _ in range(2)]
    idx = sample_indices(labels, 256)
    assert describe_sample(labels, idx) == (
        "256 of 2000 images, spread over 256 of 1000 classes, seed 0"
    )
    assert describe_sample([0, 0, 1], [0, 1, 2], seed=3) == (
        "3 of 3 images, spread over 2 of 2 classes, seed 3"
    )
