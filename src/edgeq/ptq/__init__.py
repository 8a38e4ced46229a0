"""Post-training quantization."""

from edgeq.ptq.config import Mode, PTQConfig, Target
from edgeq.ptq.static import QuantizedModel, check_config, quantize

__all__ = ["Mode", "PTQConfig", "QuantizedModel", "Target", "check_config", "quantize"]
