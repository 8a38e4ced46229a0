"""The training engine: known-answer schedules and clipping, determinism, resume bit
for bit, metrics files, and the errors that stop a run."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from edgeq.quant import SpecError
from edgeq.train.engine import (
    TrainConfig,
    TrainData,
    TrainingError,
    TrainResult,
    build_optimizer,
    build_scheduler,
    fit,
    lr_factor,
)

# ---------------------------------------------------------------- models and data


class Classifier(nn.Module):
    """Cross-entropy over a small conv net with dropout (it uses the global RNG)."""

    def __init__(self, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.student = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, 6, 3, padding=1),
                relu=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(2),
                flat=nn.Flatten(),
                drop=nn.Dropout(0.2),
                fc=nn.Linear(24, classes),
            )
        )
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        assert y is not None
        self.modes.append(self.training)
        logits = self.student(x)
        acc = (logits.argmax(1) == y).float().mean()
        return nn.functional.cross_entropy(logits, y), {"acc": float(acc), "seen": len(x)}


def images(n: int = 24, classes: int = 3) -> TrainData:
    g = torch.Generator().manual_seed(1)
    return TrainData(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def run(objective: nn.Module, data: TrainData, config: TrainConfig, **kw: Any) -> TrainResult:
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda _line: None)
    return fit(objective, data, config, **kw)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


SMALL = TrainConfig(epochs=3, batch_size=8, lr=1e-2, seed=4)

# ------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("epochs", 0, r"TrainConfig\.epochs=0: must be an integer >= 1"),
        ("batch_size", 2.5, r"TrainConfig\.batch_size=2\.5: must be an integer >= 1"),
        ("lr", -1.0, r"TrainConfig\.lr=-1\.0: must be a finite number > 0"),
        ("lr", math.nan, r"TrainConfig\.lr=nan"),
        ("weight_decay", -0.1, r"TrainConfig\.weight_decay=-0\.1: must be a finite number >= 0"),
        ("optimizer", "adam", r"TrainConfig\.optimizer='adam': must be one of adamw, sgd; did you"),
        ("schedule", "linear", r"TrainConfig\.schedule='linear': must be one of cosine, constant"),
        ("warmup_steps", -1, r"TrainConfig\.warmup_steps=-1"),
        ("grad_clip", 0.0, r"TrainConfig\.grad_clip=0\.0: must be a number > 0, or None"),
        ("seed", True, r"TrainConfig\.seed=True: must be an integer"),
        ("augment", "yes", r"TrainConfig\.augment='yes': must be true or false"),
        ("crop_scale", (0.8, 0.5), r"TrainConfig\.crop_scale=\(0\.8, 0\.5\): must be two numbers"),
        ("crop_scale", (0.0, 1.0), r"0 < min <= max <= 1"),
    ],
    ids=lambda v: str(v) if not isinstance(v, str) or len(v) < 20 else "msg",
)
def test_config_refuses_bad_values_naming_the_field(field: str, value: Any, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        TrainConfig(**{field: value})


def test_config_round_trips_and_resolves_strings() -> None:
    config = TrainConfig(epochs=2, optimizer="sgd", schedule="constant", crop_scale=[0.5, 1])  # type: ignore[arg-type]
    d = config.to_dict()
    assert d["optimizer"] == "sgd"
    assert d["crop_scale"] == [0.5, 1.0]
    assert d["kind"] == "train"
    assert d["schema_version"] == 1
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == config
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"kind": "quant"}, r"kind='quant': a TrainConfig has kind 'train'"),
        ({"schema_version": 2}, r"TrainConfig schema_version=2: this edgeq reads 1"),
    ],
    ids=["kind", "schema"],
)
def test_from_dict_refuses_other_kinds_and_versions(data: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        TrainConfig.from_dict(data)


def test_from_dict_names_every_unknown_key_and_the_closest() -> None:
    with pytest.raises(
        SpecError,
        match=r"unknown TrainConfig field\(s\) 'epoch' \(did you mean 'epochs'\?\), "
        r"'learning_rate'; allowed: epochs, batch_size",
    ):
        TrainConfig.from_dict({"epoch": 2, "learning_rate": 0.1})


# ---------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("step", "total", "warmup", "schedule", "expected"),
    [
        (0, 10, 0, "cosine", 1.0),
        (5, 10, 0, "cosine", 0.5),
        (9, 10, 0, "cosine", 0.5 * (1 + math.cos(0.9 * math.pi))),  # 0.02447
        (10, 10, 0, "cosine", 0.0),
        (0, 10, 4, "cosine", 0.25),
        (3, 10, 4, "cosine", 1.0),
        (4, 10, 4, "cosine", 1.0),
        (7, 10, 4, "cosine", 0.5),
        (1, 10, 4, "constant", 0.5),
        (9, 10, 4, "constant", 1.0),
    ],
    ids=lambda v: str(v),
)
def test_lr_factor_known_answers(
    step: int, total: int, warmup: int, schedule: str, expected: float
) -> None:
    assert lr_factor(step, total, warmup_steps=warmup, schedule=schedule) == pytest.approx(
        expected, abs=1e-12
    )


def test_scheduler_sets_each_steps_lr() -> None:
    config = TrainConfig(lr=0.2, warmup_steps=2, schedule="cosine")
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], config)
    sched = build_scheduler(opt, config, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cos = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx([0.1, 0.2] + [0.2 * c for c in cos], abs=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_history_lr_is_the_last_steps_lr() -> None:
    # 24 samples, batch 8: 3 steps per epoch, 9 in all
    result = run(Classifier(), images(), SMALL)
    expected = [1e-2 * lr_factor(3 * e + 2, 9, warmup_steps=0, schedule="cosine") for e in range(3)]
    assert [row["lr"] for row in result.history] == pytest.approx(expected, rel=1e-12)
    assert result.steps == 9


# ---------------------------------------------------------------------- clipping


class LinearLoss(nn.Module):
    """loss = 1000 * sum(w) over 100 weights: the gradient norm is 1000 * 10 = 10000."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(100))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        return 1000.0 * self.w.sum() + 0.0 * x.sum(), {}


