"""Image folders: both layouts, sorted order, preprocessing, and errors that name the
file or line."""

from __future__ import annotations

import pytest
import torch

from edgeq.data import DataError, Preprocess, load_labeled_images


@pytest.fixture
def csv_folder(tmp_path, png):
    (tmp_path / "images").mkdir()
    for name, v in (("b.png", 10), ("a.png", 200)):
        png(tmp_path / "images" / name, v)
    (tmp_path / "labels.csv").write_text("file,label\nb.png,3\na.png,7\n")
    return tmp_path


def test_labels_csv_layout_is_read_in_file_order(csv_folder):
    images = load_labeled_images(csv_folder)
    x, y = images.tensors()
    assert [p.name for p in images.files] == ["a.png", "b.png"]
    assert y.tolist() == [7, 3]
    assert x.shape == (2, 3, 224, 224)
    assert float(x[0].mean()) > float(x[1].mean())  # a.png is the brighter image


def test_preprocess_decides_the_tensors(csv_folder):
    images = load_labeled_images(csv_folder, Preprocess(resize=64, crop=(32, 48), std=(1, 1, 1)))
    x, _ = images.tensors([1])  # b.png, grey 10
    assert x.shape == (1, 3, 32, 48)
    want = torch.tensor([10 / 255 - m for m in (0.485, 0.456, 0.406)])
    torch.testing.assert_close(x[0].mean(dim=(1, 2)), want)


def test_images_of_different_sizes_without_a_crop_name_both_files(tmp_path, png):
    (tmp_path / "cat").mkdir()
    png(tmp_path / "cat" / "a.png", size=(50, 40))
    png(tmp_path / "cat" / "b.png", size=(30, 30))
    images = load_labeled_images(tmp_path, Preprocess(resize=None, crop=None))
    assert images.load(1).shape == (3, 30, 30)
    with pytest.raises(
        DataError,
        match=r"b\.png: gives a \(3, 30, 30\) tensor, .*a\.png "
        r"\(3, 40, 50\); set a crop",
    ):
        images.tensors()


def test_corrupt_image_fails_naming_the_file(tmp_path, png):
    (tmp_path / "cat").mkdir()
    png(tmp_path / "cat" / "ok.png", 5)
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    images = load_labeled_images(tmp_path)
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        images.tensors()


def test_no_indices_is_an_error(csv_folder):
    with pytest.raises(DataError, match="no images selected"):
        load_labeled_images(csv_folder).tensors([])


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        load_labeled_images(tmp_path)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: not a folder"):
        load_labeled_images(tmp_path / "nowhere")


def test_labels_outside_the_model_classes_name_the_row(csv_folder):
    images = load_labeled_images(csv_folder)
    images.check_labels(8)
    with pytest.raises(
        DataError,
        match=r"labels\.csv:3 \(a\.png\): label 7 is not a class of "
        r"the model, which has 5 outputs \(labels 0 to 4\)",
    ):
        images.check_labels(5)


def test_class_folders_outside_the_model_classes_name_the_folder(tmp_path, png):
    for cls in ("ant", "bee", "cat"):
        (tmp_path / cls).mkdir()
        png(tmp_path / cls / "x.png")
    images = load_labeled_images(tmp_path)
    assert images.labels == [0, 1, 2]
    with pytest.raises(
        DataError,
        match=r"cat.x\.png \(class folder 'cat'\): label 2 is not a "
        r"class of the model, which has 2 outputs",
    ):
        images.check_labels(2)
