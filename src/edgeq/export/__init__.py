"""Deployable artifacts: ONNX with QuantizeLinear/DequantizeLinear."""

from edgeq.export.errors import ExportError
from edgeq.export.external_data import onnx_bytes
from edgeq.export.onnx_qdq import export_onnx
from edgeq.export.signature import (
    OutputSpec,
    flatten_outputs,
    output_names,
    output_spec,
    unflatten_outputs,
)

__all__ = [
    "ExportError",
    "OutputSpec",
    "export_onnx",
    "flatten_outputs",
    "onnx_bytes",
    "output_names",
    "output_spec",
    "unflatten_outputs",
]
