"""The quantize job: model + images in, a run folder of artifacts and a report out.

    fp32.onnx, quantized.onnx   (provenance in the ONNX metadata)
    model/                      packed artifact: edgeq.load(run_folder) restores it
    recipe.yaml                 the fully resolved recipe
    metrics.json                accuracy, fidelity, bytes, latency, time, machine
    per_layer.csv               per-layer weight and activation SQNR
    report.md, report.html      with plots/*.png

Every file is written atomically; metrics.json and the reports are written last.
`finish_run` writes everything after the quantization itself; `edgeq train`
(`edgeq.jobs.train`) ends with it too.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

import edgeq
from edgeq.data import Preprocess
from edgeq.evaluate.classification import as_predictor, predict, score
from edgeq.evaluate.per_layer import LayerError, per_layer_errors
from edgeq.export import onnx_bytes
from edgeq.jobs.inputs import JobInputs
from edgeq.ptq.static import QuantizedModel
from edgeq.recipe import RECIPE_PREPROCESS_KEYS, dump
from edgeq.report.build import build_report
from edgeq.runs import write_text_atomic
from edgeq.runtime import machine_info, measure_latency, ort_session


@dataclass
class QuantizeJob:
    model: str
    recipe: dict[str, Any]
    weights: Path | None = None
    calib: Path | None = None  # None: scikit-image's sample photographs
    eval: Path | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    trust_model_file: bool = False


class RunSource(Protocol):
    """What `finish_run` reads of a job (`QuantizeJob`, `edgeq.jobs.train.TrainJob`)."""

    @property
    def model(self) -> str: ...
    @property
    def weights(self) -> Path | None: ...
    @property
    def eval(self) -> Path | None: ...
    @property
    def progress(self) -> bool: ...
    @property
    def log(self) -> Callable[[str], None]: ...


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``x`` in slices of ``size`` along dim 0."""
    return [x[i : i + size] for i in range(0, len(x), size)]


def used_recipe(recipe: dict[str, Any], preprocess: Preprocess) -> dict[str, Any]:
    """The recipe as run, its preprocessing resolved, so that recipe.yaml runs again as is."""
    used = {k: v for k, v in preprocess.to_dict().items() if k in RECIPE_PREPROCESS_KEYS}
    return {**recipe, "preprocess": used}


def _weights_description(job: RunSource) -> str:
    if job.weights is not None:
        return str(job.weights)
    if job.model.startswith("torchvision:"):
        return "random initialization"
    return "the model's own (from its factory or file)"


def run_quantize(job: QuantizeJob, inputs: JobInputs, out: Path) -> dict[str, Any]:
    """Run the whole job into the folder ``out``, from ``inputs`` (`prepare_inputs`);
    returns the metrics written to ``metrics.json``."""
    t_start = time.perf_counter()
    recipe = used_recipe(job.recipe, inputs.preprocess)
    write_text_atomic(out / "recipe.yaml", dump(recipe))
    job.log(f"preprocessing ({inputs.preprocess_origin}): {inputs.preprocess.describe()}")
    job.log(f"calibrating on {inputs.calib_desc}")
    bs = recipe["calibration"]["batch_size"]
    calib = batches(inputs.calib_x, bs)
    qm = edgeq.quantize(inputs.model, calib, inputs.config, progress=job.progress)
    log_quantized(job, qm)
    return finish_run(job, inputs, qm, out, recipe, t_start=t_start)


def log_quantized(job: RunSource, qm: QuantizedModel) -> None:
    """What calibration did, in a few log lines."""
    job.log(f"quantized in {qm.seconds:.1f} s; {len(qm.placement.quantized_layers)} layers")
    chosen = qm.calibration.get("activation_percentile")
    if chosen is not None:
        job.log(f"activation ranges: {chosen}th percentile (best logits SQNR of the search)")
    if qm.placement.float_ops:
        job.log(f"kept in float: {', '.join(qm.placement.float_ops)}")


