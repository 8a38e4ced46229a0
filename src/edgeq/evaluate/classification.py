"""Evaluate any model on labeled images: accuracy, and fidelity to a reference model.

A model is anything `as_predictor` understands (an ONNX file run by ONNX Runtime, a
`QuantizedModel`, an ``nn.Module``); a metric is a plug-in: a function of
``(logits, labels, ref_logits)`` returning a number, or None when it does not apply
(fidelity metrics without a reference). Register new ones in `METRICS` (detection mAP
or embedding similarity fit the same signature) without touching the command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeq.quant import sqnr_db as quant_sqnr_db

Metric = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], "float | None"]
Predictor = Callable[[torch.Tensor], np.ndarray]


def top1(logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> float:
    return float((logits.argmax(1) == labels).mean())


def top5(logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> float:
    k = min(5, logits.shape[1])
    best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((best == labels[:, None]).any(1).mean())


def agreement(logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> float | None:
    """Share of inputs where the top-1 class equals the reference model's."""
    return None if ref is None else float((logits.argmax(1) == ref.argmax(1)).mean())


def sqnr_db(logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> float | None:
    """Signal-to-quantization-noise ratio of the logits against the reference, in dB
    (inf when identical; `edgeq.quant.sqnr_db`)."""
    return None if ref is None else quant_sqnr_db(ref, logits)


def kl_divergence(logits: np.ndarray, labels: np.ndarray, ref: np.ndarray | None) -> float | None:
    """Mean KL(reference softmax || model softmax), in nats."""
    if ref is None:
        return None

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(logits)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


METRICS: dict[str, Metric] = {
    "top1": top1,
    "top5": top5,
    "agreement": agreement,
    "sqnr_db": sqnr_db,
    "kl": kl_divergence,
}


class NotAClassifierError(ValueError):
    """Classification scoring was given a model without one image input and one
    logits output (names what it has)."""


def as_predictor(model: Any, *, threads: int = 2) -> Predictor:
    """Turn an ONNX path, a `QuantizedModel` or an ``nn.Module`` into batch -> logits.

    Raises:
        NotAClassifierError: the model has several inputs or outputs (an ONNX file: on
            loading; a module: on its first batch), or its output is not a tensor of
            shape (N, classes). Top-1 of one output of a detector would be no figure.
    """
    if isinstance(model, str | Path):
        from edgeq.runtime import ort_session

        sess = ort_session(model, threads=threads)
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise NotAClassifierError(
                f"{model}: classification scoring needs one input and one logits output; "
                f"this model has inputs {[i.name for i in inputs]} and outputs "
                f"{[o.name for o in outputs]}"
            )
        name = inputs[0].name
        return lambda x: _logits(sess.run(None, {name: x.numpy()})[0], str(model))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            out = model(x)
        if not isinstance(out, torch.Tensor):
            raise NotAClassifierError(
                f"{type(getattr(model, 'module', model)).__name__}: classification scoring "
                f"needs one logits tensor; the model returns a {type(out).__name__}"
            )
        return _logits(out.detach().numpy(), type(model).__name__)

    return run


def _logits(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim != 2:
        raise NotAClassifierError(
            f"{where}: classification scoring needs logits of shape (N, classes); the "
            f"output has shape {tuple(y.shape)}"
        )
    return y


def predict(
    predictor: Predictor, batches: Iterable[torch.Tensor], *, progress: str | None = None
) -> np.ndarray:
    """Logits for every batch, concatenated (``progress``: label of a progress bar)."""
    items = batches
    if progress:
        from tqdm import tqdm

        items = tqdm(batches, desc=progress, unit="batch", disable=None)
    return np.concatenate([predictor(x) for x in items])


def score(
    logits: np.ndarray,
    labels: np.ndarray,
    ref_logits: np.ndarray | None = None,
    metrics: dict[str, Metric] | None = None,
) -> dict[str, float]:
    """Every metric that applies (None results are left out)."""
    out = {}
    for name, fn in (metrics or METRICS).items():
        v = fn(logits, labels, ref_logits)
        if v is not None:
            out[name] = v
    return out
