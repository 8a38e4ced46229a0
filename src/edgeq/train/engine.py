"""The one training loop of edgeq: quantization-aware training, distillation and
pruning recovery each supply an objective (a module computing the loss) and call `fit`.

The loop is plain PyTorch and reads top to bottom: shuffle, slice a batch, augment,
forward, check the loss, backward, clip, step; at the end of each epoch evaluate,
checkpoint and write the metrics. Under torchrun the same code runs in every process
with the objective wrapped in DistributedDataParallel; alone, it is world size 1.

Determinism: the shuffle order comes from a `DistributedSampler` (also with one
process), the augmentation from ``(seed, epoch, sample index)`` alone, and the global
RNG (dropout) is re-seeded from ``(seed, epoch, rank)`` at each epoch start, so a run,
a resumed run and a run on another number of processes see the same batches and the
same augmented images.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset, DistributedSampler

from edgeq.atomic import write_text_atomic
from edgeq.quant import SpecError
from edgeq.train import distributed
from edgeq.train.augment import augment_batch, sample_seed
from edgeq.train.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    TrainingError,
    check_config,
    check_signature,
    load_checkpoint,
    model_signature,
    save_checkpoint,
)

__all__ = [
    "METRICS_CSV",
    "METRICS_JSON",
    "Optimizer",
    "Schedule",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingError",
    "build_optimizer",
    "build_scheduler",
    "first_nonfinite_output",
    "first_nonfinite_parameter",
    "fit",
    "lr_factor",
]

SCHEMA_VERSION = 1
METRICS_CSV = "train_metrics.csv"
METRICS_JSON = "train_metrics.json"
_RNG_SALT = 0x5EED  # keeps the global RNG's seeds apart from the augmentation's
_ENGINE_KEYS = ("epoch", "loss", "lr", "images_per_s", "seconds", "grad_norm")


class Optimizer(StrEnum):
    """``adamw``: AdamW (default betas); ``sgd``: SGD, momentum 0.9, Nesterov."""

    ADAMW = "adamw"
    SGD = "sgd"


class Schedule(StrEnum):
    """``cosine``: per step, after the warmup, from ``lr`` to 0 at the end of training;
    ``constant``: ``lr`` after the warmup."""

    COSINE = "cosine"
    CONSTANT = "constant"


def _fail(name: str, value: object, allowed: str) -> SpecError:
    return SpecError(f"TrainConfig.{name}={value!r}: {allowed}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (a frozen, validated spec; strings are resolved to enums).

    ``batch_size`` is the global batch: under torchrun each of the W processes takes
    ``batch_size / W`` samples per step, so the update equals a single-process step on
    the whole batch. ``crop_scale`` is the area fraction of the random resized crop.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = Optimizer.ADAMW
    schedule: str = Schedule.COSINE
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    seed: int = 0
    augment: bool = True
    crop_scale: tuple[float, float] = (0.35, 1.0)

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("warmup_steps", 0), ("seed", 0)):
            v = getattr(self, name)
            if not _is_int(v) or v < low or v >= 2**63:
                raise _fail(name, v, f"must be an integer >= {low}")
        if not _is_number(self.lr) or self.lr <= 0:
            raise _fail("lr", self.lr, "must be a finite number > 0")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise _fail("weight_decay", self.weight_decay, "must be a finite number >= 0")
        if self.grad_clip is not None and (not _is_number(self.grad_clip) or self.grad_clip <= 0):
            raise _fail("grad_clip", self.grad_clip, "must be a number > 0, or None (no clipping)")
        if not isinstance(self.augment, bool):
            raise _fail("augment", self.augment, "must be true or false")
        object.__setattr__(self, "optimizer", _choice(Optimizer, "optimizer", self.optimizer))
        object.__setattr__(self, "schedule", _choice(Schedule, "schedule", self.schedule))
        for name in ("lr", "weight_decay") + (("grad_clip",) if self.grad_clip else ()):
            object.__setattr__(self, name, float(getattr(self, name)))
        s = self.crop_scale
        if (
            not isinstance(s, tuple | list)
            or len(s) != 2
            or not all(_is_number(x) for x in s)
            or not 0 < s[0] <= s[1] <= 1
        ):
            raise _fail("crop_scale", s, "must be two numbers (min, max) with 0 < min <= max <= 1")
        object.__setattr__(self, "crop_scale", (float(s[0]), float(s[1])))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-ready) with a kind and a schema version."""
        d: dict[str, Any] = {"kind": "train", "schema_version": SCHEMA_VERSION}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = (
                v.value if isinstance(v, StrEnum) else list(v) if isinstance(v, tuple) else v
            )
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`.

        Raises:
            SpecError: an unknown key (each named with the closest allowed one), another
                schema version, or a value `TrainConfig` refuses.
        """
        data = dict(data)
        kind = data.pop("kind", "train")
        if kind != "train":
            raise SpecError(f"kind={kind!r}: a TrainConfig has kind 'train'")
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(
                f"TrainConfig schema_version={version!r}: this edgeq reads {SCHEMA_VERSION}"
            )
        names = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), names, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise SpecError(
                f"unknown TrainConfig field(s) {', '.join(hints)}; allowed: {', '.join(names)}"
            )
        return cls(**data)


def _choice(enum_cls: type[StrEnum], name: str, value: object) -> StrEnum:
    allowed = [e.value for e in enum_cls]
    if isinstance(value, str) and value in allowed:
        return enum_cls(value)
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise _fail(name, value, f"must be one of {', '.join(allowed)}{hint}")


@dataclass
class TrainData:
    """Training samples: ``inputs`` (N, C, H, W) normalized float images (any (N, ...)
    tensor when augmentation is off) and ``labels`` (N, ...) or None (unlabeled)."""

    inputs: torch.Tensor
    labels: torch.Tensor | None = None


@dataclass
class TrainResult:
    """``history``: one dict per epoch (rank 0's, with `evaluate`'s numbers); ``steps``:
    optimizer steps of the whole run (resumed ones included); ``seconds``: this call's
    wall time; ``checkpoint``: the last checkpoint written, if any."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    checkpoint: Path | None = None


def lr_factor(step: int, total_steps: int, *, warmup_steps: int, schedule: str) -> float:
    """The fraction of the base learning rate used by optimizer step ``step`` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (the
    first step already learns). Then 1 (``constant``) or a half cosine from 1 at the
    first step after the warmup to 0 at step ``total_steps`` (one past the last step).

    Example: ``lr_factor(5, 10, warmup_steps=0, schedule="cosine") == 0.5``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if Schedule(schedule) is Schedule.CONSTANT:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) over parameter groups, with the config's
    lr and weight decay (a group's own ``lr``/``weight_decay`` wins)."""
    if config.optimizer == Optimizer.SGD:
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> LambdaLR:
    """A per-step `LambdaLR` following `lr_factor` (call ``step()`` after each
    optimizer step)."""

    def factor(step: int) -> float:
        return lr_factor(
            step, total_steps, warmup_steps=config.warmup_steps, schedule=config.schedule
        )

    return LambdaLR(optimizer, factor)


def _strip(name: str) -> str:
    while name.startswith(("student.", "module.")):
        name = name.split(".", 1)[1]
    return name


def _nonfinite(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    if isinstance(value, tuple | list):
        return any(_nonfinite(v) for v in value)
    if isinstance(value, Mapping):
        return any(_nonfinite(v) for v in value.values())
    return False


def first_nonfinite_parameter(module: nn.Module, *, grads: bool = False) -> str | None:
    """The name (``student.``/``module.`` prefix stripped) of the first parameter of
    ``module`` that holds a nan or inf (``grads=True``: whose gradient does); None when
    all are finite."""
    for name, p in module.named_parameters():
        t = p.grad if grads else p
        if t is not None and _nonfinite(t):
            return _strip(name)
    return None


class _Found(Exception):
    """Raised by the hook that found a non-finite output: no need to run further."""


def first_nonfinite_output(
    module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None
) -> str | None:
    """Re-run ``module(inputs, labels)`` without gradients, with a forward hook on every
    submodule, and return the name (prefix stripped) of the first one, in execution
    order, whose output holds a nan or inf; None when every output is finite."""
    found: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def check(_m: nn.Module, _args: Any, output: Any) -> None:
            if _nonfinite(output):
                found.append(name)
                raise _Found

        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n]
    try:
        with torch.no_grad():
            module(inputs, labels)
    except Exception:  # _Found, or whatever the nan broke further on: the answer is found
        pass
    finally:
        for h in handles:
            h.remove()
    return _strip(found[0]) if found else None


class _Length(Dataset[int]):
    """What `DistributedSampler` needs of a data set: its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _check_data(data: TrainData, config: TrainConfig, world: int) -> int:
    x, y = data.inputs, data.labels
    if not isinstance(x, torch.Tensor) or x.ndim == 0:
        raise TrainingError(f"TrainData.inputs must be a tensor of shape (N, ...); got {x!r}")
    n = x.shape[0]
    if n == 0:
        raise TrainingError("the training data is empty (inputs hold 0 samples)")
    if y is not None and (y.ndim == 0 or y.shape[0] != n):
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} labels"
        raise TrainingError(f"{n} inputs but {got}: give one label per input, or labels=None")
    if config.augment and (x.ndim != 4 or not x.is_floating_point()):
        raise TrainingError(
            f"augment=True needs (N, C, H, W) float images; the inputs are "
            f"{tuple(x.shape)} {x.dtype}. Pass augment=False for other inputs"
        )
    b = config.batch_size
    if world > 1 and (b < world or b % world):
        raise TrainingError(
            f"batch_size={b} must be a multiple of the {world} torchrun processes "
            f"(WORLD_SIZE={world}): it is the global batch, split evenly over them"
        )
    if n < world:
        raise TrainingError(f"{n} samples cannot be split over WORLD_SIZE={world} processes")
    return n


def _param_groups(
    objective: nn.Module, parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    if parameters is None:
        items: list[Any] = [p for p in objective.parameters() if p.requires_grad]
    else:
        items = list(parameters)
    if items and all(isinstance(g, dict) for g in items):
        groups = [dict(g, params=list(g["params"])) for g in items]
    elif all(isinstance(p, torch.Tensor) for p in items):
        groups = [{"params": items}]
    else:
        raise TrainingError("parameters: give tensors or parameter-group dicts, not a mix")
    if not any(g["params"] for g in groups):
        raise TrainingError(
            "nothing to train: no parameter given, or none of the objective's parameters "
            "has requires_grad=True"
        )
    return groups


def _unpack(out: object) -> tuple[torch.Tensor, Mapping[str, Any]]:
    if (
        isinstance(out, tuple | list)
        and len(out) == 2
        and isinstance(out[0], torch.Tensor)
        and out[0].ndim == 0
        and isinstance(out[1], Mapping)
    ):
        return out[0], out[1]
    raise TrainingError(
        "the objective's forward(inputs, labels) must return (loss, logs): a scalar tensor "
        f"and a dict of floats; it returned {type(out).__name__}"
        + (f" of shape {tuple(out[0].shape)}" if isinstance(out, tuple) and out else "")
    )


@dataclass
class _Run:
    """What one `fit` call works with (a bag, so that the helpers stay short)."""

    objective: nn.Module
    model: nn.Module  # the objective, or its DDP wrapper
    data: TrainData
    config: TrainConfig
    dist: distributed.Distributed
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    trained: list[torch.Tensor]
    per_rank: int
    steps_per_epoch: int
    path: Path | None  # the checkpoint
    epoch: int = 0  # epochs done
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    last_good: tuple[Path, int] | None = None

    def where_to_restart(self) -> str:
        if self.last_good is None:
            return "no checkpoint yet"
        return f"the last good checkpoint is {self.last_good[0]} (epoch {self.last_good[1]})"


def _resume(run: _Run, log: Callable[[str], None]) -> None:
    path = run.path
    if path is None:
        raise TrainingError("resume=True needs a run_dir holding checkpoint.pt")
    if not path.exists():
        log(f"no checkpoint at {path}: training from the start")
        return
    ckpt = load_checkpoint(path)
    check_signature(ckpt, run.objective, path)
    check_config(ckpt, run.config.to_dict(), path, may_differ={"epochs"})
    try:
        run.objective.load_state_dict(ckpt.model)
        run.optimizer.load_state_dict(ckpt.optimizer)
        run.scheduler.load_state_dict(ckpt.scheduler)
    except (RuntimeError, ValueError, KeyError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise TrainingError(f"{path}: cannot restore the training state ({first})") from e
    # a changed epoch count changes the cosine schedule: the next step's lr follows the
    # new one (with the same epochs this is the saved value, bit for bit)
    sched = run.scheduler
    for g, base, factor in zip(
        run.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
    ):
        g["lr"] = base * factor(sched.last_epoch)
    run.epoch, run.step, run.history = ckpt.epoch, ckpt.step, list(ckpt.history)
    run.last_good = (path, ckpt.epoch)
    log(f"resuming {path} after epoch {ckpt.epoch} (step {ckpt.step})")


def _nonfinite_loss(run: _Run, value: float, x: torch.Tensor, y: torch.Tensor | None) -> str:
    what = "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    parts = [f"step {run.step + 1} (epoch {run.epoch + 1}): the loss is {what}"]
    param = first_nonfinite_parameter(run.objective)
    if param is not None:
        parts.append(f"the parameters became non-finite (first: {param}); lower lr or clip")
    layer = first_nonfinite_output(run.objective, x, y)
    parts.append(
        f"the first non-finite output was at layer {layer}"
        if layer is not None
        else "every layer's output was finite: the loss computation itself is non-finite"
    )
    parts.append(run.where_to_restart())
    return "; ".join(parts)


def _train_step(run: _Run, order: list[int], i: int) -> tuple[float, Mapping[str, Any], float]:
    """One optimizer step on this rank's share of global batch ``i``; returns the loss
    averaged over ranks, the objective's logs and the gradient norm (nan: no clipping)."""
    cfg, data = run.config, run.data
    idx = torch.tensor(order[i * run.per_rank : (i + 1) * run.per_rank])
    x = data.inputs[idx]
    if cfg.augment:
        x = augment_batch(x, idx, seed=cfg.seed, epoch=run.epoch, scale=cfg.crop_scale)
    x = x.to(run.device, non_blocking=True)
    y = None if data.labels is None else data.labels[idx].to(run.device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    loss, logs = _unpack(run.model(x, y))
    # every rank takes the same decision: one rank's nan makes the mean nan
    value = float(distributed.all_reduce_mean(loss.detach().float().reshape(1), run.dist))
    if not math.isfinite(value):
        raise TrainingError(_nonfinite_loss(run, value, x, y))
    loss.backward()
    norm = math.nan
    if cfg.grad_clip is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(run.trained, cfg.grad_clip))
        if not math.isfinite(norm):
            grad = first_nonfinite_parameter(run.objective, grads=True)
            raise TrainingError(
                f"step {run.step + 1} (epoch {run.epoch + 1}): the gradient norm is {norm} "
                f"(first non-finite gradient: {grad}); the update was not applied; "
                f"{run.where_to_restart()}"
            )
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return value, logs, norm


def _train_epoch(run: _Run, show: bool) -> dict[str, float]:
    from tqdm import tqdm

    cfg, world = run.config, run.dist.world_size
    torch.manual_seed(sample_seed(cfg.seed ^ _RNG_SALT, run.epoch, run.dist.rank))
    sampler: DistributedSampler[int] = DistributedSampler(
        _Length(run.data.inputs.shape[0]),
        num_replicas=world,
        rank=run.dist.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    sampler.set_epoch(run.epoch)
    order = list(sampler)
    run.objective.train()
    loss_sum, norm_sum, lr = 0.0, 0.0, 0.0
    log_sums: dict[str, float] = {}
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
               unit="step", disable=None if show else True, leave=False)  # fmt: skip
    start = time.perf_counter()
    with bar:
        for i in range(run.steps_per_epoch):
            lr = float(run.optimizer.param_groups[0]["lr"])
            value, logs, norm = _train_step(run, order, i)
            loss_sum, norm_sum = loss_sum + value, norm_sum + norm
            for k, v in logs.items():
                v = v.detach() if isinstance(v, torch.Tensor) else v
                log_sums[k] = log_sums.get(k, 0.0) + float(v)
            rate = (i + 1) * run.per_rank * world / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{value:.4g}", img_s=f"{rate:.0f}", refresh=False)
            bar.update()
    seconds = time.perf_counter() - start
    n = run.steps_per_epoch
    keys = sorted(log_sums)
    means = distributed.all_reduce_mean(
        torch.tensor([log_sums[k] / n for k in keys], dtype=torch.float64), run.dist
    ).tolist()
    row: dict[str, float] = {
        "epoch": run.epoch + 1,
        "loss": loss_sum / n,
        "lr": lr,
        "images_per_s": n * run.per_rank * world / seconds,
        "seconds": seconds,
    }
    if cfg.grad_clip is not None:
        row["grad_norm"] = norm_sum / n
    row.update((k, v) for k, v in zip(keys, means, strict=True) if k not in row)
    return row


def _evaluate(run: _Run, evaluate: Callable[[], Mapping[str, float]]) -> dict[str, float]:
    run.objective.eval()  # dropout off, as deployed; BatchNorm statistics untouched
    try:
        numbers = evaluate()
    finally:
        run.objective.train()
    if not isinstance(numbers, Mapping):
        raise TrainingError(f"evaluate() must return a dict of numbers, not {numbers!r}")
    taken = [k for k in numbers if k in _ENGINE_KEYS]
    if taken:
        raise TrainingError(
            f"evaluate() returned {', '.join(map(repr, taken))}, a name the engine's metrics "
            f"use ({', '.join(_ENGINE_KEYS)}); rename it (e.g. 'val_{taken[0]}')"
        )
    return {str(k): float(v) for k, v in numbers.items()}


def _write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    names: dict[str, None] = {}
    for row in history:
        names.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(names), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / METRICS_CSV, buf.getvalue())
    body = {"format": "edgeq-train-metrics", "schema_version": SCHEMA_VERSION, "history": history}
    write_text_atomic(run_dir / METRICS_JSON, json.dumps(body, indent=2) + "\n")


def _end_epoch(run: _Run, row: dict[str, float], log: Callable[[str], None]) -> None:
    """Checkpoint (rank 0) and log; refuse to save parameters that are no longer finite."""
    run.history.append(row)
    run.epoch += 1
    bad = first_nonfinite_parameter(run.objective)
    if bad is not None:
        raise TrainingError(
            f"epoch {run.epoch}: the parameters became non-finite in the last step (first: "
            f"{bad}); this epoch's checkpoint was not written; {run.where_to_restart()}"
        )
    if run.path is not None and run.dist.is_main:
        ckpt = Checkpoint(
            model=run.objective.state_dict(),
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            epoch=run.epoch,
            step=run.step,
            history=run.history,
            config=run.config.to_dict(),
            signature=model_signature(run.objective),
            # a record only: each epoch re-seeds the RNG from (seed, epoch, rank)
            rng={"cpu": torch.get_rng_state()},
        )
        save_checkpoint(run.path, ckpt)
        _write_metrics(run.path.parent, run.history)
    if run.path is not None:
        run.last_good = (run.path, run.epoch)
    extra = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in _ENGINE_KEYS)
    log(
        f"epoch {run.epoch}/{run.config.epochs}: loss {row['loss']:.4f}, lr {row['lr']:.3g}, "
        f"{row['images_per_s']:.0f} img/s, {row['seconds']:.1f} s" + (f", {extra}" if extra else "")
    )


def _device_of(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def fit(
    objective: nn.Module,
    data: TrainData,
    config: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    evaluate: Callable[[], Mapping[str, float]] | None = None,
    parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    find_unused_parameters: bool = False,
) -> TrainResult:
    """Train ``objective`` on ``data``: the one training loop of edgeq.

    Each step takes a full global batch of ``config.batch_size`` samples (the last,
    incomplete batch of an epoch is dropped: ``N // batch_size`` steps per epoch); when
    N < batch_size an epoch is a single step on all N samples (under torchrun, on
    ``N - N % WORLD_SIZE`` of them). Under torchrun each process takes
    ``batch_size / WORLD_SIZE`` samples of each batch; the objective is wrapped in
    DistributedDataParallel, which averages the gradients, so with per-rank mean losses
    the update equals a single-process step on the global batch. Rank 0 alone writes
    files, logs and shows progress. The process group is initialized (NCCL for a CUDA
    model, else gloo) when it is not yet, and then destroyed at the end.

    Args:
        objective: ``forward(inputs, labels_or_None) -> (loss, logs)``, a scalar loss
            tensor and a dict of floats (averaged per epoch into the history). It owns
            the trained model; a teacher should be kept out of its state dict.
        data: the training samples.
        config: optimizer, schedule, epochs, batch size, augmentation, seed.
        run_dir: where ``checkpoint.pt`` (every epoch, atomically), ``train_metrics.csv``
            and ``train_metrics.json`` are written; None: nowhere.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists (weights,
            optimizer, schedule, history; the run's result equals an uninterrupted one
            bit for bit). Only ``epochs`` may differ from the checkpoint's config.
        evaluate: called at the end of every epoch in rank 0, with the objective in
            eval mode (dropout off; training mode again after it); its numbers join
            the epoch's row of the history.
        parameters: what to optimize (tensors or parameter-group dicts); default: the
            objective's parameters with ``requires_grad``.
        progress: show a tqdm bar (hidden when stderr is not a terminal).
        log: receives one line per epoch (rank 0).
        find_unused_parameters: passed to DistributedDataParallel.

    Returns:
        The per-epoch history (epoch, loss, lr, images_per_s, seconds, grad_norm when
        clipping, the logs' means, evaluate's numbers), the steps done and the seconds.
        Under torchrun the loss and the logs are averaged over the processes (every
        process must log the same keys).

    Raises:
        TrainingError: empty data, one label per input missing, a batch size that
            torchrun's processes cannot share, a checkpoint of another model or config
            or a damaged one (resume), ``run_dir`` holding a checkpoint without
            ``resume``, a non-finite loss or gradient norm (naming the step, the first
            layer whose output is not finite and the last good checkpoint).

    Example::

        result = fit(objective, TrainData(images, labels), TrainConfig(epochs=3), run_dir=out)
    """
    start = time.perf_counter()
    device = _device_of(objective)
    # inputs are checked before joining the process group: a bad batch size is an
    # error, not a hang waiting for the other processes
    n = _check_data(data, config, distributed.world_size())
    groups = _param_groups(objective, parameters)
    dist = distributed.setup(device)
    try:
        # the global RNG (dropout) is seeded inside fit, and the caller's is left as it was
        with torch.random.fork_rng(devices=_cuda_indices(device)):
            run = _prepare(objective, data, config, dist, device, run_dir, n, groups)
            say = log if dist.is_main else _quiet
            if resume:
                _resume(run, say)
            elif run.path is not None and run.path.exists():
                raise TrainingError(
                    f"{run.path} exists: pass resume=True to continue that run, or use "
                    "another run_dir"
                )
            if dist.active:
                run.model = DistributedDataParallel(
                    objective,
                    device_ids=[device] if device.type == "cuda" else None,
                    find_unused_parameters=find_unused_parameters,
                )
            while run.epoch < config.epochs:
                row = _train_epoch(run, show=progress and dist.is_main)
                if evaluate is not None and dist.is_main:
                    row.update(_evaluate(run, evaluate))
                _end_epoch(run, row, say)
            # the DDP wrapper (and its reducer, which holds the process group) goes
            # before the group does, and every rank reaches this point before any
            # destroys the group: a rank tearing down gloo while its peer still holds
            # it aborted the peer once in CI ("terminate called without an active
            # exception")
            run.model = objective
            distributed.synchronize(dist)
    finally:
        distributed.teardown(dist)
    saved = run.last_good[0] if run.last_good else None
    return TrainResult(run.history, run.step, time.perf_counter() - start, saved)


def _cuda_indices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [torch.cuda.current_device() if device.index is None else device.index]


def _quiet(_line: str) -> None:
    pass


def _prepare(
    objective: nn.Module,
    data: TrainData,
    config: TrainConfig,
    dist: distributed.Distributed,
    device: torch.device,
    run_dir: str | Path | None,
    n: int,
    groups: list[dict[str, Any]],
) -> _Run:
    per_rank = min(config.batch_size, n) // dist.world_size
    # DistributedSampler(drop_last) gives each rank n // world indices; only full
    # batches are used: n // batch_size steps (or 1 when n < batch_size)
    steps = (n // dist.world_size) // per_rank
    optimizer = build_optimizer(groups, config)
    return _Run(
        objective=objective,
        model=objective,
        data=data,
        config=config,
        dist=dist,
        device=device,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, steps * config.epochs),
        trained=[p for g in groups for p in g["params"]],
        per_rank=per_rank,
        steps_per_epoch=steps,
        path=None if run_dir is None else Path(run_dir) / CHECKPOINT_NAME,
    )
