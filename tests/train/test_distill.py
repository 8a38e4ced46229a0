"""Distillation objective: known-answer KD, CE and feature terms, gradients, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgeq.train.distill import DistillationError, DistillationObjective, DistillConfig


class TinyNet(nn.Module):
    """Conv stem -> conv body (4-D feature) -> linear proj (2-D feature) -> head."""

    def __init__(self, width: int = 4, stride: int = 1, classes: int = 5, p: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Conv2d(width, width, 3, stride=stride, padding=1)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.body(F.relu(self.stem(x))))
        return self.head(self.drop(F.relu(self.proj(x.mean((2, 3))))))


class Named(nn.Module):
    """A model that answers with a string (not something to distill)."""

    def forward(self, x: torch.Tensor) -> str:
        return "cat"


def constant(logits: list[float]) -> nn.Linear:
    """A model whose output is ``logits`` for every input of shape (N, 1)."""
    model = nn.Linear(1, len(logits))
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor(logits))
    return model


def features(net: TinyNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs of ``body`` and ``proj``, recomputed by hand."""
    body = net.body(F.relu(net.stem(x)))
    return body, net.proj(F.relu(body).mean((2, 3)))


def reference_kd(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    """T^2 * mean over the batch of sum_c p_c (log p_c - log q_c), written out."""
    s, t = s.double(), t.double()  # float64: the sum of p (log p - log q) cancels
    p, q = torch.softmax(t / temp, dim=1), torch.softmax(s / temp, dim=1)
    return temp * temp * (p * (p.log() - q.log())).sum(1).mean()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_identical_models_give_zero_kd(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    student = TinyNet()
    loss, logs = DistillationObjective(student, copy.deepcopy(student))(images, None)
    assert logs == {"kd": pytest.approx(0.0, abs=1e-7)}
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_two_class_known_answer_at_t2() -> None:
    # teacher logits/T = (ln 3, 0): p = (3/4, 1/4); student (0, 0): q = (1/2, 1/2)
    # T^2 KL(p||q) = 4 * (3/4 ln(3/2) + 1/4 ln(1/2)) = 3 ln 1.5 - ln 2
    objective = DistillationObjective(
        constant([0.0, 0.0]), constant([2 * math.log(3), 0.0]), DistillConfig(temperature=2.0)
    )
    loss, logs = objective(torch.zeros(3, 1), None)
    expected = 3 * math.log(1.5) - math.log(2)
    print(f"kd={logs['kd']:.6f} expected={expected:.6f}")
    assert logs["kd"] == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0, 8.0], ids=lambda t: f"T={t:g}")
