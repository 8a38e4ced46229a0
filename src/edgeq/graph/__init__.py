"""Capture and rewrite: trace with torch.fx, fold BatchNorm, fuse activations,
swap in quantized modules and place activation quantizers where the runtime fuses."""

from edgeq.graph.capture import CaptureError, capture
from edgeq.graph.fold_bn import fold_batchnorm
from edgeq.graph.qlstm import QuantLSTM
from edgeq.graph.qmodules import (
    ActivationQuantizer,
    IntegerOp,
    QuantAdd,
    QuantConv2d,
    QuantGlobalAvgPool,
    QuantLinear,
)

__all__ = [
    "ActivationQuantizer",
    "CaptureError",
    "IntegerOp",
    "QuantAdd",
    "QuantConv2d",
    "QuantGlobalAvgPool",
    "QuantLSTM",
    "QuantLinear",
    "capture",
    "fold_batchnorm",
]
