"""edgeq: compress PyTorch models for edge deployment, measured in the runtime."""

__version__ = "0.1.0"
