"""Load a user model from a reference string, recording how to rebuild it.

References:

- ``torchvision:NAME``: a torchvision architecture (``torchvision.models.get_model``),
  weights from a local file (``weights=``); without one, random initialization.
- ``package.module:factory``: any Python callable returning an ``nn.Module``.
- a ``.pt2`` (torch.export ExportedProgram) or TorchScript file: recognised and refused
  with the reason (edgeq rewrites the Python module graph with torch.fx, which neither
  format keeps); pass the ``module:factory`` that builds the model instead.

The returned model carries ``edgeq_source`` (a JSON-able dict), which
`edgeq.save` writes so that `edgeq.load` can rebuild the architecture without
unpickling code.
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


class ModelLoadError(ValueError):
    """A model reference or weights file cannot be used (names which and why)."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch checkpoint (``weights_only=True``:
    no code is unpickled). A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is
    unwrapped.

    Raises:
        ModelLoadError: the file is missing, corrupt, or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p))
        else:
            obj = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise ModelLoadError(
            f"{p}: not a valid checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{p}: holds no state dict of tensors (got {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _apply_weights(model: nn.Module, weights: str | Path, ref: str) -> None:
    state = load_state_dict_file(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[:3]
        raise ModelLoadError(f"{weights}: does not fit {ref}: {' '.join(first)}") from e


def build_from_source(source: dict[str, Any]) -> nn.Module:
    """Rebuild an architecture (random weights) from a recorded ``edgeq_source``."""
    kind = source.get("kind")
    if kind == "torchvision":
        import torchvision

        name = source["name"]
        try:
            model = torchvision.models.get_model(name, weights=None)
        except ValueError as e:
            names = torchvision.models.list_models(module=torchvision.models)
            import difflib

            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ModelLoadError(f"torchvision:{name}: unknown architecture{hint}") from e
    elif kind == "factory":
        ref = source["ref"]
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ModelLoadError(f"{ref}: cannot import {module_name!r} ({e})") from e
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ModelLoadError(f"{ref}: {module_name} has no callable {attr!r}")
        model = factory()
        if not isinstance(model, nn.Module):
            raise ModelLoadError(f"{ref}: returned {type(model).__name__}, not an nn.Module")
    else:
        raise ModelLoadError(f"unknown model source {source!r}")
    model.eval()
    model.edgeq_source = dict(source)  # type: ignore[assignment]
    return model


def _refuse_file(p: Path) -> None:
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("constants.pkl") for n in names) and any("code/" in n for n in names):
            what = "a TorchScript file"
        elif (
            any(
                n.endswith(("serialized_exported_program.json", "models/model.json")) for n in names
            )
            or p.suffix == ".pt2"
        ):
            what = "an ExportedProgram (.pt2) file"
        else:
            what = "a checkpoint (weights only)"
    else:
        what = "not a model file edgeq can read"
    raise ModelLoadError(
        f"{p}: {what}. edgeq rewrites the Python module graph (torch.fx), which "
        "TorchScript and ExportedProgram files do not keep; pass the Python factory "
        "instead (MODEL=package.module:function) with --weights FILE"
    )


def load_model(ref: str, weights: str | Path | None = None) -> nn.Module:
    """Build the model named by ``ref`` (see the module docstring) in eval mode.

    Raises:
        ModelLoadError: unknown architecture or factory, bad weights file, or a model
            file format edgeq cannot rewrite (naming the reason).
    """
    path = Path(ref)
    if ":" not in ref or path.exists():
        if not path.exists():
            raise ModelLoadError(
                f"{ref!r}: not a file, and not torchvision:NAME or package.module:factory"
            )
        _refuse_file(path)
    prefix, _, rest = ref.partition(":")
    if prefix == "torchvision":
        source = {"kind": "torchvision", "name": rest}
    else:
        source = {"kind": "factory", "ref": ref}
    model = build_from_source(source)
    if weights is not None:
        _apply_weights(model, weights, ref)
    return model
