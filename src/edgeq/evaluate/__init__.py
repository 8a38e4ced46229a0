"""Metrics: fidelity to FP32, accuracy, per-layer error."""

from edgeq.evaluate.weight_error import weight_error_table
from edgeq.quant import sqnr_db

__all__ = ["sqnr_db", "weight_error_table"]