def test_kd_is_t_squared_times_kl(images: torch.Tensor, temp: float) -> None:
    torch.manual_seed(1)
    student, teacher = TinyNet(), TinyNet(width=8)
    with torch.no_grad():
        teacher.head.weight.mul_(30.0)  # logits far apart, so the KL is far from 0
    config = DistillConfig(temperature=temp, kd_weight=0.3)
    loss, logs = DistillationObjective(student, teacher, config)(images, None)
    with torch.no_grad():
        expected = reference_kd(student(images), teacher(images), temp)
    assert logs["kd"] == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.3 * expected.item(), rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    shift=st.floats(-50, 50),
    temp=st.floats(0.5, 10),
    seed=st.integers(0, 2**16),
)
def test_kd_ignores_a_constant_added_to_the_logits(shift: float, temp: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(4, 3, generator=g).tolist(), torch.randn(4, 3, generator=g).tolist()
    config = DistillConfig(temperature=temp)
    kd = [
        DistillationObjective(constant(si), constant(ti), config)(torch.zeros(1, 1), None)[1]["kd"]
        for si, ti in zip(s, t, strict=True)
    ]
    shifted = [
        DistillationObjective(constant([v + shift for v in si]), constant(ti), config)(
            torch.zeros(1, 1), None
        )[1]["kd"]
        for si, ti in zip(s, t, strict=True)
    ]
    assert all(k >= 0 for k in kd)
    # float32 rounding, not the invariance, sets the tolerance: each shifted logit is
    # stored with an error up to eps * |logit| and divided by T, and the T^2 factor
    # leaves T * eps * |logit| per log-probability; both runs and the log-softmax
    # subtraction add terms of that size (at most 3.9x it seen in 12000 random cases;
    # a fixed abs=1e-5 failed at T near 10, 1.4e-5 apart)
    eps = torch.finfo(torch.float32).eps
    largest = abs(shift) + max(abs(v) for row in s + t for v in row)
    assert shifted == pytest.approx(kd, rel=1e-4, abs=8 * temp * eps * largest)


def test_cross_entropy_only_with_labels_and_weight(images: torch.Tensor) -> None:
    torch.manual_seed(2)
    student, teacher = TinyNet(), TinyNet()
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        ce = F.cross_entropy(student(images), labels).item()
    objective = DistillationObjective(student, teacher, DistillConfig(label_weight=0.5))
    loss, logs = objective(images, labels)
    assert sorted(logs) == ["ce", "kd"]
    assert logs["ce"] == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(logs["kd"] + 0.5 * ce, rel=1e-6)
    _, unlabeled = objective(images, None)
    assert sorted(unlabeled) == ["kd"]
    no_weight = DistillationObjective(student, teacher, DistillConfig())
    loss, logs = no_weight(images, labels)
    assert sorted(logs) == ["kd"]
    assert loss.item() == pytest.approx(logs["kd"], rel=1e-6)


def test_labels_only_objective_is_plain_cross_entropy(images: torch.Tensor) -> None:
    torch.manual_seed(3)
    student = TinyNet()
    labels = torch.tensor([4, 3, 2, 1, 0, 0])
    config = DistillConfig(kd_weight=0.0, label_weight=1.0)
    loss, _ = DistillationObjective(student, TinyNet(), config)(images, labels)
    with torch.no_grad():
        assert loss.item() == pytest.approx(F.cross_entropy(student(images), labels).item())


def feature_objective(
    images: torch.Tensor, student: nn.Module, teacher: nn.Module, *pairs: tuple[str, str]
) -> DistillationObjective:
    config = DistillConfig(feature_weight=2.0, features=pairs)
    return DistillationObjective(student, teacher, config, example=images)


@pytest.mark.parametrize(
    ("pair", "shape"),
    [(("body", "body"), (8, 4, 1, 1)), (("proj", "proj"), (8, 4))],
    ids=["conv-1x1", "linear"],
)
def test_adapter_maps_student_width_to_teacher_width(
    images: torch.Tensor, pair: tuple[str, str], shape: tuple[int, ...]
) -> None:
    objective = feature_objective(images, TinyNet(width=4), TinyNet(width=8), pair)
    assert list(objective.adapters) == [f"{pair[0]}__{pair[1]}"]
    adapter = objective.adapters[f"{pair[0]}__{pair[1]}"]
    assert isinstance(adapter, nn.Conv2d if len(shape) == 4 else nn.Linear)
    assert tuple(adapter.weight.shape) == shape


def test_no_adapter_when_widths_match(images: torch.Tensor) -> None:
    torch.manual_seed(8)
    student, teacher = TinyNet(), TinyNet()
    objective = feature_objective(images, student, teacher, ("body", "body"), ("proj", "proj"))
    assert len(objective.adapters) == 0
    loss, logs = objective(images, None)
    with torch.no_grad():
        (s_body, s_proj), (t_body, t_proj) = features(student, images), features(teacher, images)
        expected = (F.mse_loss(s_body, t_body) + F.mse_loss(s_proj, t_proj)) / 2
    assert logs["feature"] == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(logs["kd"] + 2.0 * logs["feature"], rel=1e-6)


def test_spatial_sizes_differ_larger_map_is_pooled(images: torch.Tensor) -> None:
    torch.manual_seed(4)
    student, teacher = TinyNet(width=4, stride=2), TinyNet(width=8, stride=1)
    objective = feature_objective(images, student, teacher, ("body", "body"))
    _, logs = objective(images, None)
    with torch.no_grad():
        s, t = features(student, images)[0], features(teacher, images)[0]
        expected = F.mse_loss(objective.adapters["body__body"](s), F.avg_pool2d(t, 2))
    assert s.shape[2:] == (4, 4)
    assert t.shape[2:] == (8, 8)
    assert logs["feature"] == pytest.approx(expected.item(), rel=1e-5)


def test_gradients_reach_student_and_adapters_not_teacher(images: torch.Tensor) -> None:
    torch.manual_seed(5)
    student, teacher = TinyNet(width=4), TinyNet(width=8)
    pairs = (("body", "body"), ("proj", "proj"))
    config = DistillConfig(label_weight=1.0, feature_weight=2.0, features=pairs)  # all 3 terms
    objective = DistillationObjective(student, teacher, config, example=images)
    loss, _ = objective(images, torch.tensor([0, 1, 2, 3, 4, 0]))
    loss.backward()
    trained = dict(objective.named_parameters())
    assert {n.split(".")[0] for n in trained} == {"student", "adapters"}
    for name, p in trained.items():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_teacher_stays_frozen_and_out_of_the_state_dict(images: torch.Tensor) -> None:
    teacher = TinyNet(width=8, p=0.5).train()
    objective = feature_objective(images, TinyNet(), teacher, ("body", "body"))
    objective.train()
    assert objective.student.training
    assert not any(m.training for m in teacher.modules())
    assert all(k.startswith(("student.", "adapters.")) for k in objective.state_dict())
    assert "adapters.body__body.weight" in objective.state_dict()
    assert all(p is not q for p in objective.parameters() for q in teacher.parameters())
    objective.to(torch.float64)  # the teacher moves with the objective
    assert next(teacher.parameters()).dtype == torch.float64
    _, logs = objective(images.double(), None)
    assert math.isfinite(logs["kd"])


def test_probe_at_construction_leaves_student_mode_and_batchnorm_alone(
    images: torch.Tensor,
) -> None:
    bn = nn.BatchNorm2d(4)
    student = nn.Sequential(nn.Conv2d(3, 4, 1), bn, nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    teacher = copy.deepcopy(student)
    config = DistillConfig(feature_weight=1.0, features=(("1", "1"),))
    DistillationObjective(student.train(), teacher, config, example=images + 3.0)
    assert student.training
    state = bn.state_dict()
    assert state["num_batches_tracked"].item() == 0
    assert torch.equal(state["running_mean"], torch.zeros(4))


def test_tuple_and_dict_outputs_use_the_logits(images: torch.Tensor) -> None:
    class AsDict(nn.Module):
        def __init__(self, net: nn.Module, key: str) -> None:
            super().__init__()
            self.net, self.key = net, key

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"aux": torch.zeros(1), self.key: self.net(x)}

    class AsTuple(AsDict):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
            return (self.net(x), torch.zeros(1))

    torch.manual_seed(6)
    student, teacher = TinyNet(), TinyNet()
    _, plain = DistillationObjective(student, teacher)(images, None)
    _, wrapped = DistillationObjective(AsDict(student, "logits"), AsTuple(teacher, ""))(
        images, None
    )
    assert wrapped["kd"] == pytest.approx(plain["kd"], rel=1e-6)
    with pytest.raises(DistillationError, match=r"the student's output is a str: .*needs a tensor"):
        DistillationObjective(Named(), teacher)(images, None)


def test_teacher_with_other_classes_is_refused(images: torch.Tensor) -> None:
    message = r"the teacher's output has shape \(6, 7\), the student's \(6, 5\): .*same classes"
    objective = DistillationObjective(TinyNet(classes=5), TinyNet(classes=7))
    with pytest.raises(DistillationError, match=message):
        objective(images, None)
    with pytest.raises(DistillationError, match=message):
        DistillationObjective(TinyNet(classes=5), TinyNet(classes=7), example=images)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 1, 2, 3, 4, 5]), r"label 5 is outside \[0, 5\): the model has 5 classes"),
        (torch.tensor([0, -1, 2, 3, 4, 0]), r"label -1 is outside \[0, 5\)"),
        (torch.tensor([0, 1, 2]), r"labels have shape \(3,\), expected \(6,\)"),
    ],
    ids=["too-large", "negative", "wrong-length"],
)
def test_bad_labels_are_refused(images: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    objective = DistillationObjective(TinyNet(), TinyNet(), DistillConfig(label_weight=1.0))
    with pytest.raises(DistillationError, match=match):
        objective(images, labels)


@pytest.mark.parametrize(
    ("pair", "match"),
    [
        (("bodyy", "body"), r"the student has no module 'bodyy'; closest: body"),
        (("body", "stm"), r"the teacher has no module 'stm'; closest: stem"),
    ],
    ids=["student", "teacher"],
)
def test_unknown_feature_name_lists_closest(
    images: torch.Tensor, pair: tuple[str, str], match: str
) -> None:
    with pytest.raises(DistillationError, match=match):
        feature_objective(images, TinyNet(), TinyNet(), pair)


def test_features_need_an_example_and_comparable_shapes(images: torch.Tensor) -> None:
    config = DistillConfig(feature_weight=1.0, features=(("body", "body"),))
    with pytest.raises(DistillationError, match="no example input: pass example="):
        DistillationObjective(TinyNet(), TinyNet(), config)
    with pytest.raises(DistillationError, match=r"student shape \(6, 4, 8, 8\), teacher \(6, 4\)"):
        feature_objective(images, TinyNet(), TinyNet(), ("body", "proj"))


def test_feature_module_that_does_not_run_is_refused(images: torch.Tensor) -> None:
    student = TinyNet()
    student.unused = nn.Linear(4, 4)
    with pytest.raises(DistillationError, match=r"student's module 'unused' did not run"):
        feature_objective(images, student, TinyNet(), ("unused", "proj"))


def test_logits_without_a_class_dim_are_refused(images: torch.Tensor) -> None:
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten().sum().reshape(1)

    with pytest.raises(DistillationError, match=r"shape \(1,\): .*\(N, classes, ...\)"):
        DistillationObjective(Flat(), Flat())(images, None)


def test_teacher_must_not_be_the_student() -> None:
    model = TinyNet()
    with pytest.raises(DistillationError, match=r"teacher is the student itself.*deepcopy"):
        DistillationObjective(model, model)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"temperature": 0.0}, r"temperature=0.0: must be a finite number > 0"),
        ({"temperature": float("nan")}, r"temperature=nan: must be a finite number > 0"),
        ({"kd_weight": -1.0}, r"kd_weight=-1.0: must be a finite number >= 0"),
        ({"label_weight": True}, r"label_weight=True: must be a finite number >= 0"),
        ({"feature_weight": 1.0}, r"feature_weight=1.0 with 0 feature pairs"),
        ({"features": (("a", "b"),)}, r"feature_weight=0.0 with 1 feature pairs"),
        ({"features": (("a",),), "feature_weight": 1.0}, r"\('a',\) must be a \(student"),
        ({"features": (("a", "b"), ("a", "b")), "feature_weight": 1.0}, "a pair is given twice"),
        ({"kd_weight": 0.0}, "all 0: nothing to train"),
    ],
    ids=[
        "zero-temp",
        "nan-temp",
        "negative",
        "bool",
        "weight-no-pairs",
        "pairs-no-weight",
        "bad-pair",
        "duplicate",
        "all-zero",
    ],
)
def test_config_validation(changes: dict[str, object], match: str) -> None:
    with pytest.raises(DistillationError, match=match):
        DistillConfig(**changes)  # type: ignore[arg-type]


