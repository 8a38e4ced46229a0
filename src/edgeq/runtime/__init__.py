"""Running exported models in ONNX Runtime: sessions, latency, the machine."""

from edgeq.runtime.machine import machine_info
from edgeq.runtime.ort import bench, measure_latency, ort_session

__all__ = ["bench", "machine_info", "measure_latency", "ort_session"]
