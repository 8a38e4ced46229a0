import math

import pytest
import torch

from edgeq.evaluate import sqnr_db, weight_error_table
from edgeq.quant import QuantSpec


def test_sqnr_known_answer():
    ref = torch.tensor([3.0, 4.0])  # signal 25
    assert sqnr_db(ref, ref + torch.tensor([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert sqnr_db(ref, ref) == math.inf


def test_int8_per_channel_real_weights_sqnr_floor(mobilenet_v2_state_dict):
    spec = QuantSpec(bits=8, granularity="per_channel", axis=0, range_method="mse")
    rows = weight_error_table(mobilenet_v2_state_dict, spec)
    worst = min(float(r["sqnr_db"]) for r in rows)
    print(f"worst int8 per-channel weight SQNR: {worst:.1f} dB")
    assert len(rows) == 53
    assert worst > 35.0