@pytest.mark.parametrize(("clip", "norm"), [(1.0, 1.0), (None, 10000.0)], ids=["clip-1", "none"])
def test_grad_clip_bounds_the_update(clip: float | None, norm: float) -> None:
    objective = LinearLoss()
    config = TrainConfig(
        lr=0.01, optimizer="sgd", schedule="constant", grad_clip=clip, batch_size=1, augment=False
    )
    result = run(objective, TrainData(torch.zeros(1, 1), None), config)
    # one SGD step, Nesterov momentum 0.9 from zero: the update is lr * 1.9 * gradient
    assert float(objective.w.detach().norm()) == pytest.approx(0.01 * 1.9 * norm, rel=1e-5)
    if clip is not None:
        assert result.history[0]["grad_norm"] == pytest.approx(10000.0, rel=1e-6)


# ------------------------------------------------------------- learning, determinism


def test_loss_decreases_on_a_separable_problem() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.randn(64, 2, generator=g) * 0.3 + (2.0 * y[:, None] - 1.0)

    class Logistic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.student = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
            assert y is not None
            logits = self.student(x)
            acc = float((logits.argmax(1) == y).float().mean())
            return nn.functional.cross_entropy(logits, y), {"acc": acc}

    config = TrainConfig(epochs=8, batch_size=16, lr=0.05, augment=False, schedule="constant")
    result = run(Logistic(), TrainData(x, y), config)
    losses = [row["loss"] for row in result.history]
    print("losses", [round(v, 4) for v in losses])
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 0.3 * losses[0]
    assert result.history[-1]["acc"] == 1.0


def test_same_seed_same_weights_bit_for_bit() -> None:
    a, b, c = Classifier(), Classifier(), Classifier()
    run(a, images(), SMALL)
    run(b, images(), SMALL)
    run(c, images(), replace(SMALL, seed=5))
    assert_same_weights(a, b)
    assert not torch.equal(
        a.get_parameter("student.fc.weight"), c.get_parameter("student.fc.weight")
    )


def test_fit_leaves_the_global_rng_as_it_was() -> None:
    model = Classifier()
    torch.manual_seed(42)
    before = torch.get_rng_state()
    run(model, images(), TrainConfig(epochs=1, batch_size=8))
    assert torch.equal(torch.get_rng_state(), before)


def test_small_data_is_one_step_and_logs_are_averaged() -> None:
    result = run(Classifier(), images(5), TrainConfig(epochs=2, batch_size=8))
    assert result.steps == 2
    assert [row["seen"] for row in result.history] == [5.0, 5.0]
    result = run(Classifier(), images(20), TrainConfig(epochs=1, batch_size=8))
    assert result.steps == 2  # drop_last: the 4 samples past 16 wait for the next epoch
    assert result.history[0]["seen"] == 8.0


