"""Image folders: both layouts, sorted order, and errors that name the file or line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeq.data import load_labeled_images
from edgeq.data.images import DataError


def _png(path, value: int) -> None:
    Image.fromarray(np.full((40, 50, 3), value, np.uint8)).save(path)


def test_labels_csv_layout_is_read_in_file_order(tmp_path):
    (tmp_path / "images").mkdir()
    for name, v in (("b.png", 10), ("a.png", 200)):
        _png(tmp_path / "images" / name, v)
    (tmp_path / "labels.csv").write_text("file,label\nb.png,3\na.png,7\n")
    images = load_labeled_images(tmp_path)
    x, y = images.tensors()
    assert [p.name for p in images.files] == ["a.png", "b.png"]
    assert y.tolist() == [7, 3]
    assert x.shape == (2, 3, 224, 224)
    assert float(x[0].mean()) > float(x[1].mean())  # a.png is the brighter image


def test_corrupt_image_fails_naming_the_file(tmp_path):
    (tmp_path / "cat").mkdir()
    _png(tmp_path / "cat" / "ok.png", 5)
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    images = load_labeled_images(tmp_path)
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        images.tensors()


def test_malformed_labels_csv_names_the_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("file,label\na.png,3\nb.png,dog\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: expected columns file,label"):
        load_labeled_images(tmp_path)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        load_labeled_images(tmp_path)