def finish_run(
    job: RunSource,
    inputs: JobInputs,
    qm: QuantizedModel,
    out: Path,
    recipe: dict[str, Any],
    *,
    t_start: float,
    extra_metrics: Mapping[str, Any] | None = None,
    extra_seconds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Everything after the quantization: export fp32.onnx and quantized.onnx, save the
    artifact in model/, evaluate, time, and write per_layer.csv, the report and
    metrics.json (last).

    Args:
        job: the job (its model reference, weights, --eval folder, progress and log).
        inputs: what the job read (`prepare_inputs`).
        qm: the quantized model, converted (`edgeq.convert`) when it was trained.
        out: the run folder.
        recipe: the recipe as run (`used_recipe`), recorded in the ONNX metadata.
        t_start: `time.perf_counter()` at the job's start, for the total time.
        extra_metrics: more top-level sections of metrics.json (``training``), shown by
            the report.
        extra_seconds: more entries of metrics.json's ``seconds`` (``train``).

    Returns:
        The metrics written to ``metrics.json``.
    """
    calib_x, calib_desc = inputs.calib_x, inputs.calib_desc
    example = calib_x[:1]
    provenance = {
        "edgeq_version": edgeq.__version__,
        "source_model": job.model,
        "weights": _weights_description(job),
        "calibration": calib_desc,
        "recipe": json.dumps(recipe, sort_keys=True),
    }
    # every mode exports (weight-only: int8/int4 DequantizeLinear, opset 21)
    fp32_path = edgeq.export_onnx(
        qm, out / "fp32.onnx", example, quantized=False, metadata=provenance
    )
    q_path = edgeq.export_onnx(qm, out / "quantized.onnx", example, metadata=provenance)
    edgeq.save(qm, out / "model")
    accuracy, export_check, eval_desc = _evaluate(job, inputs, qm, recipe, fp32_path, q_path)
    bytes_ = {
        "fp32_onnx": onnx_bytes(fp32_path),
        "artifact": sum(p.stat().st_size for p in (out / "model").iterdir()),
        "quantized_onnx": onnx_bytes(q_path),
    }
    latency = _latency(job, recipe["bench"], fp32_path, q_path, calib_x)
    assert qm.float_module is not None  # quantize keeps it (only edgeq.load drops it)
    errors = per_layer_errors(qm.module, qm.float_module, calib_x[: min(8, len(calib_x))])
    write_text_atomic(out / "per_layer.csv", _per_layer_csv(errors))

    bits: dict[str, int] = {}
    for e in errors:
        bits[str(e.weight_bits)] = bits.get(str(e.weight_bits), 0) + 1
    metrics = {
        "model": job.model,
        "weights": provenance["weights"],
        "calibration": calib_desc,
        "preprocess": {
            **inputs.preprocess.to_dict(),
            "description": inputs.preprocess.describe(),
            "origin": inputs.preprocess_origin,
        },
        "evaluation": eval_desc,
        "mode": inputs.config.mode.value,
        "accuracy": accuracy,
        "export_check": export_check,
        "bytes": bytes_,
        "latency": latency,
        "coverage": {
            "layers": len(qm.placement.quantized_layers)
            + sum(1 for f in qm.placement.float_ops if "by the config" in f),
            "quantized_layers": len(errors),
            "weight_bits": bits,
            "float_ops": qm.placement.float_ops,
        },
        "calibration_result": {**qm.calibration, "padded_inputs": qm.placement.padded_inputs},
        **(extra_metrics or {}),
        "seconds": {
            "quantize": qm.seconds,
            **(extra_seconds or {}),
            "total": time.perf_counter() - t_start,
        },
        "machine": machine_info(),
        "versions": {
            "edgeq": edgeq.__version__,
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "onnx": __import__("onnx").__version__,
        },
    }
    build_report(out, metrics, errors)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def _evaluate(
    job: RunSource,
    inputs: JobInputs,
    qm: QuantizedModel,
    recipe: dict[str, Any],
    fp32_path: Path,
    q_path: Path,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Accuracy of the three models, the export check, and what they were scored on:
    labeled images, or the calibration crops (fidelity only)."""
    calib_x = inputs.calib_x
    if inputs.eval_images is not None:
        images = inputs.eval_images
        n = recipe["evaluation"]["images"] or len(images)
        ex, ey = images.tensors(range(min(n, len(images))))
        labels: np.ndarray | None = ey.numpy()
        eval_desc = f"{len(ex)} images of {job.eval}"
    else:
        ex, labels, eval_desc = calib_x, None, f"the {len(calib_x)} calibration inputs (no labels)"
    job.log(f"evaluating on {eval_desc}")
    xs = batches(ex, recipe["evaluation"]["batch_size"])
    show = job.progress
    fp = predict(as_predictor(fp32_path), xs, progress="FP32 (ONNX Runtime)" if show else None)
    sim = predict(as_predictor(qm), xs, progress="simulation (PyTorch)" if show else None)
    oq = predict(as_predictor(q_path), xs, progress="quantized (ONNX Runtime)" if show else None)
    dummy = labels if labels is not None else fp.argmax(1)
    keep = (
        (lambda d: d)
        if labels is not None
        else (lambda d: {k: v for k, v in d.items() if k not in ("top1", "top5")})
    )
    accuracy = {
        "fp32_onnx": keep(score(fp, dummy)),
        "simulation": keep(score(sim, dummy, fp)),
        "quantized_onnx": keep(score(oq, dummy, fp)),
    }
    agree = float((oq.argmax(1) == sim.argmax(1)).mean())
    export_check = {
        "top1_agreement": agree,
        "max_abs_logit_difference": float(np.abs(oq - sim).max()),
        "sqnr_db": score(oq, dummy, sim)["sqnr_db"],
        "pass": agree >= 0.995,
    }
    return accuracy, export_check, eval_desc


def _latency(
    job: RunSource, bench: dict[str, Any], fp32_path: Path, q_path: Path, calib_x: torch.Tensor
) -> dict[str, dict[str, float]]:
    sessions = {
        "fp32": ort_session(fp32_path, threads=bench["threads"]),
        "quantized": ort_session(q_path, threads=bench["threads"]),
    }
    latency = {}
    for b in bench["batch"]:
        job.log(f"measuring latency at batch {b}")
        x = calib_x[:1].expand(b, *calib_x.shape[1:]).contiguous().numpy()
        # batch-1 runs take milliseconds: 10x the rounds for a stable median
        rounds = bench["rounds"] * (10 if b == 1 else 1)
        t = measure_latency(sessions, x, rounds=rounds)
        latency[str(b)] = {
            "fp32_ms": 1000 * t["fp32"],
            "quantized_ms": 1000 * t["quantized"],
            "ratio": t["quantized"] / t["fp32"],
        }
    return latency


def _per_layer_csv(errors: list[LayerError]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layer", "kind", "weight_bits", "weight_sqnr_db", "activation_sqnr_db"])
    for e in errors:
        w.writerow(
            [
                e.name,
                e.kind,
                e.weight_bits,
                f"{e.weight_sqnr_db:.2f}",
                "" if e.activation_sqnr_db is None else f"{e.activation_sqnr_db:.2f}",
            ]
        )
    return buf.getvalue()
