"""The torch.export lift for text models: embeddings become nn.Embedding under the
table's name, the dynamic axes are recorded for the exporter and survive capture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeq.graph import capture
from edgeq.graph.lift import AXES_META, LiftError, export_and_lift


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.embeddings.word(input_ids))
        return x * attention_mask.unsqueeze(-1)


AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 20, (2, 5)), torch.ones(2, 5, dtype=torch.int64)


def test_embedding_is_lifted_under_its_name_and_axes_are_recorded():
    torch.manual_seed(0)
    model, example = Embed().eval(), _example()
    lifted = export_and_lift(model, example, dynamic_axes=AXES)
    assert isinstance(lifted.get_submodule("embeddings.word"), nn.Embedding)
    placeholders = {
        n.name: n.meta.get(AXES_META) for n in lifted.graph.nodes if n.op == "placeholder"
    }
    assert placeholders == AXES
    ids, mask = torch.randint(0, 20, (3, 9)), torch.ones(3, 9, dtype=torch.int64)
    torch.testing.assert_close(lifted(ids, mask), model(ids, mask), rtol=0, atol=0)
    retraced = capture(lifted)  # what edgeq.quantize does: the axes stay
    kept = {n.name: n.meta.get(AXES_META) for n in retraced.graph.nodes if n.op == "placeholder"}
    assert kept == AXES


def test_default_axes_are_the_batch():
    lifted = export_and_lift(Embed().eval(), _example())
    axes = [n.meta.get(AXES_META) for n in lifted.graph.nodes if n.op == "placeholder"]
    assert axes == [{0: "batch"}, {0: "batch"}]


def test_unknown_axis_argument_is_refused():
    with pytest.raises(LiftError, match=r"dynamic_axes names \['ids'\]"):
        export_and_lift(Embed().eval(), _example(), dynamic_axes={"ids": {0: "batch"}})
