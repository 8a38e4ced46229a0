"""Post-training quantization."""

from edgeq.ptq.config import Mode, PTQConfig, Target
from edgeq.ptq.static import QuantizedModel, quantize

__all__ = ["Mode", "PTQConfig", "QuantizedModel", "Target", "quantize"]
