"""labels.csv and class folders: a BOM is read, and rows or symlinks that leave the
data folder, duplicates and negative labels are errors naming the line or file."""

from __future__ import annotations

import pytest

from edgeq.data import DataError, load_labeled_images


@pytest.fixture
def folder(tmp_path, png):
    (tmp_path / "images").mkdir()
    png(tmp_path / "images" / "a.png")
    png(tmp_path / "images" / "b.png")
    return tmp_path


def _csv(folder, text: str, encoding: str = "utf-8"):
    (folder / "labels.csv").write_text(text, encoding=encoding)


def test_a_byte_order_mark_is_read(folder):
    _csv(folder, "file,label\na.png,1\nb.png,2\n", encoding="utf-8-sig")
    assert (folder / "labels.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_labeled_images(folder).labels == [1, 2]


def test_extra_columns_and_subfolders_are_fine(folder, png):
    (folder / "images" / "sub").mkdir()
    png(folder / "images" / "sub" / "c.png")
    _csv(folder, "file,label,note\na.png,1,x\nsub/c.png,0,y\n")
    images = load_labeled_images(folder)
    assert [p.name for p in images.files] == ["a.png", "c.png"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        pytest.param(
            "a.png,3\nb.png,dog\n", r"labels\.csv:3: expected columns file,label", id="lab"
        ),
        pytest.param("a.png\n", r"labels\.csv:2: expected columns file,label", id="short"),
        pytest.param(",3\n", r"labels\.csv:2: expected columns file,label \(empty", id="empty"),
        pytest.param("a.png,-1\n", r"labels\.csv:2: label -1 is negative", id="negative"),
        pytest.param(
            "a.png,1\nb.png,2\n./a.png,3\n",
            r"labels\.csv:4: '\./a\.png' is listed twice \(lines 2 and 4\)",
            id="duplicate",
        ),
        pytest.param(
            "../../etc/passwd,0\n",
            r"labels\.csv:2: file '\.\./\.\./etc/passwd' must be a relative path inside images/",
            id="dotdot",
        ),
        pytest.param(
            "sub/../a.png,0\n", r"labels\.csv:2: file 'sub/\.\./a\.png' must be", id="inner-dotdot"
        ),
        pytest.param("/etc/passwd,0\n", r"labels\.csv:2: file '/etc/passwd' must be", id="abs"),
        pytest.param(r"C:\x.png,0" "\n", r"labels\.csv:2: file 'C:\\\\x\.png' must be", id="drive"),
        pytest.param(r"..\x.png,0" "\n", r"labels\.csv:2: file '\.\.\\\\x\.png' must", id="win"),
    ],
)
def test_bad_rows_name_the_line(folder, rows, message):
    _csv(folder, "file,label\n" + rows)
    with pytest.raises(DataError, match=message):
        load_labeled_images(folder)


def test_a_missing_header_names_what_it_found(folder):
    _csv(folder, "name,class\na.png,1\n")
    with pytest.raises(
        DataError,
        match=r"labels\.csv:1: expected columns file,label \(header "
        r"is \['name', 'class'\]\)",
    ):
        load_labeled_images(folder)


def test_a_row_symlinked_outside_images_is_refused(folder, tmp_path_factory, png):
    outside = png(tmp_path_factory.mktemp("elsewhere") / "secret.png")
    (folder / "images" / "link.png").symlink_to(outside)
    _csv(folder, "file,label\na.png,0\nlink.png,1\n")
    with pytest.raises(
        DataError,
        match=r"labels\.csv:3: file 'link\.png' resolves outside "
        r"images/",
    ):
        load_labeled_images(folder)


def test_a_symlink_inside_images_is_fine(folder):
    (folder / "images" / "alias.png").symlink_to(folder / "images" / "a.png")
    _csv(folder, "file,label\nalias.png,0\nb.png,1\n")
    assert load_labeled_images(folder).labels == [0, 1]


def test_a_class_folder_symlink_to_outside_is_refused(tmp_path, tmp_path_factory, png):
    (tmp_path / "cat").mkdir()
    png(tmp_path / "cat" / "ok.png")
    outside = png(tmp_path_factory.mktemp("elsewhere") / "secret.png")
    (tmp_path / "cat" / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"cat.link\.png: resolves outside .* \(a symlink to "):
        load_labeled_images(tmp_path)
