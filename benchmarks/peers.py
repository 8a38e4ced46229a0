"""The tools users would pick instead of edgeq, run the way their docs say, timed.

Each function takes the same FP32 model (or its ONNX file) and the same calibration
batches, and returns what it produced plus the wall-clock seconds it took
(calibration included). Used by ``ptq_mobilenet_v2.py``; nothing here is imported by
the edgeq package.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of batches."""

    def __init__(self, batches: Sequence[torch.Tensor]) -> None:
        self._it = iter([{"input": b.numpy()} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:  # some calibrators call it
        pass


def ort_quantize_static(
    fp32_onnx: Path,
    out: Path,
    calib: Sequence[torch.Tensor],
    *,
    method: str,
    activation: str,
    reduce_range: bool,
) -> float:
    """ONNX Runtime's ``quantize_static``: QDQ, per-channel int8 weights.

    ``method``: "MinMax" or "Percentile"; ``activation``: "int8" or "uint8".
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    t0 = time.perf_counter()
    quantize_static(
        str(fp32_onnx),
        str(out),
        _Reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )
    return time.perf_counter() - t0


def nncf_quantize(fp32_onnx: Path, out: Path, calib: Sequence[torch.Tensor]) -> float:
    """NNCF's ``nncf.quantize`` with its defaults, ONNX backend (its output is a QDQ
    model for ONNX Runtime). ``subset_size`` covers every calibration image."""
    import nncf
    import onnx

    model = onnx.load(str(fp32_onnx))
    t0 = time.perf_counter()
    images = [b[i : i + 1].numpy() for b in calib for i in range(len(b))]
    dataset = nncf.Dataset(images, lambda x: {"input": x})
    quantized = nncf.quantize(model, dataset, subset_size=len(images))
    onnx.save(quantized, str(out))
    return time.perf_counter() - t0


def fx_ptq(model: nn.Module, calib: Sequence[torch.Tensor]) -> tuple[nn.Module, float]:
    """PyTorch's FX-mode post-training static quantization, x86 default qconfig."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    t0 = time.perf_counter()
    m = copy.deepcopy(model).eval()
    prepared = prepare_fx(m, get_default_qconfig_mapping("x86"), example_inputs=(calib[0][:1],))
    with torch.no_grad():
        for b in calib:
            prepared(b)
    converted = convert_fx(prepared)
    return converted, time.perf_counter() - t0
