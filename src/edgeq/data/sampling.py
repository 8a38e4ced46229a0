"""Which images calibrate: a seeded sample spread evenly over the classes.

The first N files by name of a folder sorted by class (ImageNet's validation set, or
one image per class) are the first N classes; a calibration set should see them all.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from edgeq.data.errors import DataError


def sample_indices(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """``min(n, len(labels))`` indices, spread over the classes, in ascending order.

    Round robin over the classes in a seeded order, each class's images in a seeded
    order: the numbers taken from any two classes differ by at most one, except for
    classes that ran out of images. The same labels, n and seed give the same sample.

    Raises:
        DataError: ``n`` is negative.

    Example:
        >>> sample_indices([0, 0, 0, 1, 1, 2], 3)
        [2, 3, 5]
    """
    if n < 0:
        raise DataError(f"n={n}: expected a number of images >= 0")
    if n >= len(labels):
        return list(range(len(labels)))
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    rng.shuffle(queues)
    for q in queues:
        rng.shuffle(q)
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return sorted(picked)


def describe_sample(labels: Sequence[int], indices: Sequence[int], seed: int = 0) -> str:
    """One line for reports: "256 of 1000 images, spread over 256 of 1000 classes, seed 0"."""
    classes = len(set(labels))
    covered = len({labels[i] for i in indices})
    return (
        f"{len(indices)} of {len(labels)} images, spread over {covered} of {classes} classes, "
        f"seed {seed}"
    )
