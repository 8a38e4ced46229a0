"""Knowledge distillation: a student learns a frozen teacher's logits and features.

`DistillationObjective` is the loss the training engine calls as
``loss, logs = objective(inputs, labels)``. It adds up to three terms:

- ``kd``: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the classes (dim 1),
  averaged over the batch (Hinton et al. 2015; the ``T^2`` keeps the gradient's size
  independent of ``T``);
- ``ce``: cross-entropy with the labels, only when labels come and ``label_weight > 0``;
- ``feature``: MSE between named student and teacher activations, the student's
  mapped to the teacher's width by a learnable adapter, mean over the pairs.

``logs`` holds each term unweighted; ``loss`` is their weighted sum. The teacher runs
under ``torch.no_grad()`` on the inputs the student sees, in eval mode, and is not part
of the objective's parameters or state dict: checkpoints hold the student and the
adapters only. Model outputs that are tuples or lists are reduced to their first item,
dicts to their ``"logits"`` entry, else their first value; it must be a tensor with the
classes on dim 1.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SCHEMA_VERSION", "DistillConfig", "DistillationError", "DistillationObjective"]

SCHEMA_VERSION = 1


class DistillationError(ValueError):
    """Distillation cannot be set up or run (the message says why and what to do)."""


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        allowed = "a finite number > 0" if positive else "a finite number >= 0"
        raise DistillationError(f"{name}={value!r}: must be {allowed}")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings (see the module docstring for the terms).

    ``features`` pairs a student module name with a teacher module name (as in
    ``named_modules()``); ``feature_weight`` must be > 0 exactly when pairs are given.

    Example:
        >>> DistillConfig(temperature=2.0, label_weight=0.5).to_dict()["temperature"]
        2.0
    """

    temperature: float = 4.0
    kd_weight: float = 1.0
    label_weight: float = 0.0
    feature_weight: float = 0.0
    features: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, positive=True)
        for name in ("kd_weight", "label_weight", "feature_weight"):
            _check_number(name, getattr(self, name), positive=False)
        pairs = tuple(tuple(p) for p in self.features)
        for p in pairs:
            if len(p) != 2 or not all(isinstance(n, str) and n for n in p):
                raise DistillationError(
                    f"features: {p!r} must be a (student module name, teacher module name) pair"
                )
        if len(set(pairs)) != len(pairs):
            raise DistillationError(f"features={pairs!r}: a pair is given twice")
        object.__setattr__(self, "features", pairs)
        if bool(pairs) != (self.feature_weight > 0):
            raise DistillationError(
                f"feature_weight={self.feature_weight!r} with {len(pairs)} feature pairs: give "
                "pairs and a feature_weight > 0 together, or neither"
            )
        if self.kd_weight == self.label_weight == self.feature_weight == 0:
            raise DistillationError(
                "kd_weight, label_weight and feature_weight are all 0: nothing to train"
            )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "distill", "schema_version": SCHEMA_VERSION}
        d.update(dataclasses.asdict(self))
        d["features"] = [list(p) for p in self.features]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Inverse of `to_dict`.

        Raises:
            DistillationError: another kind or schema version, or an unknown key (naming
                the closest allowed one).
        """
        data = dict(data)
        kind = data.pop("kind", "distill")
        if kind != "distill":
            raise DistillationError(f"kind={kind!r}: expected 'distill'")
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise DistillationError(
                f"schema_version={version!r} is not supported (this edgeq reads {SCHEMA_VERSION})"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {names}"
                raise DistillationError(f"unknown distill key {key!r}{hint}")
        return cls(**data)


def _logits(output: object, who: str) -> torch.Tensor:
    if isinstance(output, dict):
        output = output.get("logits", next(iter(output.values()), None))
    elif isinstance(output, tuple | list):
        output = output[0] if output else None
    if not isinstance(output, torch.Tensor):
        raise DistillationError(
            f"the {who}'s output is a {type(output).__name__}: distillation needs a tensor "
            "(alone, first in a tuple or list, or a dict's 'logits' or first value)"
        )
    return output


def _module(model: nn.Module, name: str, who: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise DistillationError(f"features: the {who} has no module {name!r}{hint}")
    return modules[name]


def _pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[2:]) == size else F.adaptive_avg_pool2d(x, size)


class DistillationObjective(nn.Module):
    """The distillation loss, with the student (and the feature adapters) to train.

    Args:
        student: the model trained; registered as ``self.student``.
        teacher: the frozen model; put in eval mode with ``requires_grad`` False (on the
            module passed in), kept outside ``parameters()`` and ``state_dict()``, moved
            with the objective by ``.to()``. Any architecture whose logits have the
            student's shape.
        config: the terms and their weights.
        example: an input batch, required when ``config.features`` is set: one forward of
            both models in eval mode under ``no_grad`` gives the feature shapes, from
            which the adapters are built (a 1x1 conv for 4-D maps, a linear layer on
            the last dim otherwise, only where the widths differ). If the spatial sizes
            of a 4-D pair differ, the larger is average-pooled to the smaller.

    Raises:
        DistillationError: a feature name matching no module (with the closest names),
            features without ``example``, logits or features of shapes that cannot be
            compared.

    Example:
        >>> student, teacher = nn.Linear(8, 3), nn.Linear(8, 3)
        >>> objective = DistillationObjective(student, teacher, DistillConfig(temperature=2))
        >>> loss, logs = objective(torch.randn(4, 8), None)
        >>> sorted(logs)
        ['kd']
    """

    teacher: nn.Module  # kept out of `_modules` (see __init__), so declared for type checkers

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        config: DistillConfig = DistillConfig(),  # frozen: sharing the default is safe
        *,
        example: torch.Tensor | None = None,
    ) -> None:
        if teacher is student:
            raise DistillationError(
                "the teacher is the student itself: freezing it would freeze the student; "
                "pass a copy (copy.deepcopy(model)) as the teacher"
            )
        super().__init__()
        self.student = student
        self.config = config
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self.adapters = nn.ModuleDict()
        self._captured: dict[tuple[str, str], torch.Tensor] = {}
        self._capturing = False
        hooked = {("student", s) for s, _ in config.features}
        hooked |= {("teacher", t) for _, t in config.features}
        for who, name in sorted(hooked):
            model = student if who == "student" else teacher
            # registered for good, but they only record inside `forward` (the flag)
            _module(model, name, who).register_forward_hook(self._hook(who, name))
        if example is not None:
            self._build(example)
        elif config.features:
            raise DistillationError(
                "features are given but no example input: pass example=<an input batch> so "
                "the feature shapes (and any width adapters) are known before training"
            )

    def _hook(self, who: str, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            if self._capturing:
                self._captured[who, name] = _logits(output, f"{who} module {name!r}")

        return hook

    def _run(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._captured.clear()
        self._capturing = True
        try:
            with torch.no_grad():
                t_out = _logits(self.teacher(inputs), "teacher")
            s_out = _logits(self.student(inputs), "student")
        finally:
            self._capturing = False
        if s_out.dim() < 2:
            raise DistillationError(
                f"the student's output has shape {tuple(s_out.shape)}: distillation needs "
                "logits of shape (N, classes, ...)"
            )
        if s_out.shape != t_out.shape:
            raise DistillationError(
                f"the teacher's output has shape {tuple(t_out.shape)}, the student's "
                f"{tuple(s_out.shape)}: distillation needs the same classes"
            )
        return s_out, t_out

    def _build(self, example: torch.Tensor) -> None:
        was_training = self.student.training
        self.student.eval()  # so the shape probe leaves BatchNorm statistics alone
        try:
            with torch.no_grad():
                self._run(example)
        finally:
            self.student.train(was_training)
        for pair in self.config.features:
            for who, name in zip(("student", "teacher"), pair, strict=True):
                if (who, name) not in self._captured:
                    raise DistillationError(
                        f"features {pair}: the {who}'s module {name!r} did not run in its "
                        "forward pass; pick a module it calls"
                    )
            s, t = self._captured[("student", pair[0])], self._captured[("teacher", pair[1])]
            if s.dim() != t.dim() or s.dim() < 2 or (s.dim() == 3 and s.shape[1] != t.shape[1]):
                raise DistillationError(
                    f"features {pair}: student shape {tuple(s.shape)}, teacher "
                    f"{tuple(t.shape)}: need the same rank, and 3-D features the same length"
                )
            dim = 1 if s.dim() == 4 else -1
            if s.shape[dim] != t.shape[dim]:
                adapter: nn.Module
                if s.dim() == 4:
                    adapter = nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1)
                else:
                    adapter = nn.Linear(s.shape[-1], t.shape[-1])
                self.adapters[self._key(pair)] = adapter.to(s.device, s.dtype)
        self._captured.clear()

    @staticmethod
    def _key(pair: tuple[str, str]) -> str:
        return f"{pair[0]}__{pair[1]}".replace(".", "_")

    def _feature_loss(self) -> torch.Tensor:
        losses = []
        for pair in self.config.features:
            s = self._captured[("student", pair[0])]
            t = self._captured[("teacher", pair[1])].detach()
            if s.dim() == 4:
                # pooling and a 1x1 conv commute (both linear): pool first, it is cheaper
                size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
                s, t = _pool_to(s, size), _pool_to(t, size)
            key = self._key(pair)
            if key in self.adapters:
                s = self.adapters[key](s)
            losses.append(F.mse_loss(s.float(), t.float()))
        self._captured.clear()
        return torch.stack(losses).mean()

    def _check_labels(self, labels: torch.Tensor, logits: torch.Tensor) -> None:
        n, classes = logits.shape[0], logits.shape[1]
        if labels.shape != (n,):
            raise DistillationError(
                f"labels have shape {tuple(labels.shape)}, expected ({n},): one class per input"
            )
        bad = (labels < 0) | (labels >= classes)
        if bool(bad.any()):
            value = int(labels[bad][0])
            raise DistillationError(
                f"label {value} is outside [0, {classes}): the model has {classes} classes"
            )

    def forward(
        self, inputs: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted loss and its unweighted terms.

        Args:
            inputs: the batch both models see (already augmented).
            labels: (N,) class indices, or None for unlabeled inputs.

        Returns:
            ``(loss, logs)``: a scalar tensor, and ``{"kd": .., "ce": .., "feature": ..}``
            (``ce`` only when used, ``feature`` only with feature pairs).

        Raises:
            DistillationError: logits of different shapes, labels of the wrong length or
                out of range.
        """
        cfg, temp = self.config, self.config.temperature
        s_out, t_out = self._run(inputs)
        kd = F.kl_div(
            F.log_softmax(s_out.float() / temp, dim=1),
            F.log_softmax(t_out.float() / temp, dim=1),
            log_target=True,
            reduction="batchmean",
        ) * (temp * temp)
        loss, logs = cfg.kd_weight * kd, {"kd": kd.item()}
        if labels is not None and cfg.label_weight > 0:
            self._check_labels(labels, s_out)
            ce = F.cross_entropy(s_out.float(), labels)
            loss, logs["ce"] = loss + cfg.label_weight * ce, ce.item()
        if cfg.features:
            feature = self._feature_loss()
            loss, logs["feature"] = loss + cfg.feature_weight * feature, feature.item()
        return loss, logs

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        self.teacher.eval()  # the teacher's dropout and BatchNorm stay in inference mode
        return self

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Self:
        # `.to()`, `.cuda()`, `.half()` move the teacher too, although it is no submodule
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)
        return self