def test_parameter_groups_and_train_mode() -> None:
    model = Classifier()
    fc = list(model.student.get_submodule("fc").parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("student.fc")]
    frozen = [p.detach().clone() for p in fc]
    conv = model.get_parameter("student.conv.weight").detach().clone()

    def evaluate() -> dict[str, float]:
        model.eval()
        return {"val": 1.0}

    run(model, images(), SMALL, parameters=[{"params": fc, "lr": 0.0}, {"params": rest}],
        evaluate=evaluate)  # fmt: skip
    assert all(torch.equal(p, q) for p, q in zip(fc, frozen, strict=True))
    assert not torch.equal(model.get_parameter("student.conv.weight"), conv)
    assert model.modes
    assert all(model.modes)


# ---------------------------------------------------------- checkpoints and resume


def test_metrics_files_hold_the_history(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(
        Classifier(), images(), TrainConfig(epochs=2, batch_size=8), run_dir=tmp_path,
        evaluate=lambda: {"val_acc": 0.75}, log=lines.append,
    )  # fmt: skip
    with (tmp_path / "train_metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "epoch", "loss", "lr", "images_per_s", "seconds", "grad_norm", "acc", "seen", "val_acc"
    ]  # fmt: skip
    assert [{k: float(v) for k, v in r.items()} for r in rows] == result.history
    body = json.loads((tmp_path / "train_metrics.json").read_text())
    assert body["format"] == "edgeq-train-metrics"
    assert body["history"] == result.history
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["val_acc"] == 0.75 for r in result.history)
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2: loss ")
    assert "val_acc 0.75" in lines[1]
    assert result.checkpoint == tmp_path / "checkpoint.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt", "train_metrics.csv", "train_metrics.json"
    ]  # fmt: skip


def _without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in history]


def test_resume_with_more_epochs_equals_one_run(tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, batch_size=8, lr=1e-2, schedule="constant", seed=2)
    whole = Classifier()
    full = run(whole, images(), config)
    run(Classifier(), images(), replace(config, epochs=1), run_dir=tmp_path)
    resumed = Classifier(seed=99)  # a new process: other initial weights, loaded from the file
    result = run(resumed, images(), config, run_dir=tmp_path, resume=True)
    assert_same_weights(resumed, whole)
    assert result.steps == full.steps == 9
    assert _without_timing(result.history) == _without_timing(full.history)


class Stop(Exception):
    pass


def test_interrupted_cosine_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, batch_size=8, lr=1e-2, optimizer="sgd", warmup_steps=2)
    whole = Classifier()
    run(whole, images(), config)
    calls = []

    def crash_in_epoch_2() -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise Stop  # the process dies before epoch 2's checkpoint
        return {}

    with pytest.raises(Stop):
        run(Classifier(), images(), config, run_dir=tmp_path, evaluate=crash_in_epoch_2)
    lines: list[str] = []
    resumed = Classifier(seed=7)
    result = run(resumed, images(), config, run_dir=tmp_path, resume=True, log=lines.append)
    assert lines[0].startswith(f"resuming {tmp_path / 'checkpoint.pt'} after epoch 1 (step 3)")
    assert_same_weights(resumed, whole)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    # a finished run resumes to itself
    again = run(resumed, images(), config, run_dir=tmp_path, resume=True)
    assert again.steps == 9
    assert again.history == result.history
    assert_same_weights(resumed, whole)


def test_resume_without_a_checkpoint_starts_over(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(Classifier(), images(), TrainConfig(batch_size=8), run_dir=tmp_path / "new",
                 resume=True, log=lines.append)  # fmt: skip
    assert (
        lines[0]
        == f"no checkpoint at {tmp_path / 'new' / 'checkpoint.pt'}: training from the start"
    )
    assert result.steps == 3


@pytest.fixture
def trained_dir(tmp_path: Path) -> Path:
    run(Classifier(), images(), TrainConfig(epochs=1, batch_size=8), run_dir=tmp_path)
    return tmp_path


def test_resume_refuses_another_model(trained_dir: Path) -> None:
    path = trained_dir / "checkpoint.pt"
    with pytest.raises(
        TrainingError,
        match=rf"^{path} is a checkpoint of another model: first difference at 'student\.fc\.bias' "
        r"\(checkpoint: shape \[3\] float32; this model: shape \[4\] float32\)",
    ):
        run(Classifier(classes=4), images(classes=4), TrainConfig(epochs=2, batch_size=8),
            run_dir=trained_dir, resume=True)  # fmt: skip


def test_resume_refuses_a_damaged_checkpoint(trained_dir: Path) -> None:
    path = trained_dir / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TrainingError, match=rf"^{path}: not a readable checkpoint \(truncated"):
        run(Classifier(), images(), TrainConfig(epochs=2, batch_size=8), run_dir=trained_dir,
            resume=True)  # fmt: skip


