import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.quant import cast_fake, pack_bits, unpack_bits


def test_int4_known_answer_low_nibble_first():
    # 1 -> 0x1, -1 -> 0xF: byte 0 = 0xF1 = 241; 7 alone in byte 1
    assert pack_bits(torch.tensor([1, -1, 7]), 4, signed=True).tolist() == [241, 7]


def test_int2_known_answer():
    # values 0,1,2,3 -> bits 00 01 10 11 from the low end: 0b11100100 = 228
    assert pack_bits(torch.tensor([0, 1, 2, 3]), 2, signed=False).tolist() == [228]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.booleans(), st.data())
def test_pack_round_trips(bits, signed, data):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = data.draw(st.lists(st.integers(lo, hi), min_size=0, max_size=100))
    q = torch.tensor(values, dtype=torch.int32)
    packed = pack_bits(q, bits, signed=signed)
    assert packed.numel() == -(-len(values) * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, signed=signed, numel=len(values)), q)


def test_packing_errors():
    with pytest.raises(ValueError, match=r"bits=3 cannot be packed"):
        pack_bits(torch.tensor([1]), 3, signed=True)
    with pytest.raises(ValueError, match=r"do not fit signed 4-bit range \[-8, 7\]"):
        pack_bits(torch.tensor([8]), 4, signed=True)
    with pytest.raises(ValueError, match="integer tensors"):
        pack_bits(torch.tensor([1.0]), 4, signed=True)
    with pytest.raises(ValueError, match="fewer than numel=5"):
        unpack_bits(torch.tensor([1, 2], dtype=torch.uint8), 4, signed=True, numel=5)


def test_cast_fake_rounds_to_half():
    x = torch.tensor([1.0 + 2**-11, 1.0 + 3 * 2**-11, 70000.0])
    assert cast_fake(x, torch.float16).tolist() == [1.0, 1.0 + 2**-9, float("inf")]
    assert cast_fake(torch.tensor([1.0 + 2**-9]), torch.bfloat16).tolist() == [1.0]
