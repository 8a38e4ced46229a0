"""Metrics: fidelity to FP32, accuracy, per-layer error."""

from edgeq.evaluate.weight_error import sqnr_db, weight_error_table

__all__ = ["sqnr_db", "weight_error_table"]
