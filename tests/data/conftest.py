"""PNG writers for the data tests: real small images, and header-only giants."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_png(path: Path, value: int = 128, size: tuple[int, int] = (50, 40)) -> Path:
    """A real RGB PNG of one grey ``value``; ``size`` is (width, height)."""
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG declaring ``width x height`` RGB pixels with no image data: decoding it
    fails, so an error about its size proves that nothing was decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(signature + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"\x78\x9c"))
    return path


@pytest.fixture
def png() -> Callable[..., Path]:
    return _write_png


@pytest.fixture
def png_header() -> Callable[[Path, int, int], Path]:
    return _write_png_header
