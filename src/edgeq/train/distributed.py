"""torchrun + DDP plumbing: one process per device, the same code with world size 1.

torchrun starts one process per device and tells each its place through the
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, plus the rendezvous address).
`setup` joins the process group when there is more than one process and notes whether
it created the group, so that `teardown` destroys only a group it created. Rank 0
alone writes files and prints: `is_main_process`, `main_only`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "Distributed",
    "all_reduce_mean",
    "is_main_process",
    "main_only",
    "setup",
    "synchronize",
    "teardown",
    "torchrun_world",
    "world_size",
]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``world_size`` processes, this one ``rank``
    (``local_rank`` on its machine); ``created``: `setup` initialized the group."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    created: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: gradients and metrics are reduced across them."""
        return self.world_size > 1


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def torchrun_world() -> tuple[int, int, int] | None:
    """``(world_size, rank, local_rank)`` from the environment torchrun sets; None when
    ``WORLD_SIZE`` is not set (a plain ``python`` run).

    Raises:
        ValueError: one of the variables is not an integer, or the rank is outside
            the world.
    """
    if "WORLD_SIZE" not in os.environ:
        return None
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK") if "RANK" in os.environ else 0
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"WORLD_SIZE={world}, RANK={rank}: the rank must be in 0..WORLD_SIZE-1")
    return world, rank, local


def world_size() -> int:
    """How many processes train together: the initialized group's size, else torchrun's
    ``WORLD_SIZE``, else 1. Initializes nothing (so inputs can be checked first)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    env = torchrun_world()
    return 1 if env is None else env[0]


def setup(device: torch.device) -> Distributed:
    """Join the process group of a torchrun launch, if there is one.

    An already initialized group (the caller's) is used as is. Otherwise, under
    torchrun with more than one process, the group is initialized from the
    environment: backend ``nccl`` when ``device`` is a CUDA device (which becomes this
    process's current device), else ``gloo``.

    Args:
        device: where the model lives.

    Returns:
        World size, rank, local rank and whether this call created the group.

    Raises:
        RuntimeError: torchrun asked for several processes but this PyTorch has no
            torch.distributed.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Distributed(world, rank, local, created=False)
    env = torchrun_world()
    if env is None or env[0] == 1:
        return Distributed(*(env or (1, 0, 0)))
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={env[0]} asks for distributed training, but this PyTorch build "
            "has no torch.distributed; run without torchrun"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Distributed(*env, created=True)


def synchronize(d: Distributed) -> None:
    """Wait until every process gets here (a barrier); nothing when alone.

    Call it on the success path only: a rank that raised never arrives, and the
    others would wait for the group's timeout."""
    if d.active and dist.is_initialized():
        dist.barrier()


def teardown(d: Distributed) -> None:
    """Destroy the process group if `setup` created it (a caller's group stays)."""
    if d.created and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, d: Distributed) -> torch.Tensor:
    """The mean of ``values`` over all processes (``values`` itself when alone).

    Returns a new tensor on ``values``' device; ``values`` is not changed. With
    NCCL the reduction runs on the current CUDA device and the result comes back."""
    if not d.active:
        return values.clone()
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = values.detach().to(device, torch.float64, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / d.world_size).to(values.device, values.dtype)


def is_main_process() -> bool:
    """True in rank 0 (and in a run without torchrun): the process that writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    env = torchrun_world()
    return env is None or env[1] == 0


def main_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """``fn`` wrapped to run in rank 0 only (other ranks get None): for loggers and
    file writers, e.g. ``main_only(print)`` or ``main_only(write_text_atomic)``."""

    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return fn(*args, **kwargs) if is_main_process() else None

    wrapped.__name__ = getattr(fn, "__name__", "main_only")
    wrapped.__doc__ = fn.__doc__
    return wrapped
