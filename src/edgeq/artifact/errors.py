"""The artifact's errors (one module, so that the checks and the loader share them)."""

from __future__ import annotations

from edgeq.models.loaders import ModelLoadError


class ArtifactError(ValueError):
    """An artifact cannot be written or read (names the file, the key and the reason)."""


class ArtifactSourceError(ArtifactError, ModelLoadError):
    """The artifact's recorded model source cannot be rebuilt: both an artifact error
    and a model loading error, so callers catching either see it."""
