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

Trust: reading a TorchScript or ExportedProgram file can run code it carries, and a
recorded ``factory`` source imports a module and calls it. `load_model` reads model
files and `build_from_source` builds either only with ``trust_model_file=True``
(`trust_required` says what would run); a ``package.module:factory`` reference typed
into `load_model` is the caller's own choice and needs no flag. Exceptions a factory
raises (``SystemExit`` included, ``KeyboardInterrupt`` excepted) become
`ModelLoadError` naming the factory.
"""

from __future__ import annotations

import importlib
import math
import pickle
import re
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

MAX_INPUT_NUMEL = 1 << 26  # example inputs: 256 MB of float32


class ModelLoadError(ValueError):
    """A model reference or weights file cannot be used (names which and why)."""


FACTORY_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
OPT_IN = "trust_model_file=True (on the command line: --trust-model-file)"
_FILE_READERS = {
    "torchscript": "a TorchScript file, read with torch.jit.load",
    "exported_program": "an ExportedProgram file, read with torch.export.load",
}


def trust_required(source: dict[str, Any]) -> str | None:
    """Why building ``source`` needs ``trust_model_file=True`` (None: it does not).

    A factory source imports a module and calls into it; a TorchScript or
    ExportedProgram source reads a file whose loading can run code. Nothing is
    imported, opened or stat'ed here.
    """
    kind = source.get("kind")
    if kind == "factory":
        module_name, _, attr = str(source.get("ref")).partition(":")
        what = f"import the Python module {module_name!r} and call its {attr!r}"
    elif kind in _FILE_READERS:
        what = f"read {source.get('path')!r}, {_FILE_READERS[str(kind)]}"
    elif kind == "hf":
        what = f"read the Hugging Face model folder {source.get('path')!r} with transformers"
    else:
        return None
    return (
        f"building this model would {what}, which can run arbitrary code; "
        f"if you trust it, pass {OPT_IN}"
    )


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
    except pickle.UnpicklingError as e:
        raise ModelLoadError(_unpickling_message(p, e)) from e
    except Exception as e:  # torch raises many types for corrupt files
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


def _unpickling_message(path: Path, e: pickle.UnpicklingError) -> str:
    # torch's own message advises weights_only=False, which would run the pickled
    # code: never echoed
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if found is None:
        return f"{path}: not a valid checkpoint (corrupt, or not a torch checkpoint)"
    return (
        f"{path}: not a valid checkpoint: it holds pickled Python objects other than "
        f"tensors (such as {found.group(1)}), and edgeq does not unpickle code. Save "
        "the weights alone, torch.save(model.state_dict(), PATH) or a .safetensors "
        "file, and pass that"
    )


def _apply_weights(model: nn.Module, weights: str | Path, ref: str) -> None:
    state = load_state_dict_file(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[:3]
        raise ModelLoadError(f"{weights}: does not fit {ref}: {' '.join(first)}") from e


def _hf_model(path_or_package: str, weights: str | Path | None) -> nn.Module:
    from edgeq.models.huggingface import HFModelError, load_hf_capture

    if weights is not None:
        raise ModelLoadError(f"hf:{path_or_package}: the folder holds its weights; drop --weights")
    try:
        return load_hf_capture(path_or_package)
    except HFModelError as e:
        raise ModelLoadError(str(e)) from e


def build_from_source(source: dict[str, Any], *, trust_model_file: bool = False) -> nn.Module:
    """Rebuild an architecture (random weights) from a recorded ``edgeq_source``.

    Args:
        source: ``{"kind": "torchvision", "name": ...}``, ``{"kind": "factory",
            "ref": ...}`` or a model file's source (`edgeq.models.exported.source_for`).
        trust_model_file: allow a factory source (imports and calls it) and a
            TorchScript or ExportedProgram source (reads the file, which can run code).

    Raises:
        ModelLoadError: an untrusted factory or model file source (nothing is
            imported or read), an unknown architecture, or a factory that fails.

    Example:
        >>> build_from_source({"kind": "torchvision", "name": "resnet18"}).fc.out_features
        1000
    """
    if not isinstance(source, dict):
        raise ModelLoadError(f"model source must be a dict, got {type(source).__name__}")
    refusal = trust_required(source)
    if refusal is not None and not trust_model_file:
        raise ModelLoadError(f"{_describe_source(source)}: {refusal}")
    return _build(source)


def _describe_source(source: dict[str, Any]) -> str:
    if source.get("kind") == "factory":
        return f"factory {source.get('ref')!r}"
    if source.get("kind") == "hf":
        return f"Hugging Face folder {source.get('path')!r}"
    return f"model file {source.get('path')!r}"


def _build(source: dict[str, Any]) -> nn.Module:
    kind = source.get("kind")
    if kind == "torchvision":
        model = _torchvision_model(source.get("name"))
    elif kind == "factory":
        model = _call_factory(source.get("ref"))
    elif kind in ("torchscript", "exported_program"):
        return _from_file_source(source)
    elif kind == "hf":
        return _hf_model(str(source.get("path")), None)
    else:
        raise ModelLoadError(f"unknown model source {source!r}")
    model.eval()
    model.edgeq_source = dict(source)  # type: ignore[assignment]
    if source.get("capture") == "export":
        model = _export_capture(model, _input_shape(source))
    return model


def _torchvision_model(name: object) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if not isinstance(name, str) or name not in names:
        import difflib

        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ModelLoadError(f"torchvision:{name}: unknown architecture{hint}")
    return torchvision.models.get_model(name, weights=None)


def _call_factory(ref: object) -> nn.Module:
    if not isinstance(ref, str) or not FACTORY_REF.fullmatch(ref):
        raise ModelLoadError(f"factory {ref!r}: expected 'package.module:factory'")
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # importing runs the module: SystemExit included
        raise ModelLoadError(f"{ref}: cannot import {module_name!r} ({_brief(e)})") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"{ref}: {module_name} has no callable {attr!r}")
    try:
        model = factory()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a factory's SystemExit must not end the caller
        raise ModelLoadError(f"factory {ref} raised {_brief(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{ref}: returned {type(model).__name__}, not an nn.Module")
    return model


def _brief(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _input_shape(source: dict[str, Any]) -> tuple[int, ...]:
    shape = source.get("input_shape")
    sizes = list(shape) if isinstance(shape, list | tuple) else []
    ok = 1 <= len(sizes) <= 8
    ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in sizes)
    if not ok or math.prod(sizes) > MAX_INPUT_NUMEL:  # the example input is allocated
        raise ModelLoadError(
            f"input_shape={shape!r}: expected 1 to 8 positive sizes, at most "
            f"{MAX_INPUT_NUMEL} values in all"
        )
    return tuple(sizes)


def _export_capture(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    from edgeq.graph.lift import LiftError, export_and_lift

    source = dict(getattr(model, "edgeq_source", {}))
    try:
        lifted = export_and_lift(model, (torch.zeros(input_shape),))
    except LiftError as e:
        raise ModelLoadError(str(e)) from e
    except Exception as e:  # torch.export raises many types (a wrong input rank, ...)
        raise ModelLoadError(f"torch.export capture failed ({_brief(e)})") from e
    lifted.edgeq_source = source  # type: ignore[assignment]
    return lifted


def _file_model(path: Path, input_shape: tuple[int, ...], trust: bool) -> nn.Module:
    kind = file_kind(path)  # reads the zip's list of names only
    if kind not in ("torchscript", "exported_program"):
        hint = (
            "; pass the architecture (torchvision:NAME or package.module:factory) "
            f"with --weights {path}"
            if kind == "checkpoint"
            else ""
        )
        raise ModelLoadError(f"{path}: {describe(kind)}{hint}")
    if not trust:
        raise ModelLoadError(
            f"{path}: {describe(kind)}; loading it can run code the file carries "
            f"(torch.jit.load / torch.export.load). If you trust it, pass {OPT_IN}"
        )
    source = source_for(path, kind, input_shape)
    return _from_file_source(source)


def _from_file_source(source: dict[str, Any]) -> nn.Module:
    if not isinstance(source.get("path"), str):
        raise ModelLoadError(f"model file source: path={source.get('path')!r} is not a string")
    path = Path(source["path"])
    input_shape = _input_shape(source)
    digest = source.get("sha256")
    if digest is not None and not isinstance(digest, str):
        raise ModelLoadError(f"{path}: sha256={digest!r} is not a string")
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    if digest is not None and sha256_of(path) != digest:
        raise ModelLoadError(
            f"{path}: the model file changed since this model was saved (SHA-256 differs)"
        )
    try:
        model = load_model_file(path, source["kind"], input_shape)
    except ModelFileError as e:
        raise ModelLoadError(str(e)) from e
    model.edgeq_source = dict(source)  # type: ignore[assignment]
    return model


def load_model(
    ref: str,
    weights: str | Path | None = None,
    *,
    trust_model_file: bool = False,
    capture: str = "fx",
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
) -> nn.Module:
    """Build the model named by ``ref`` (see the module docstring) in eval mode.

    Args:
        ref: ``torchvision:NAME``, ``package.module:factory`` (imported and called: the
            caller's choice) or the path of a TorchScript / ExportedProgram file.
        weights: a state dict file (``.safetensors`` or a ``weights_only`` checkpoint).
        trust_model_file: read a TorchScript or ExportedProgram file (loading one can
            run code it carries). Without it such a file is refused after only its
            zip's list of names has been read.
        capture: ``"export"`` captures the model with torch.export and lifts it back
            into modules (`edgeq.graph.lift`), for models whose torch.fx trace keeps
            shape arithmetic the exporter cannot translate (vision transformers,
            ShuffleNet).
        input_shape: the example input for that capture and for converting a
            TorchScript file.

    Raises:
        ModelLoadError: unknown architecture or factory, a factory that raises, bad
            weights file, an untrusted model file, or a model file that cannot be read
            (naming the reason).

    Example:
        >>> load_model("torchvision:resnet18").edgeq_source
        {'kind': 'torchvision', 'name': 'resnet18'}
    """
    path = Path(ref)
    if ":" not in ref or path.exists():
        if not path.exists():
            raise ModelLoadError(
                f"{ref!r}: not a file, and not torchvision:NAME or package.module:factory"
            )
        model = _file_model(path, tuple(input_shape), trust_model_file)
        if weights is not None:
            _apply_weights(model, weights, ref)
        return model
    if capture not in ("fx", "export"):
        raise ModelLoadError(f"capture={capture!r}: expected 'fx' or 'export'")
    prefix, _, rest = ref.partition(":")
    if prefix == "hf":
        return _hf_model(rest, weights)
    if prefix == "torchvision":
        source: dict[str, Any] = {"kind": "torchvision", "name": rest}
    else:
        source = {"kind": "factory", "ref": ref}
    model = _build(source)  # a factory the caller typed needs no trust flag
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
