"""Running exported models in ONNX Runtime: sessions, latency, the machine."""

from edgeq.runtime.machine import machine_info
from edgeq.runtime.ort import (
    OnnxModelError,
    bench,
    bench_pair,
    measure_latency,
    ort_session,
    run_outputs,
)

__all__ = [
    "OnnxModelError",
    "bench",
    "bench_pair",
    "machine_info",
    "measure_latency",
    "ort_session",
    "run_outputs",
]
