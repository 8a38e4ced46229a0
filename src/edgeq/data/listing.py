"""List a labeled image folder: ``images/`` + ``labels.csv``, or one subfolder per class.

Every file must stay inside the folder: a ``labels.csv`` row that is absolute, holds
``..`` or resolves (through symlinks) outside ``images/`` is refused, as is a symlink
in a class folder that points outside the data folder; a data folder should not be
able to make edgeq read ``/etc/passwd``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from edgeq.data.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Listing:
    """Files, their labels, and where each label was read (for error messages)."""

    files: list[Path]
    labels: list[int]
    origins: list[str]


def _unsafe(value: str) -> bool:
    parts = value.replace("\\", "/").split("/")
    absolute = PurePosixPath(value).is_absolute() or bool(PureWindowsPath(value).drive)
    return absolute or value.startswith("\\") or ".." in parts


def _row_path(images: Path, row: dict[str, str | None], where: str) -> Path:
    value = row.get("file")
    if not value:
        raise DataError(f"{where}: expected columns file,label (empty file name)")
    if _unsafe(value):
        raise DataError(f"{where}: file {value!r} must be a relative path inside images/")
    path = images / value
    if not path.resolve().is_relative_to(images.resolve()):
        raise DataError(f"{where}: file {value!r} resolves outside images/ (a symlink?)")
    return path


def _row_label(row: dict[str, str | None], where: str) -> int:
    try:
        label = int(row.get("label") or "")
    except ValueError as e:
        raise DataError(f"{where}: expected columns file,label ({e})") from e
    if label < 0:
        raise DataError(f"{where}: label {label} is negative (labels are class indices, 0 up)")
    return label


def read_labels_csv(root: Path) -> Listing:
    """The rows of ``root/labels.csv``, sorted by file name.

    Raises:
        DataError: a missing column, a bad label, a duplicate file, or a file outside
            ``images/``, naming the line.
    """
    csv_path = root / "labels.csv"
    images = root / "images"
    out = Listing([], [], [])
    seen: dict[Path, int] = {}
    # utf-8-sig: spreadsheets save CSV with a byte order mark, which would become part
    # of the first column's name
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"file", "label"} <= set(reader.fieldnames or []):
            raise DataError(
                f"{csv_path}:1: expected columns file,label (header is {reader.fieldnames})"
            )
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            path = _row_path(images, row, where)
            label = _row_label(row, where)
            key = path.resolve()
            if key in seen:
                raise DataError(
                    f"{where}: {row['file']!r} is listed twice (lines {seen[key]} and "
                    f"{reader.line_num})"
                )
            seen[key] = reader.line_num
            out.files.append(path)
            out.labels.append(label)
            out.origins.append(f"{where} ({row['file']})")
    order = sorted(range(len(out.files)), key=lambda i: out.files[i].name)
    return Listing(
        [out.files[i] for i in order],
        [out.labels[i] for i in order],
        [out.origins[i] for i in order],
    )


def read_class_folders(root: Path) -> Listing:
    """Images in one subfolder per class; labels are the sorted folder indices.

    Raises:
        DataError: a file that resolves outside ``root`` (a symlink), naming it.
    """
    out = Listing([], [], [])
    inside = root.resolve()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    for label, cls in enumerate(classes):
        for p in sorted((root / cls).iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not p.resolve().is_relative_to(inside):
                raise DataError(f"{p}: resolves outside {root} (a symlink to {p.resolve()})")
            out.files.append(p)
            out.labels.append(label)
            out.origins.append(f"{p} (class folder {cls!r})")
    return out
