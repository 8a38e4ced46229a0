"""Packed artifacts: save a quantized model compactly, load it back bit-exact."""

from edgeq.artifact.errors import ArtifactError, ArtifactSourceError
from edgeq.artifact.packed import load, save

__all__ = ["ArtifactError", "ArtifactSourceError", "load", "save"]
