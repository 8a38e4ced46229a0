"""ONNX Runtime sessions with explicit threads, and latency measurement."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_session(
    path: str | Path, *, threads: int = 2, optimized_model_path: str | Path | None = None
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure_latency(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, *, rounds: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median latency (seconds) of each session on ``x``, interleaved round by round so
    that machine noise hits every session alike."""
    name = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, {name[k]: x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {name[k]: x})
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}
