"""Load a user model from a reference string, recording how to rebuild it.

References:

- ``torchvision:NAME``: a torchvision architecture (``torchvision.models.get_model``),
  weights from a local file (``weights=``); without one, random initialization.
- ``package.module:factory``: any Python callable returning an ``nn.Module``.
- a ``.pt2`` (torch.export ExportedProgram) or TorchScript file: its ATen graph is
  lifted back into modules (`edgeq.models.exported`); weights come from the file.

The returned model carries ``edgeq_source`` (a JSON-able dict), which
`edgeq.save` writes so that `edgeq.load` can rebuild the architecture without
unpickling code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeq.models.exported import (
    DEFAULT_INPUT_SHAPE,
    ModelFileError,
    describe,
    file_kind,
    load_model_file,
    sha256_of,
    source_for,
)


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
    elif kind in ("torchscript", "exported_program"):
        return _from_file_source(source)
    else:
        raise ModelLoadError(f"unknown model source {source!r}")
    model.eval()
    model.edgeq_source = dict(source)  # type: ignore[assignment]
    if source.get("capture") == "export":
        model = _export_capture(model, tuple(source["input_shape"]))
    return model


def _export_capture(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    from edgeq.graph.lift import LiftError, export_and_lift

    source = dict(getattr(model, "edgeq_source", {}))
    try:
        lifted = export_and_lift(model, (torch.zeros(input_shape),))
    except LiftError as e:
        raise ModelLoadError(str(e)) from e
    lifted.edgeq_source = source  # type: ignore[assignment]
    return lifted


def _file_model(path: Path, input_shape: tuple[int, ...]) -> nn.Module:
    kind = file_kind(path)
    if kind not in ("torchscript", "exported_program"):
        hint = (
            "; pass the architecture (torchvision:NAME or package.module:factory) "
            f"with --weights {path}"
            if kind == "checkpoint"
            else ""
        )
        raise ModelLoadError(f"{path}: {describe(kind)}{hint}")
    source = source_for(path, kind, input_shape)
    return _from_file_source(source)


def _from_file_source(source: dict[str, Any]) -> nn.Module:
    path = Path(source["path"])
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    if "sha256" in source and sha256_of(path) != source["sha256"]:
        raise ModelLoadError(
            f"{path}: the model file changed since this model was saved (SHA-256 differs)"
        )
    try:
        model = load_model_file(path, source["kind"], tuple(source["input_shape"]))
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from e
    model.edgeq_source = dict(source)  # type: ignore[assignment]
    return model


def load_model(
    ref: str,
    weights: str | Path | None = None,
    *,
    capture: str = "fx",
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
) -> nn.Module:
    """Build the model named by ``ref`` (see the module docstring) in eval mode.

    ``capture="export"`` captures the model with torch.export and lifts it back into
    modules (`edgeq.graph.lift`), for models whose torch.fx trace keeps shape arithmetic
    the exporter cannot translate (vision transformers, ShuffleNet). ``input_shape`` is
    the example input for that capture and for converting a TorchScript file.

    Raises:
        ModelLoadError: unknown architecture or factory, bad weights file, or a model
            file that cannot be read (naming the reason).
    """
    path = Path(ref)
    if ":" not in ref or path.exists():
        if not path.exists():
            raise ModelLoadError(
                f"{ref!r}: not a file, and not torchvision:NAME or package.module:factory"
            )
        model = _file_model(path, tuple(input_shape))
        if weights is not None:
            _apply_weights(model, weights, ref)
        return model
    if capture not in ("fx", "export"):
        raise ModelLoadError(f"capture={capture!r}: expected 'fx' or 'export'")
    prefix, _, rest = ref.partition(":")
    if prefix == "torchvision":
        source: dict[str, Any] = {"kind": "torchvision", "name": rest}
    else:
        source = {"kind": "factory", "ref": ref}
    model = build_from_source(source)
    if weights is not None:  # before an export capture: it folds weight-derived constants
        _apply_weights(model, weights, ref)
    if capture == "export":
        model.edgeq_source = {  # type: ignore[assignment]
            **source,
            "capture": "export",
            "input_shape": list(input_shape),
        }
        model = _export_capture(model, tuple(input_shape))
    return model
