"""Pack sub-byte integers into bytes and back, exactly.

Layout follows ONNX's int4/uint4 storage: element ``i`` of each byte group goes to
bits ``[i*b, (i+1)*b)`` (first element in the low bits). Signed values are stored in
two's complement within their ``b`` bits. The element count is not stored in the bytes;
callers keep the shape beside them.
"""

from __future__ import annotations

import torch

PACKABLE_BITS = (1, 2, 4, 8)


def _check_bits(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits={bits} cannot be packed into bytes; allowed {PACKABLE_BITS}")


def pack_bits(q: torch.Tensor, bits: int, *, signed: bool) -> torch.Tensor:
    """Pack integer levels into a flat uint8 tensor of ``ceil(numel * bits / 8)`` bytes.

    Raises:
        ValueError: ``bits`` is not 1, 2, 4 or 8, ``q`` is not an integer tensor, or a
            value lies outside the ``bits``-wide range.

    Example:
        >>> pack_bits(torch.tensor([1, -1, 7]), 4, signed=True).tolist()
        [241, 7]
    """
    _check_bits(bits)
    if q.is_floating_point() or q.is_complex():
        raise ValueError(f"pack_bits takes integer tensors, got {q.dtype}")
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    flat = q.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ValueError(
            f"values in [{int(flat.min())}, {int(flat.max())}] do not fit "
            f"{'signed' if signed else 'unsigned'} {bits}-bit range [{lo}, {hi}]"
        )
    per_byte = 8 // bits
    pad = (-flat.numel()) % per_byte
    flat = torch.nn.functional.pad(flat, (0, pad))
    codes = (flat & (2**bits - 1)).reshape(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int64) * bits
    return (codes << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, *, signed: bool, numel: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first ``numel`` values as a flat int32 tensor.

    Raises:
        ValueError: ``packed`` is not uint8 or holds fewer than ``numel`` values.
    """
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_bits takes uint8 bytes, got {packed.dtype}")
    per_byte = 8 // bits
    if packed.numel() * per_byte < numel:
        raise ValueError(
            f"{packed.numel()} bytes hold {packed.numel() * per_byte} {bits}-bit values, "
            f"fewer than numel={numel}"
        )
    shifts = torch.arange(per_byte, dtype=torch.int64) * bits
    codes = (packed.to(torch.int64).reshape(-1, 1) >> shifts) & (2**bits - 1)
    codes = codes.reshape(-1)[:numel]
    if signed:
        codes = torch.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes)
    return codes.to(torch.int32)


def cast_fake(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round ``x`` through a 16-bit float format and back (round to nearest even)."""
    return x.to(dtype).to(x.dtype)
