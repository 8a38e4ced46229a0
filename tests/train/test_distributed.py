"""torchrun plumbing, and a real 2-process DDP run against the same run in one process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.distributed as dist

from edgeq.train.distributed import (
    Distributed,
    all_reduce_mean,
    is_main_process,
    main_only,
    setup,
    synchronize,
    teardown,
    torchrun_world,
    world_size,
)

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "ddp_train_script.py"
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_torchrun")
def test_a_plain_run_is_world_size_1() -> None:
    assert torchrun_world() is None
    assert world_size() == 1
    d = setup(torch.device("cpu"))
    assert d == Distributed(1, 0, 0, created=False)
    assert d.is_main
    assert not d.active
    assert not dist.is_initialized()
    synchronize(d)  # alone: no barrier, no group needed
    teardown(d)  # nothing to destroy
    assert is_main_process()


def test_torchrun_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_world() == (4, 3, 1)
    assert world_size() == 4
    assert not is_main_process()


@pytest.mark.parametrize(
    ("world", "rank", "match"),
    [
        ("two", "0", r"WORLD_SIZE='two' must be an integer"),
        ("2", "2", r"WORLD_SIZE=2, RANK=2: the rank must be in 0\.\.WORLD_SIZE-1"),
    ],
    ids=["not-int", "rank-outside"],
)
def test_bad_torchrun_environment_is_refused(
    world: str, rank: str, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(ValueError, match=match):
        torchrun_world()


def test_main_only_runs_in_rank_0(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    say = main_only(lines.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert say("from rank 1") is None
    monkeypatch.setenv("RANK", "0")
    say("from rank 0")
    assert lines == ["from rank 0"]


def test_all_reduce_mean_alone_is_a_copy() -> None:
    values = torch.tensor([1.5, -2.0])
    out = all_reduce_mean(values, Distributed())
    assert torch.equal(out, values)
    assert out.data_ptr() != values.data_ptr()


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ddp_train_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this PyTorch build has no gloo backend for a CPU DDP run",
)
@pytest.mark.parametrize("kind", ["float", "qat"])
def test_two_process_ddp_run_equals_one_process(
    tmp_path: Path, no_torchrun: None, kind: str
) -> None:
    out = tmp_path / "ddp_state.pt"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(SCRIPT), str(out), kind]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    script = _script()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, data = script.build(kind)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        assert not dist.is_initialized()
        assert world_size() == 1
        result = script.fit(
            model,
            data,
            script.CONFIG,
            parameters=script.groups(model, kind),
            progress=False,
            log=lambda _line: None,
        )
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 8  # 64 samples / batch 16, 2 epochs
    single = model.state_dict()
    assert single.keys() == ddp.keys()
    scales_moved: list[bool] = []
    for k in single:
        diff = float((single[k] - ddp[k]).abs().max())
        moved = float((single[k] - start[k]).abs().max())
        print(f"{k}: |single - ddp| {diff:.2e}, moved {moved:.2e}")
        # the same updates up to float reduction order (8 + 8 samples vs 16)
        torch.testing.assert_close(ddp[k], single[k], atol=1e-6, rtol=1e-5)
        if k.endswith(("weight", "bias")):
            assert moved > 1e-3, f"{k} barely trained: the comparison would prove nothing"
        elif k.endswith("scale"):
            scales_moved.append(moved > 0)  # learned step sizes move far less
    if kind == "qat":
        assert sum(scales_moved) >= len(scales_moved) // 2, "the scales did not train"
