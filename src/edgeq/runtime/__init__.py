"""Running exported models in ONNX Runtime: sessions and latency."""

from edgeq.runtime.ort import measure_latency, ort_session

__all__ = ["measure_latency", "ort_session"]
