"""Post-training quantization."""

from edgeq.ptq.config import PTQConfig, Target
from edgeq.ptq.static import QuantizedModel, quantize

__all__ = ["PTQConfig", "QuantizedModel", "Target", "quantize"]
