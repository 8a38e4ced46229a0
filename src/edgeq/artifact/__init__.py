"""Packed artifacts: save a quantized model compactly, load it back bit-exact."""

from edgeq.artifact.packed import ArtifactError, load, save

__all__ = ["ArtifactError", "load", "save"]
