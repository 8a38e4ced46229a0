"""The packed artifact: a folder that restores the simulated model bit for bit.

    model/
      edgeq.json          what to rebuild and how (written last: its presence marks a
                          complete artifact; it holds the tensors file's SHA-256)
      model.safetensors   integer weights packed to their bit width (uint8 bytes),
                          int32 biases, every scale and zero point, float leftovers

Loading never unpickles code. The architecture is rebuilt from its record in the JSON
(`edgeq.artifact.architecture`: the float graph as data, torch.nn modules and the ops
edgeq places, so no source is needed, and a model whose structure a pass changed loads
with its own shapes) and rewritten the same way `edgeq.quantize` does; then the stored
levels and qparams are put back. A model whose graph cannot be recorded as data (a
custom leaf module, a function edgeq does not place) is rebuilt from its recorded
source instead, as artifacts of schema 2 always were.

Trust: an artifact is data from whoever wrote it, the SHA-256 included (it only
catches an interrupted or damaged save, not a forgery). So `load` checks every field
of the JSON (`edgeq.artifact.validate`) and every tensor against the rebuilt model
(`edgeq.artifact.fit`) before using it: any mismatch is an `ArtifactError` naming the
key. Without an architecture record: a ``torchvision:NAME`` source is always rebuilt
(the name must be one of torchvision's). A ``package.module:factory`` source
(imported and called) and a TorchScript or ExportedProgram source (a file whose
loading can run code) are refused unless ``trust_model_file=True`` (command line:
``--trust-model-file``); without it no path recorded in the JSON is opened, stat'ed
or hashed. With it, an exception the factory raises (``SystemExit`` too) becomes an
`ArtifactSourceError` naming the factory.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import fx

from edgeq import __version__
from edgeq.artifact.architecture import ArchitectureError, describe, rebuild
from edgeq.artifact.errors import ArtifactError, ArtifactSourceError
from edgeq.artifact.fit import (
    check_layers,
    check_qparams,
    check_tensors,
    expected_tensors,
    prepare_layers,
    stored_key,
)
from edgeq.artifact.validate import FORMAT, META, SCHEMA_VERSION, At, Meta, read_meta
from edgeq.atomic import write_atomic
from edgeq.graph.capture import capture
from edgeq.graph.fold_bn import fold_batchnorm
from edgeq.graph.insert import PlacementReport
from edgeq.graph.qmodules import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
)
from edgeq.graph.states import require_converted
from edgeq.models.loaders import ModelLoadError, build_from_source
from edgeq.ptq.config import Mode
from edgeq.ptq.static import QuantizedModel, rewrite
from edgeq.quant import SpecError, pack_bits, unpack_bits
from edgeq.runs import check_run_complete

TENSORS = "model.safetensors"


def _layers(
    gm: fx.GraphModule, *, quantized_only: bool = True
) -> dict[str, QuantConv2d | QuantLinear]:
    return {
        n: m
        for n, m in gm.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear) and (m.quantized or not quantized_only)
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(qmodel: QuantizedModel, path: str | Path) -> Path:
    """Write ``qmodel`` as a packed artifact folder at ``path`` (created if needed).

    The architecture is recorded as data (`edgeq.artifact.architecture`) when its
    graph allows, so loading needs no source; otherwise the recorded source rebuilds it
    (a warning says why).

    Raises:
        ArtifactError: the graph cannot be recorded and the model has no recorded
            source (build it with `edgeq.load_model`, or set ``model.edgeq_source``).
        StateError: the model is still in the training state (`edgeq.convert` it).
    """
    require_converted(qmodel.module, "saving")
    architecture = _architecture(qmodel)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    gm = qmodel.module
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    skip: set[str] = set()
    for name, m in _layers(gm).items():
        spec = m.weight_spec
        levels = m.weight_levels()
        tensors[f"{name}.weight_q"] = pack_bits(levels, spec.bits, signed=spec.signed)
        skip.add(f"{name}.weight")
        if spec.symmetric:  # zero points are all 0: not stored
            skip.add(f"{name}.weight_zero_point")
        bias_q = m.bias_levels()
        if bias_q is not None:
            tensors[f"{name}.bias_q"] = bias_q.contiguous()
            skip.add(f"{name}.bias")
        layers[name] = {
            "bits": spec.bits,
            "signed": spec.signed,
            "shape": list(levels.shape),
            "weight_scale_shape": list(m.weight_scale.shape),
            "bias": "int32" if bias_q is not None else ("float" if m.bias is not None else None),
        }
    float16 = qmodel.config.mode is Mode.FLOAT16
    for key, value in gm.state_dict().items():
        if key in skip or not stored_key(key):
            continue
        if float16 and value.is_floating_point():
            value = value.half()  # exact: quantize rounded every float to float16
        tensors[key] = value.detach().contiguous()
    tensors_path = out / TENSORS
    write_atomic(tensors_path, lambda tmp: save_file(tensors, tmp))
    meta = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "edgeq_version": __version__,
        "source": qmodel.source,
        "architecture": architecture,
        "config": qmodel.config.to_dict(),
        "layers": layers,
        "tensors_sha256": _sha256(tensors_path),
    }
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    write_atomic(out / META, lambda tmp: Path(tmp).write_text(text))
    return out


def _architecture(qmodel: QuantizedModel) -> dict[str, Any] | None:
    """The architecture record to save: kept from the artifact this model was loaded
    from, else described from its float graph; None (with a warning) when the graph
    cannot be recorded but a source can rebuild it."""
    if qmodel.architecture is not None:
        return qmodel.architecture
    reason = "the float graph is not kept (QuantizedModel.float_module is None)"
    if qmodel.float_module is not None:
        try:
            return describe(qmodel.float_module)
        except ArchitectureError as e:
            reason = str(e)
    if qmodel.source is None:
        raise ArtifactError(
            f"cannot save: the architecture cannot be recorded ({reason}) and the "
            "model's source is unknown. Load it with edgeq.load_model('torchvision:NAME' "
            "or 'package.module:factory'), or set model.edgeq_source = {'kind': "
            "'factory', 'ref': 'package.module:factory'} before edgeq.quantize"
        )
    warnings.warn(
        f"edgeq.save: the architecture is not recorded ({reason}); loading rebuilds it "
        f"from its source ({qmodel.source.get('kind')})",
        stacklevel=3,
    )
    return None


def load(path: str | Path, *, trust_model_file: bool = False) -> QuantizedModel:
    """Restore the simulated quantized model saved by `save` (bit-exact).

    Args:
        path: the artifact folder, or a run folder holding one in ``model/``.
        trust_model_file: rebuild a ``factory`` source (imports and calls it) or a
            TorchScript / ExportedProgram source (reads the file, which can run
            code). Leave it False for artifacts from others; torchvision sources
            need no trust.

    Returns:
        A `QuantizedModel`; its ``float_module`` is None (the float weights are not
        stored).

    Raises:
        ArtifactError: missing or corrupt files, a checksum mismatch, a field of the
            JSON or a tensor that is missing, ill-typed or does not fit the rebuilt
            architecture, or an untrusted source (nothing imported or read).
        ArtifactSourceError: the trusted source cannot be rebuilt (a factory that
            raises, a model file that changed); also a `ModelLoadError`.
        RunFolderError: ``path`` is (in) a run folder that was cut short or failed.

    Example:
        >>> qmodel = edgeq.load("runs/mnv2/model")  # doctest: +SKIP
    """
    folder = Path(path)
    if not (folder / META).is_file() and (folder / "model" / META).is_file():
        folder = folder / "model"
    check_run_complete(folder.parent if folder.name == "model" else folder)
    meta = read_meta(folder, trust_model_file=trust_model_file)
    tensors = _read_tensors(folder / TENSORS, meta.tensors_sha256)
    gm, report = _rebuild(meta, max_numel=4 * (folder / TENSORS).stat().st_size + 2**20)
    at = At(str(folder / TENSORS))
    layers = _layers(gm, quantized_only=False)
    check_layers(meta, layers)  # float16 artifacts list none
    prepare_layers(meta, layers)
    check_tensors(tensors, expected_tensors(gm, meta, layers), at)
    check_qparams(tensors, gm, meta.config, at)
    state = {k: v for k, v in tensors.items() if not k.endswith(("weight_q", "bias_q"))}
    if meta.config.mode is Mode.FLOAT16:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        gm.load_state_dict(state, strict=False)
    except RuntimeError as e:  # checked above: a torch-side surprise, named anyway
        raise ArtifactError(f"{at.file}: does not fit the rebuilt model: {e}") from e
    if meta.config.mode is not Mode.FLOAT16:
        try:
            _restore_levels(gm, meta, tensors, layers)
        except (SpecError, TypeError, ValueError, IndexError, RuntimeError) as e:
            # every input was checked; a config the checks let through still fails here
            raise ArtifactError(
                f"{meta.path}: cannot restore the levels ({type(e).__name__}: {e})"
            ) from e
    source = dict(meta.source) if meta.source is not None else None
    return QuantizedModel(
        gm, None, meta.config, report, 0.0, source, architecture=meta.architecture
    )


def _read_tensors(path: Path, digest: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{path.parent}: {TENSORS} is missing")
    if _sha256(path) != digest:
        raise ArtifactError(f"{path}: checksum mismatch (file changed or truncated)")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types, and OSError
        raise ArtifactError(f"{path}: not a readable safetensors file ({e})") from e


def _rebuild(meta: Meta, *, max_numel: int) -> tuple[fx.GraphModule, PlacementReport]:
    """The recorded architecture (else the source's, captured: trust was checked with
    the JSON), rewritten for the config.

    ``max_numel``: a bound on the recorded graph's values from the tensors file's size
    (every float weight is stored, in 2 bits at least)."""
    if meta.architecture is not None:
        float_gm = rebuild(
            meta.architecture, At(str(meta.path), "architecture"), max_numel=max_numel
        )
    else:
        assert meta.source is not None  # read_meta requires one of them
        try:
            model = build_from_source(meta.source, trust_model_file=True)
        except ModelLoadError as e:
            raise ArtifactSourceError(f"{meta.path}: source: {e}") from e
        float_gm = None
    try:
        if float_gm is None:
            float_gm = fold_batchnorm(capture(model))
        return rewrite(float_gm, meta.config)
    except Exception as e:  # capture and placement raise several types
        raise ArtifactError(
            f"{meta.path}: config does not apply to the rebuilt model ({type(e).__name__}: {e})"
        ) from e


def _restore_levels(
    gm: fx.GraphModule,
    meta: Meta,
    tensors: dict[str, torch.Tensor],
    layers: dict[str, QuantConv2d | QuantLinear],
) -> None:
    # the layers and integer ops share their quantizers (bound by `rewrite`), whose
    # scales and zero points came with the state dict
    for m in gm.modules():
        if isinstance(m, ActivationQuantizer):
            m.observing = False
            m.zero_point_float.copy_(m.zero_point.float())
    # levels last (the bias levels' scale is the input quantizer's, loaded above); layers
    # inside other modules (an LSTM's products) are not graph nodes but are stored too
    for name, info in meta.layers.items():
        m = layers[name]
        levels = unpack_bits(
            tensors[f"{name}.weight_q"], info.bits, signed=info.signed, numel=m.weight.numel()
        ).reshape(m.weight.shape)
        m.set_levels(levels, tensors.get(f"{name}.bias_q"))