def test_config_round_trip_and_strict_keys() -> None:
    config = DistillConfig(
        temperature=2.0, label_weight=0.5, feature_weight=1.0, features=(("a.b", "c"),)
    )
    data = config.to_dict()
    assert data["schema_version"] == 1
    assert data["features"] == [["a.b", "c"]]
    assert DistillConfig.from_dict(data) == config
    with pytest.raises(DistillationError, match=r"unknown distill key 'temprature'.*'temperature'"):
        DistillConfig.from_dict({"temprature": 2.0})
    with pytest.raises(DistillationError, match="schema_version=2 is not supported"):
        DistillConfig.from_dict({**data, "schema_version": 2})
    with pytest.raises(DistillationError, match="kind='quant': expected 'distill'"):
        DistillConfig.from_dict({**data, "kind": "quant"})


def test_training_the_student_lowers_the_kd_loss() -> None:
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    inputs = torch.randn(64, 3, 8, 8, generator=g)
    teacher = TinyNet(width=16)
    with torch.no_grad():
        teacher.head.weight.mul_(20.0)  # confident targets, so there is something to learn
    student = TinyNet(width=8)
    objective = DistillationObjective(
        student,
        teacher,
        DistillConfig(feature_weight=1.0, features=(("proj", "proj"),)),
        example=inputs[:2],
    )
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-2)

    def kd() -> float:
        with torch.no_grad():
            return objective(inputs, None)[1]["kd"]

    initial = kd()
    for step in range(50):
        batch = inputs[(step * 16) % 64 :][:16]
        loss, _ = objective(batch, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = kd()
    print(f"kd initial={initial:.4f} final={final:.4f} ratio={final / initial:.3f}")
    assert final < 0.5 * initial
