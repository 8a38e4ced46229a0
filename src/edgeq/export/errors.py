"""The export's one error type (its own module so that every export file can raise it)."""

from __future__ import annotations


class ExportError(RuntimeError):
    """A node has no ONNX translation, or an output cannot be written (names it)."""
