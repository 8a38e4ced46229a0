"""Decompression bombs are refused from the header, before any pixel is decoded."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from edgeq.data import DataError, load_labeled_images
from edgeq.data.decode import MAX_PIXELS, check_image_size, read_rgb


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding a PNG fails the test: the size check must come first."""

    def refuse(self):
        raise AssertionError(f"decoded {self.size}")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)


def test_a_tiny_file_of_40000x1_pixels_is_refused_without_decoding(tmp_path, no_decoding):
    path = tmp_path / "strip.png"
    Image.new("L", (40000, 1)).save(path)
    assert path.stat().st_size < 1000  # the bomb: a few hundred bytes
    with pytest.raises(DataError, match=r"strip\.png: image too elongated \(40000x1; .* 20:1"):
        read_rgb(path)


@pytest.mark.parametrize(
    ("side", "size"),
    [
        pytest.param(8000, "8000x8000 = 64.0 megapixels", id="64MP-over-edgeq-limit"),
        pytest.param(10000, "10000x10000 = 100.0 megapixels", id="100MP-PIL-warns"),
        pytest.param(15000, "225.0 megapixels", id="225MP-PIL-refuses"),
    ],
)
def test_huge_declared_sizes_are_refused_naming_file_size_and_limit(
    tmp_path, png_header, side, size
):
    path = png_header(tmp_path / "huge.png", side, side)
    expected = rf"huge\.png: image too large \({size}; the limit is 50 megapixels\)$"
    with pytest.raises(DataError, match=expected):
        read_rgb(path)


def test_the_header_only_png_would_fail_to_decode(tmp_path, png_header):
    """The oracle of the test above: a size error means decoding never started."""
    path = png_header(tmp_path / "small.png", 100, 100)
    with pytest.raises(DataError, match=r"small\.png: cannot decode image"):
        read_rgb(path)


def test_limits_are_inclusive():
    assert MAX_PIXELS == 10000 * 5000
    check_image_size(Path("x.png"), 10000, 5000)
    check_image_size(Path("x.png"), 20, 1)
    with pytest.raises(DataError, match=r"x\.png: image too elongated \(21x1;"):
        check_image_size(Path("x.png"), 21, 1)
    with pytest.raises(DataError, match=r"x\.png: image too large \(10001x5000 = 50.0 mega"):
        check_image_size(Path("x.png"), 10001, 5000)


def test_a_bomb_in_a_folder_fails_the_load_naming_the_file(tmp_path, png):
    (tmp_path / "cat").mkdir()
    png(tmp_path / "cat" / "ok.png")
    Image.new("L", (40000, 1)).save(tmp_path / "cat" / "bomb.png")
    images = load_labeled_images(tmp_path)
    with pytest.raises(DataError, match=r"bomb\.png: image too elongated"):
        images.tensors()
