"""ONNX Runtime sessions with explicit threads, and latency measurement."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class OnnxModelError(ValueError):
    """A file given as an ONNX model is missing or is not one ONNX Runtime can load."""


def ort_session(
    path: str | Path, *, threads: int = 2, optimized_model_path: str | Path | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads.

    Raises:
        OnnxModelError: the file is missing or not a loadable ONNX model (naming it).
    """
    p = Path(path)
    if not p.is_file():
        raise OnnxModelError(f"{p}: ONNX file not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise OnnxModelError(f"{p}: not an ONNX model ONNX Runtime can load ({first})") from e


def run_outputs(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> Any:
    """Every output of ``session`` on ``feeds``, in the structure the exported model
    returned: one array, or its tuple, list or dict of arrays (rebuilt from the
    ``edgeq.outputs`` metadata the export writes; without it, a tuple of the
    outputs). Compare it with the simulation through `edgeq.export.flatten_outputs`.

    Example::

        boxes, scores = run_outputs(ort_session(path), {"input": x})
    """
    # imported here: the export pulls in torch, which timing a model does not need
    from edgeq.export.signature import OUTPUTS_META, spec_from_json, unflatten_outputs

    arrays = session.run(None, dict(feeds))
    meta = session.get_modelmeta().custom_metadata_map
    if OUTPUTS_META in meta:
        return unflatten_outputs(spec_from_json(meta[OUTPUTS_META]), arrays)
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def measure_latency(
    sessions: dict[str, ort.InferenceSession],
    x: np.ndarray,
    *,
    rounds: int = 20,
    warmup: int = 3,
    burst: int = 5,
    pause: float = 0.05,
) -> dict[str, float]:
    """Median latency (seconds) of each session on ``x`` over ``rounds`` timed runs.

    The sessions take turns, so that slow drifts of a shared machine hit every model
    alike, but in bursts: a session runs ``burst`` timed runs in a row, after a
    ``pause`` and two untimed runs. Why: after a run ONNX Runtime's intra-op worker
    threads spin-wait for more work, and on a machine with few cores the spinning
    workers of the session that ran last take cores from the next one. Alternating
    run by run measured MobileNetV2 at batch 1 in 19 ms instead of the 2.6 ms it takes
    alone in a process, and pulled every int8/FP32 ratio towards 1 (0.54 against
    0.42 at batch 32); with the pause and the untimed runs each session measures what
    it measures alone (2.2 ms; 0.41), while keeping ONNX Runtime's default settings.

    ``x`` feeds each session's first input (single-input models); a run computes and
    times every output.
    """
    name = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, {name[k]: x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    while any(len(v) < rounds for v in times.values()):
        for k, s in sessions.items():
            time.sleep(pause)  # the previous session's workers stop spinning
            for _ in range(2):
                s.run(None, {name[k]: x})
            for _ in range(min(burst, rounds - len(times[k]))):
                t = time.perf_counter()
                s.run(None, {name[k]: x})
                times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def _peak_rss_bytes() -> int | None:
    """Peak resident memory of this process (Linux VmHWM), or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench(
    path: str | Path,
    *,
    batch: int = 1,
    threads: int = 2,
    rounds: int = 50,
    warmup: int = 5,
    progress: bool = False,
) -> dict[str, float | int | None]:
    """Latency percentiles (ms), throughput (inputs/s) and peak memory of one ONNX model.

    Peak memory is the process's peak resident set size while the session is created
    and run (Linux only; None elsewhere), so it includes the Python process itself.
    Random float32 data feeds the model's first input (single-input models); a run
    computes every output.
    """
    reset = _reset_peak_rss()
    sess = ort_session(path, threads=threads)
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    times = []
    it = range(rounds)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"bench b{batch}", unit="run", disable=None)
    for _ in it:
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {
        "batch": batch,
        "threads": threads,
        "rounds": rounds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_per_s": float(batch * 1000 / np.median(ms)),
        "peak_rss_bytes": _peak_rss_bytes() if reset else None,
    }


def bench_pair(
    base: str | Path,
    other: str | Path,
    *,
    batches: list[int],
    threads: int = 2,
    rounds: int = 20,
) -> list[dict[str, float]]:
    """Median latency of two models with the same input, timed in one loop
    (`measure_latency`: bursts in turn), and ``other``'s ratio to ``base``, per batch.
    Only the first input's shape is compared and fed; outputs are timed, not compared
    (`run_outputs` and `edgeq.export.flatten_outputs` compare every one).

    Raises:
        OnnxModelError: a file is not a loadable model, or the two take different inputs.
    """
    sessions = {
        "base": ort_session(base, threads=threads),
        "other": ort_session(other, threads=threads),
    }
    shapes = {k: list(s.get_inputs()[0].shape) for k, s in sessions.items()}
    if shapes["base"][1:] != shapes["other"][1:]:
        raise OnnxModelError(f"{base} and {other} take different inputs: {shapes}")
    rows = []
    for n in batches:
        shape = [n] + [d if isinstance(d, int) else 1 for d in shapes["base"][1:]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        t = measure_latency(sessions, x, rounds=rounds)
        rows.append(
            {
                "batch": n,
                "base_ms": 1000 * t["base"],
                "other_ms": 1000 * t["other"],
                "ratio": t["other"] / t["base"],
            }
        )
    return rows
