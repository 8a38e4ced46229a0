"""Decode one image file, refusing decompression bombs before any pixel is decoded.

A PNG of a few hundred bytes can declare 40000 x 1 pixels: decoding is cheap, but
resizing its shorter side to 256 makes it 10 million x 256 (11 GB). ``Image.open``
reads only the header, so the declared size is checked there, against a pixel count
and an aspect ratio, before ``convert`` decodes anything.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from edgeq.data.errors import DataError

# 50 megapixels: a 8660 x 5773 photo, 150 MB decoded as RGB (PIL's own limit warns at
# 89 and refuses at 179)
MAX_PIXELS = 50_000_000
# longer / shorter side: the resized image is at most resize^2 x this (panoramas are 4-6)
MAX_ASPECT = 20


def check_image_size(path: Path, width: int, height: int) -> None:
    """Raises DataError if the declared size is over `MAX_PIXELS` or `MAX_ASPECT`."""
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise DataError(
            f"{path}: image too large ({width}x{height} = {pixels / 1e6:.1f} megapixels; "
            f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels)"
        )
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise DataError(
            f"{path}: image too elongated ({width}x{height}; the limit is {MAX_ASPECT}:1, "
            "which keeps the resized image bounded)"
        )


def read_rgb(path: Path) -> Image.Image:
    """The image at ``path``, decoded, as RGB.

    Raises:
        DataError: the file cannot be decoded, or its declared size is over the
            limits (checked from the header, before decoding), naming the file.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 megapixels; our lower limit below gives the message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            check_image_size(path, *img.size)
            return img.convert("RGB")
    except Image.DecompressionBombError as e:  # over twice PIL's limit: it refuses to open
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found[1]) / 1e6:.1f} megapixels" if found else str(e)
        raise DataError(
            f"{path}: image too large ({size}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels)"
        ) from e
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e