def test_resume_refuses_other_settings(trained_dir: Path) -> None:
    with pytest.raises(
        TrainingError, match=r"checkpoint\.pt was written with lr=0\.0001; this run has lr=0\.001"
    ):
        run(Classifier(), images(), TrainConfig(epochs=2, batch_size=8, lr=1e-3),
            run_dir=trained_dir, resume=True)  # fmt: skip


def test_an_existing_checkpoint_is_not_overwritten_without_resume(trained_dir: Path) -> None:
    with pytest.raises(TrainingError, match=r"checkpoint\.pt exists: pass resume=True"):
        run(Classifier(), images(), TrainConfig(batch_size=8), run_dir=trained_dir)


# ------------------------------------------------------------------ non-finite values


class Bomb(nn.Module):
    """Passes its input through for ``after`` calls, then multiplies it by inf."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * math.inf if self.calls > self.after else x


class BombNet(nn.Module):
    def __init__(self, after: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(
            OrderedDict(fc1=nn.Linear(4, 4), bomb=Bomb(after), fc2=nn.Linear(4, 2))
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        assert y is not None
        return nn.functional.cross_entropy(self.student(x), y), {}


def vectors(n: int = 8) -> TrainData:
    g = torch.Generator().manual_seed(0)
    return TrainData(torch.randn(n, 4, generator=g), torch.arange(n) % 2)


def test_nan_loss_names_step_layer_and_last_good_checkpoint(tmp_path: Path) -> None:
    saved: list[bytes] = []
    path = tmp_path / "checkpoint.pt"
    config = TrainConfig(epochs=3, batch_size=4, augment=False)  # 2 steps per epoch
    with pytest.raises(
        TrainingError,
        match=rf"^step 4 \(epoch 2\): the loss is nan; the first non-finite output was at layer "
        rf"bomb; the last good checkpoint is {path} \(epoch 1\)$",
    ):
        run(BombNet(after=3), vectors(), config, run_dir=tmp_path,
            log=lambda _l: saved.append(path.read_bytes()))  # fmt: skip
    assert saved
    assert path.read_bytes() == saved[0]
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_loss_without_a_run_dir() -> None:
    with pytest.raises(
        TrainingError, match=r"^step 1 \(epoch 1\): .* layer bomb; no checkpoint yet$"
    ):
        run(BombNet(after=0), vectors(), TrainConfig(batch_size=4, augment=False))


class Sqrt(nn.Module):
    """loss = sum(sqrt(p)) at p = 0: a finite loss with an infinite gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        return self.p.sqrt().sum() + 0.0 * x.sum(), {}


def test_diverged_parameters_are_named() -> None:
    config = TrainConfig(batch_size=1, grad_clip=None, augment=False, optimizer="sgd")
    with pytest.raises(
        TrainingError,
        match=r"^step 2 \(epoch 1\): the loss is nan; the parameters became non-finite "
        r"\(first: p\); lower lr or clip; every layer's output was finite: the loss "
        r"computation itself is non-finite; no checkpoint yet$",
    ):
        run(Sqrt(), TrainData(torch.zeros(2, 1)), config)


