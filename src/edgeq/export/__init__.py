"""Deployable artifacts: ONNX with QuantizeLinear/DequantizeLinear."""

from edgeq.export.external_data import onnx_bytes
from edgeq.export.onnx_qdq import ExportError, export_onnx

__all__ = ["ExportError", "export_onnx", "onnx_bytes"]
