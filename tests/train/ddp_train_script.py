"""Run by tests/train/test_distributed.py under torchrun (2 processes, gloo):

    python -m torch.distributed.run --nproc_per_node=2 --standalone ddp_train_script.py OUT [qat]

trains a small conv + linear model (no BatchNorm: its batch statistics would differ
between a per-rank batch and the whole batch), float or (``qat``) prepared for
quantization-aware training by `edgeq.prepare_qat` (W8A8, learned scales: the
quantizers' shared parameters must train the same under DDP), and rank 0 saves the
final state dict to OUT. The test trains `build()` in one process and compares.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from edgeq.train.distributed import is_main_process
from edgeq.train.engine import TrainConfig, TrainData, fit

CONFIG = TrainConfig(
    epochs=2,
    batch_size=16,
    lr=0.05,
    optimizer="sgd",
    schedule="cosine",
    warmup_steps=2,
    grad_clip=1.0,
    seed=3,
    augment=True,
)


class Classifier(nn.Module):
    """Cross-entropy over a conv + linear student."""

    def __init__(self, qat: bool = False) -> None:
        super().__init__()
        self.student: nn.Module = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        )

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert y is not None
        logits = self.student(x)
        return nn.functional.cross_entropy(logits, y), {}


def build(kind: str = "float") -> tuple[Classifier, TrainData]:
    """The same model and data in every process (fixed seeds)."""
    torch.manual_seed(0)
    model = Classifier()
    g = torch.Generator().manual_seed(1)
    data = TrainData(
        torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g)
    )
    if kind == "qat":
        import edgeq

        # target vnni: no pair limit. The portable target's forward uses pair-limited
        # 8-bit levels, and which weight of a pair is lowered is decided by comparing
        # two rounding excesses: a float-noise difference between the runs (8 + 8
        # samples vs 16) flips a near-tie, after which they differ by a level, not by
        # float noise (seen: one element of the last layer, 2e-6 after 4 steps)
        qm = edgeq.prepare_qat(
            model.student.eval(), [data.inputs[:32]], edgeq.PTQConfig(target="vnni")
        )
        model.student = qm.module
    return model, data


def groups(model: Classifier, kind: str) -> list[dict] | None:
    """QAT: the scales at a learning rate of their own (SGD's 0.05 would overshoot)."""
    if kind != "qat":
        return None
    from edgeq.train.qat import parameter_groups

    return parameter_groups(model, weight_decay=0.0, scale_lr=1e-4)


def main(out: str, kind: str = "float") -> None:
    torch.set_num_threads(1)
    model, data = build(kind)
    fit(model, data, CONFIG, parameters=groups(model, kind), progress=False, log=lambda _: None)
    if is_main_process():
        torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
