"""Classification scoring takes one logits output, and names a model that has others."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from edgeq.evaluate.classification import NotAClassifierError, as_predictor, predict, score


def _onnx(tmp_path, outputs: int, rank: int = 2):
    shape = ["N", 5] + [1] * (rank - 2)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    outs = [
        helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, shape) for i in range(outputs)
    ]
    nodes = [helper.make_node("Identity", ["x"], [f"y{i}"]) for i in range(outputs)]
    graph = helper.make_graph(nodes, "g", [x], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"m{outputs}_{rank}.onnx"
    onnx.save(model, str(path))
    return path


class _Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x * 2


def test_one_logits_output_is_scored(tmp_path):
    x = torch.eye(5)[[0, 3, 4]]
    logits = predict(as_predictor(_onnx(tmp_path, 1)), [x])
    assert score(logits, np.array([0, 3, 1]))["top1"] == pytest.approx(2 / 3)
    assert np.array_equal(predict(as_predictor(nn.Identity()), [x]), logits)


def test_a_model_with_two_outputs_is_named_not_scored_on_the_first(tmp_path):
    with pytest.raises(NotAClassifierError, match=r"outputs \['y0', 'y1'\]"):
        as_predictor(_onnx(tmp_path, 2))
    with pytest.raises(NotAClassifierError, match="returns a tuple"):
        predict(as_predictor(_Pair()), [torch.zeros(2, 5)])


def test_logits_of_another_rank_are_named(tmp_path):
    with pytest.raises(NotAClassifierError, match=r"shape \(2, 5, 1, 1\)"):
        predict(as_predictor(_onnx(tmp_path, 1, rank=4)), [torch.zeros(2, 5, 1, 1)])
