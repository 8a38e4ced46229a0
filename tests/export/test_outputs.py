"""What the ONNX export writes as outputs (one tensor today), and a clear refusal of more."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeq
from edgeq.export import ExportError


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, torch.relu(y)


def test_several_outputs_are_a_clear_export_error(tmp_path):
    qm = edgeq.quantize(_TwoOutputs().eval(), [torch.randn(8, 4)])
    with pytest.raises(ExportError, match="returns tuple of several outputs"):
        edgeq.export_onnx(qm, tmp_path / "q.onnx", torch.randn(1, 4))
