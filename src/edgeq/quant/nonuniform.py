"""Non-uniform levels: power-of-two (logarithmic) grids and k-means codebooks.

Both reduce to a *codebook*: a sorted list of float levels per row, an integer index
per value (the nearest level), and ``codebook[index]`` to dequantize. Fake-quant forms
pass a straight-through gradient to the input; the k-means form also gives each
centroid the summed gradient of its members (Han et al. 2015's centroid fine-tuning).
"""

from __future__ import annotations

import torch

from edgeq.quant.checks import check_float_tensor
from edgeq.quant.layout import to_rows
from edgeq.quant.spec import Granularity, QuantSpec, Scheme, SpecError

KMEANS_ITERATIONS = 30


def power_of_two_levels(bits: int, signed: bool) -> torch.Tensor:
    """Normalized levels ``{0} ∪ {±2^-k}`` in ``[-1, 1]``, sorted, ``<= 2^bits`` of them.

    Signed: one sign bit and ``2^(bits-1) - 1`` magnitudes ``1, 1/2, 1/4, ...`` plus zero.
    Unsigned: ``2^bits - 1`` magnitudes plus zero.

    Example:
        >>> power_of_two_levels(3, signed=True).tolist()
        [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    """
    n_mag = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    mags = torch.pow(2.0, -torch.arange(n_mag, dtype=torch.float64)).flip(0)
    levels = (
        torch.cat([-mags.flip(0), torch.zeros(1, dtype=torch.float64), mags])
        if signed
        else torch.cat([torch.zeros(1, dtype=torch.float64), mags])
    )
    return levels.to(torch.float32)


def nearest_level(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook entry for each value, row by row.

    Args:
        rows: ``[R, N]`` values.
        codebook: ``[R, K]`` sorted levels (or ``[K]`` shared by all rows).

    Ties between two levels go to the lower index.
    """
    if codebook.ndim == 1:
        codebook = codebook.expand(rows.shape[0], -1)
    mids = (codebook[:, 1:] + codebook[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), rows.contiguous(), right=False)


def power_of_two_codebook(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-row power-of-two codebooks scaled to each row's ``max |x|``: ``[R, K]``."""
    _check_scheme(spec, Scheme.POWER_OF_TWO)
    check_float_tensor(x, "power_of_two input")
    rows = to_rows(x.detach().to(torch.float32), spec)
    absmax = rows.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
    return absmax[:, None] * power_of_two_levels(spec.bits, spec.signed)[None, :]


def kmeans_codebook(
    x: torch.Tensor, spec: QuantSpec, *, iterations: int = KMEANS_ITERATIONS
) -> torch.Tensor:
    """Per-row k-means codebooks with ``2^bits`` sorted centroids: ``[R, K]``.

    Linear initialization between each row's min and max (Han et al. 2015 found it
    best for weights, as it keeps the rare large values), then Lloyd iterations.
    An empty cluster keeps its previous centroid. Deterministic.
    """
    _check_scheme(spec, Scheme.KMEANS)
    check_float_tensor(x, "kmeans input")
    rows = to_rows(x.detach().to(torch.float32), spec)
    k = 2**spec.bits
    lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
    steps = torch.linspace(0.0, 1.0, k)[None, :]
    centroids = lo + (hi - lo) * steps
    for _ in range(iterations):
        idx = nearest_level(rows, centroids)
        sums = torch.zeros_like(centroids).scatter_add_(1, idx, rows)
        counts = torch.zeros_like(centroids).scatter_add_(1, idx, torch.ones_like(rows))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new, _ = torch.sort(new, dim=1)
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids


def codebook_quantize(x: torch.Tensor, codebook: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Indices (int32, the shape of ``x``) of the nearest codebook level."""
    check_float_tensor(x, "codebook_quantize input", allow_empty=True)
    rows = to_rows(x.to(torch.float32), spec)
    idx = nearest_level(rows, codebook)
    return _rows_back(idx, spec, x).to(torch.int32)


def codebook_dequantize(idx: torch.Tensor, codebook: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``codebook[row, idx]`` in the shape of ``idx``."""
    rows = to_rows(idx.to(torch.int64), spec)
    values = torch.gather(codebook.expand(rows.shape[0], -1), 1, rows)
    return _rows_back(values, spec, idx)


def codebook_fake_quantize(
    x: torch.Tensor, codebook: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Snap ``x`` to its nearest level; gradients flow straight through to ``x`` and,
    summed over each cluster's members, to ``codebook``."""
    check_float_tensor(x, "codebook_fake_quantize input", allow_empty=True)
    rows = to_rows(x, spec)
    with torch.no_grad():
        idx = nearest_level(rows.detach().to(torch.float32), codebook.detach())
    snapped = torch.gather(codebook.expand(rows.shape[0], -1), 1, idx)
    out = snapped + (rows - rows.detach())
    return _rows_back(out, spec, x)


def _rows_back(rows: torch.Tensor, spec: QuantSpec, like: torch.Tensor) -> torch.Tensor:
    if spec.granularity is Granularity.PER_TENSOR:
        return rows.reshape(like.shape)
    assert spec.axis is not None
    axis = spec.axis % like.ndim
    moved = [like.shape[axis], *[s for i, s in enumerate(like.shape) if i != axis]]
    return rows.reshape(moved).movedim(0, axis)


def _check_scheme(spec: QuantSpec, scheme: Scheme) -> None:
    if spec.scheme is not scheme:
        raise SpecError(f"expected a spec with scheme={scheme.value}, got {spec.scheme.value}")
