"""The one error type of `edgeq.data`: user data (folders, files, settings) that cannot be used."""

from __future__ import annotations


class DataError(ValueError):
    """A data folder or file cannot be read (the message names which and why)."""
