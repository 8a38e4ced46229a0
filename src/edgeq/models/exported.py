"""Models saved as files: torch.export ExportedPrograms (``.pt2``) and TorchScript.

Both hold ATen-level graphs, not the Python modules edgeq rewrites, so they go
through `edgeq.graph.lift`: convolutions, linear layers and norms become modules
again, named after their parameters (``features.0.0``). TorchScript is first
converted to an ExportedProgram (``torch._export.converter``) on an example input
of batch 2, which leaves the batch dimension dynamic.

Trust: like ``torch.jit.load`` and ``torch.export.load`` themselves, reading these
files may run the code they carry, so edgeq reads one only when asked to:
``edgeq.load_model(path, trust_model_file=True)`` (command line:
``--trust-model-file``). Without it, `file_kind` (the zip's list of names) is all
that happens before the refusal. The artifact that `edgeq.save` writes records the
file's path and SHA-256; ``edgeq.load`` neither opens, stats nor hashes that path
without ``trust_model_file=True``, and with it refuses a file that has changed since.
The SHA-256 is no proof of safety: whoever can edit the artifact can rewrite it.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import fx

from edgeq.graph.lift import LiftError, fold_constants, lift_aten

DEFAULT_INPUT_SHAPE = (2, 3, 224, 224)


class ModelFileError(ValueError):
    """A model file cannot be read or converted (names the file and why)."""


def file_kind(path: Path) -> str:
    """'torchscript', 'exported_program', 'checkpoint' or 'unknown'."""
    if not zipfile.is_zipfile(path):
        return "unknown"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith(("serialized_exported_program.json", "models/model.json")) for n in names):
        return "exported_program"
    if any(n.endswith("data.pkl") for n in names):
        return "checkpoint"
    return "unknown"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_file(
    path: Path, kind: str, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
) -> fx.GraphModule:
    """The model in ``path`` (``kind`` from `file_kind`) as a lifted GraphModule.

    ``input_shape`` is the example input TorchScript is converted on (its batch
    dimension stays dynamic when it is not 1); ExportedPrograms carry their own.

    Raises:
        ModelFileError: the file does not load, convert or lift.
    """
    with warnings.catch_warnings():  # torch's deprecation notes for jit, converter chatter
        warnings.simplefilter("ignore")
        try:
            if kind == "exported_program":
                program = torch.export.load(str(path))
            elif kind == "torchscript":
                from torch._export.converter import TS2EPConverter

                scripted = torch.jit.load(str(path), map_location="cpu")
                example = (torch.zeros(input_shape),)
                program = TS2EPConverter(scripted, example).convert()
            else:
                raise ModelFileError(f"{path}: not a TorchScript or ExportedProgram file")
        except ModelFileError:
            raise
        except Exception as e:  # torch raises many types for bad files and graphs
            what = "TorchScript" if kind == "torchscript" else "ExportedProgram"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelFileError(
                f"{path}: cannot load this {what} file ({type(e).__name__}: {first})"
            ) from e
    example = tuple(program.example_inputs[0]) if program.example_inputs else ()
    if kind == "torchscript":
        example = (torch.zeros(input_shape),)
    try:
        module = program.module()
        if example:
            module = fold_constants(module, example)
        return lift_aten(module, program.call_spec.out_spec)
    except LiftError as e:
        raise ModelFileError(f"{path}: {e}") from e


def describe(kind: str) -> str:
    return {
        "torchscript": "a TorchScript file",
        "exported_program": "an ExportedProgram (.pt2) file",
        "checkpoint": "a checkpoint (weights only, no architecture)",
    }.get(kind, "not a model file edgeq can read")


def source_for(path: Path, kind: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "kind": kind,
        "path": str(path.resolve()),
        "sha256": sha256_of(path),
        "input_shape": list(input_shape),
    }
