"""The packed artifact: a folder that restores the simulated model bit for bit.

    model/
      edgeq.json          what to rebuild and how (written last: its presence marks a
                          complete artifact; it holds the tensors file's SHA-256)
      model.safetensors   integer weights packed to their bit width (uint8 bytes),
                          int32 biases, every scale and zero point, float leftovers

Loading never unpickles code: the architecture is rebuilt from the recorded source
(``torchvision:NAME`` or ``package.module:factory``), captured and rewritten the same
way `edgeq.quantize` does, and the stored levels and qparams are put back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import fx

from edgeq import __version__
from edgeq.atomic import write_atomic
from edgeq.graph.capture import capture
from edgeq.graph.fold_bn import fold_batchnorm
from edgeq.graph.insert import feeding_quantizer
from edgeq.graph.qmodules import (
    ActivationQuantizer,
    IntegerOp,
    QuantConv2d,
    QuantLinear,
)
from edgeq.models.loaders import build_from_source
from edgeq.ptq.config import Mode, PTQConfig
from edgeq.ptq.static import QuantizedModel, output_quantizer, rewrite
from edgeq.quant import pack_bits, unpack_bits

FORMAT = "edgeq-packed"
SCHEMA_VERSION = 1
META = "edgeq.json"
TENSORS = "model.safetensors"


class ArtifactError(ValueError):
    """An artifact cannot be written or read (names the file and the reason)."""


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

    Raises:
        ArtifactError: the model has no recorded source (build it with
            `edgeq.load_model`, or set ``model.edgeq_source``).
    """
    if qmodel.source is None:
        raise ArtifactError(
            "cannot save: the model's architecture source is unknown. Load it with "
            "edgeq.load_model('torchvision:NAME' or 'package.module:factory'), or set "
            "model.edgeq_source = {'kind': 'factory', 'ref': 'package.module:factory'} "
            "before edgeq.quantize"
        )
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
        if key in skip or ".observer." in f".{key}":
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
        "config": qmodel.config.to_dict(),
        "layers": layers,
        "tensors_sha256": _sha256(tensors_path),
    }
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    write_atomic(out / META, lambda tmp: Path(tmp).write_text(text))
    return out


def _read_meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / META
    if not meta_path.is_file():
        raise ArtifactError(f"{folder}: no {META} (not an edgeq artifact, or an interrupted save)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{meta_path}: corrupt JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{meta_path}: schema_version {meta.get('schema_version')!r}; this edgeq "
            f"reads {SCHEMA_VERSION}"
        )
    return meta


def load(path: str | Path) -> QuantizedModel:
    """Restore the simulated quantized model saved by `save` (bit-exact).

    ``path`` is the artifact folder or a run folder holding one in ``model/``.
    ``float_module`` of the result is None (the float weights are not stored).

    Raises:
        ArtifactError: missing or corrupt files, a checksum mismatch, or tensors that
            do not fit the rebuilt architecture.
    """
    folder = Path(path)
    if not (folder / META).is_file() and (folder / "model" / META).is_file():
        folder = folder / "model"
    meta = _read_meta(folder)
    tensors_path = folder / TENSORS
    if not tensors_path.is_file():
        raise ArtifactError(f"{folder}: {TENSORS} is missing")
    if _sha256(tensors_path) != meta["tensors_sha256"]:
        raise ArtifactError(f"{tensors_path}: checksum mismatch (file changed or truncated)")
    tensors = load_file(str(tensors_path))
    config = PTQConfig.from_dict(meta["config"])
    model = build_from_source(meta["source"])
    float_gm = fold_batchnorm(capture(model))
    gm, report = rewrite(float_gm, config)
    if config.mode is Mode.FLOAT16:
        state16 = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
        try:
            gm.load_state_dict(state16, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"{tensors_path}: does not fit the rebuilt model: {e}") from e
        return QuantizedModel(gm, None, config, report, 0.0, dict(meta["source"]))
    layers = _layers(gm, quantized_only=False)
    for name, info in meta["layers"].items():
        if name not in layers:
            raise ArtifactError(f"{folder}: layer {name!r} is not in the rebuilt model")
        m = layers[name]
        m.weight_scale = torch.empty(info["weight_scale_shape"])
        m.weight_zero_point = torch.zeros(info["weight_scale_shape"], dtype=torch.int32)
        if info["bias"] is not None and m.bias is None:  # added by bias correction
            m.bias = torch.nn.Parameter(torch.zeros(info["shape"][0]))
    state = {k: v for k, v in tensors.items() if not k.endswith(("weight_q", "bias_q"))}
    try:
        missing, unexpected = gm.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ArtifactError(f"{tensors_path}: does not fit the rebuilt model: {e}") from e
    restored = {f"{n}.{p}" for n in meta["layers"] for p in ("weight", "bias", "weight_zero_point")}
    missing = [k for k in missing if k not in restored and ".observer." not in f".{k}"]
    if unexpected or missing:
        raise ArtifactError(
            f"{tensors_path}: does not fit the rebuilt model (unexpected {unexpected[:5]}, "
            f"missing {missing[:5]})"
        )
    modules = dict(gm.named_modules())
    for m in modules.values():
        if isinstance(m, ActivationQuantizer):
            m.observing = False
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if isinstance(m, QuantConv2d | QuantLinear) and node.target in meta["layers"]:
            src = feeding_quantizer(node.args[0], modules)
            if src is not None:
                m.attach_io(src, output_quantizer(node, modules))
        elif isinstance(m, IntegerOp):
            m.freeze_io(
                [feeding_quantizer(a, modules) for a in node.args], output_quantizer(node, modules)
            )
    # levels last (the bias levels' scale needs the input scale attached above); layers
    # inside other modules (an LSTM's products) are not graph nodes but are stored too
    for name, info in meta["layers"].items():
        numel = int(torch.Size(info["shape"]).numel())
        levels = unpack_bits(
            tensors[f"{name}.weight_q"], info["bits"], signed=info["signed"], numel=numel
        ).reshape(info["shape"])
        layers[name].set_levels(levels, tensors.get(f"{name}.bias_q"))
    return QuantizedModel(gm, None, config, report, 0.0, dict(meta["source"]))
