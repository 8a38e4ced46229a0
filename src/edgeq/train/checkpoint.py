"""Training checkpoints: one file, written atomically, read without unpickling code.

A checkpoint holds what a run needs to continue exactly where it stopped: the
objective's state dict, the optimizer's and the scheduler's state, the epochs and
steps done, the metrics history, the RNG state, the training config and a signature
of the model (its state dict's names, shapes and dtypes). It is written to a
temporary file beside the target and renamed into place (`edgeq.atomic`), so the
previous checkpoint stays intact until a complete new one replaces it, and it is read
with ``torch.load(weights_only=True)``.

`TrainingError` lives here, the lowest module that raises it; `edgeq.train.engine`
exports it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeq.atomic import write_atomic

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpoint",
    "TrainingError",
    "check_config",
    "check_signature",
    "load_checkpoint",
    "model_signature",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "edgeq-train-checkpoint"
SCHEMA_VERSION = 1

Signature = list[tuple[str, tuple[int, ...], str]]


class TrainingError(RuntimeError):
    """Training cannot start or go on (the message says why and what to do)."""


@dataclass
class Checkpoint:
    """Everything `edgeq.train.engine.fit` needs to resume a run."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int  # epochs done
    step: int  # optimizer steps done
    history: list[dict[str, float]]
    config: dict[str, Any]
    signature: Signature
    rng: dict[str, Any] = field(default_factory=dict)


def model_signature(module: nn.Module) -> Signature:
    """Sorted ``(name, shape, dtype)`` of every entry of ``module``'s state dict
    (parameters and persistent buffers): what a checkpoint must match to load."""
    return sorted(
        (name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in module.state_dict().items()
    )


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file in the same folder,
    then ``os.replace``): ``path`` holds the old checkpoint or the new one, never a
    part of either.

    Returns:
        ``path``.
    """
    # not dataclasses.asdict: it deep-copies every tensor of the state dicts
    body = {f.name: getattr(checkpoint, f.name) for f in fields(checkpoint)}
    body.update(format=_FORMAT, schema_version=SCHEMA_VERSION)
    # tuples stay tuples through torch.save; lists keep the file readable as plain data
    body["signature"] = [[n, list(s), d] for n, s, d in checkpoint.signature]
    return write_atomic(path, lambda tmp: torch.save(body, tmp))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (tensors land on the CPU).

    Raises:
        TrainingError: the file is missing, truncated, corrupt, or not an edgeq
            training checkpoint (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint there")
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged zip/pickle data
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrainingError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {reason}); delete it "
            "to start over"
        ) from e
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise TrainingError(f"{path}: not an edgeq training checkpoint")
    if body.get("schema_version") != SCHEMA_VERSION:
        raise TrainingError(
            f"{path}: checkpoint schema_version={body.get('schema_version')!r}; this edgeq "
            f"reads {SCHEMA_VERSION}"
        )
    names = [f.name for f in fields(Checkpoint)]
    missing = [n for n in names if n not in body]
    if missing:
        raise TrainingError(f"{path}: the checkpoint lacks {', '.join(missing)}")
    values = {n: body[n] for n in names}
    values["signature"] = [(n, tuple(s), d) for n, s, d in body["signature"]]
    return Checkpoint(**values)


def _describe(entry: tuple[str, tuple[int, ...], str] | None) -> str:
    if entry is None:
        return "absent"
    return f"shape {list(entry[1])} {entry[2]}"


def check_signature(checkpoint: Checkpoint, module: nn.Module, path: str | Path) -> None:
    """Refuse a checkpoint of another model.

    Raises:
        TrainingError: one line naming the first state-dict key (in sorted order) whose
            presence, shape or dtype differs, and the checkpoint file.
    """
    ours = {e[0]: e for e in model_signature(module)}
    theirs = {e[0]: e for e in checkpoint.signature}
    for key in sorted(ours.keys() | theirs.keys()):
        if ours.get(key) != theirs.get(key):
            raise TrainingError(
                f"{path} is a checkpoint of another model: first difference at {key!r} "
                f"(checkpoint: {_describe(theirs.get(key))}; this model: "
                f"{_describe(ours.get(key))}); use another run folder or resume=False"
            )


def check_config(
    checkpoint: Checkpoint, config: dict[str, Any], path: str | Path, *, may_differ: set[str]
) -> None:
    """Refuse a checkpoint written with other training settings.

    Args:
        checkpoint: the loaded checkpoint.
        config: this run's settings (``TrainConfig.to_dict()``).
        path: the checkpoint file, for the message.
        may_differ: settings that may change on resume (``epochs``).

    Raises:
        TrainingError: naming the first differing setting, both values and the file.
    """
    saved = checkpoint.config
    for key in sorted(saved.keys() | config.keys()):
        if key in may_differ:
            continue
        a, b = saved.get(key), config.get(key)
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            a, b = list(a), list(b)
        if a != b:
            raise TrainingError(
                f"{path} was written with {key}={saved.get(key)!r}; this run has "
                f"{key}={config.get(key)!r}. Only {', '.join(sorted(may_differ))} may change "
                "on resume: use the checkpoint's settings or another run folder"
            )