def test_infinite_gradient_norm_stops_before_the_update() -> None:
    objective = Sqrt()
    config = TrainConfig(batch_size=1, grad_clip=1.0, augment=False)
    with pytest.raises(
        TrainingError,
        match=r"^step 1 \(epoch 1\): the gradient norm is inf \(first non-finite gradient: p\); "
        r"the update was not applied; no checkpoint yet$",
    ):
        run(objective, TrainData(torch.zeros(2, 1)), config)
    assert torch.equal(objective.p, torch.zeros(3))


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path) -> None:
    config = TrainConfig(batch_size=1, grad_clip=None, augment=False, optimizer="sgd")
    with pytest.raises(
        TrainingError,
        match=r"^epoch 1: the parameters became non-finite in the last step \(first: p\); "
        r"this epoch's checkpoint was not written; no checkpoint yet$",
    ):
        run(Sqrt(), TrainData(torch.zeros(1, 1)), config, run_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("data", "config", "match"),
    [
        (TrainData(torch.zeros(0, 3, 8, 8), torch.zeros(0)), TrainConfig(),
         r"the training data is empty \(inputs hold 0 samples\)"),
        (TrainData(torch.zeros(8, 3, 8, 8), torch.zeros(7)), TrainConfig(),
         r"8 inputs but 7 labels: give one label per input, or labels=None"),
        (TrainData(torch.zeros(8, 4), torch.zeros(8)), TrainConfig(),
         r"augment=True needs \(N, C, H, W\) float images; the inputs are \(8, 4\) "
         r"torch\.float32\. Pass augment=False"),
        (TrainData(torch.zeros(()), None), TrainConfig(),
         r"TrainData\.inputs must be a tensor of shape \(N, \.\.\.\)"),
    ],
    ids=["empty", "label-count", "augment-vectors", "scalar"],
)  # fmt: skip
def test_bad_data_is_refused(data: TrainData, config: TrainConfig, match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        run(Classifier(), data, config)


@pytest.mark.parametrize(
    ("batch", "n", "match"),
    [
        (8, 24, r"batch_size=8 must be a multiple of the 3 torchrun processes \(WORLD_SIZE=3\)"),
        (2, 24, r"batch_size=2 must be a multiple of the 3 torchrun processes"),
        (3, 2, r"2 samples cannot be split over WORLD_SIZE=3 processes"),
    ],
    ids=["not-divisible", "smaller-than-world", "fewer-samples"],
)
def test_batch_the_torchrun_processes_cannot_share_is_refused(
    batch: int, n: int, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # refused before joining the process group (which would wait for the other ranks)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainingError, match=match):
        run(Classifier(), images(n), TrainConfig(batch_size=batch))


class Silly(nn.Module):
    def __init__(self, out: object) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.out = out

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> object:
        return self.out if self.out is not None else self.w.sum()


@pytest.mark.parametrize(
    ("out", "match"),
    [(None, r"returned Tensor"), ((torch.zeros(2), {}), r"returned tuple of shape \(2,\)")],
    ids=["bare-loss", "vector-loss"],
)
def test_objective_must_return_loss_and_logs(out: object, match: str) -> None:
    with pytest.raises(TrainingError, match=r"must return \(loss, logs\).*" + match):
        run(Silly(out), TrainData(torch.zeros(2, 1)), TrainConfig(batch_size=2, augment=False))


def test_nothing_to_train_is_refused() -> None:
    model = Classifier().requires_grad_(False)
    with pytest.raises(TrainingError, match=r"nothing to train: .*requires_grad=True"):
        run(model, images(), TrainConfig(batch_size=8))


def test_resume_needs_a_run_dir() -> None:
    with pytest.raises(TrainingError, match=r"resume=True needs a run_dir"):
        run(Classifier(), images(), TrainConfig(batch_size=8), resume=True)


def test_evaluate_may_not_reuse_engine_names() -> None:
    with pytest.raises(TrainingError, match=r"evaluate\(\) returned 'loss'.*e\.g\. 'val_loss'"):
        run(Classifier(), images(), TrainConfig(batch_size=8), evaluate=lambda: {"loss": 1.0})


def test_evaluate_runs_in_eval_mode_and_training_resumes_after() -> None:
    """Dropout must be off when evaluate() scores the model (the deployed behaviour),
    and back on for the next epoch's steps."""
    objective = Classifier()
    seen: list[bool] = []
    modes_in_step: list[bool] = []
    objective.student.drop.register_forward_hook(
        lambda m, args, out: modes_in_step.append(m.training)
    )

    def evaluate() -> dict[str, float]:
        seen.append(objective.student.drop.training)
        x = images(4).inputs
        with torch.no_grad():  # deterministic: the same scores twice (dropout is off)
            a, b = objective.student(x), objective.student(x)
        return {"same": float(torch.equal(a, b))}

    result = run(objective, images(), TrainConfig(batch_size=8, epochs=2), evaluate=evaluate)
    assert seen == [False, False]
    assert [row["same"] for row in result.history] == [1.0, 1.0]
    train_calls = [m for m in modes_in_step if m]
    assert len(train_calls) == 2 * 3  # 24 samples / batch 8, two epochs: all in train mode
