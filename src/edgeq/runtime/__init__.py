"""Running exported models in ONNX Runtime: sessions and latency."""

from edgeq.runtime.ort import bench, measure_latency, ort_session

__all__ = ["bench", "measure_latency", "ort_session"]
