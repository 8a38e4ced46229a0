"""ONNX files over protobuf's 2 GB limit: weights in a data file beside the model.

A protobuf message cannot exceed 2 GB, so the FP32 graphs of the largest torchvision
classifiers (ViT-H/14, RegNetY-128GF: 2.5 GB of weights) cannot be one ``.onnx``
file. ONNX's external data format keeps the graph in ``NAME.onnx`` and the tensors in
a second file that the model names; ONNX Runtime reads it from beside the model.

Both files must change together. The data file's name carries a digest of its
contents (``NAME.onnx.<12 hex>.data``): an export writes both into a temporary
folder, moves the data file into place first and the model last, so at every moment
the ``.onnx`` in place names a data file that holds exactly its tensors; data files
of earlier exports to the same path are removed afterwards. Same model, same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import onnx

# protobuf's limit is 2 GiB; keep room for the graph itself and the metadata
_INLINE_LIMIT = 2**31 - 2**26
_MIN_EXTERNAL_BYTES = 1024  # smaller tensors (scales, shapes) stay in the graph


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model's tensors would take it past protobuf's 2 GB limit."""
    return initializer_bytes(model) > _INLINE_LIMIT


def save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` as ``path`` plus its data file, atomically (see the module
    docstring); ``model``'s tensors are moved out of it in the process."""
    digest = hashlib.sha256()
    for t in model.graph.initializer:
        if len(t.raw_data) >= _MIN_EXTERNAL_BYTES:
            digest.update(t.name.encode())
            digest.update(t.raw_data)
    location = f"{path.name}.{digest.hexdigest()[:12]}.data"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_model = Path(tmp) / path.name
        onnx.save_model(
            model,
            str(tmp_model),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=location,
            size_threshold=_MIN_EXTERNAL_BYTES,
        )
        onnx.checker.check_model(str(tmp_model))
        for f in (Path(tmp) / location, tmp_model):
            os.chmod(f, 0o644)
        os.replace(Path(tmp) / location, path.parent / location)
        os.replace(tmp_model, path)
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{12}\.data")
    for old in path.parent.iterdir():
        if old.name != location and pattern.fullmatch(old.name):
            old.unlink()
    return path


def onnx_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model: the ``.onnx`` file and any external data file
    it names."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for t in model.graph.initializer
        for entry in t.external_data
        if entry.key == "location"
    }
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)
