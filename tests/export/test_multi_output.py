"""Models returning a tuple, a list or a dict of tensors (nested too) export with one
ONNX output per tensor, named by `edgeq.export.signature`'s rule, with a dynamic
batch on each; in ONNX Runtime every output equals PyTorch (float) and the
simulation (static W8A8: bit for bit where the repo's single-output tests are;
weight-only: float tolerance), at batch 1 and 3."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgeq
from edgeq.export import (
    ExportError,
    flatten_outputs,
    output_names,
    output_spec,
    unflatten_outputs,
)
from edgeq.export.signature import spec_from_json, spec_json
from edgeq.graph import capture
from edgeq.runtime import ort_session, run_outputs

FLOAT_OPS = "ignore:.*stay in float:UserWarning"  # sigmoid has no integer kernel


class Trunk(nn.Module):
    """Two convs, global pooling; heads on the pooled features or on the map."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.trunk(x)), 1)


class TwoHeads(Trunk):
    def __init__(self) -> None:
        super().__init__()
        self.classes, self.regress = nn.Linear(8, 5), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.classes(h), self.regress(h)


class BoxesScores(Trunk):
    """Dense heads; the head module is called ``boxes`` like its output (the graph's
    own value of that name is renamed)."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes, self.cls = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.trunk(x)
        return {"boxes": self.boxes(y), "scores": torch.sigmoid(self.cls(y))}


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.fc, self.aux = nn.Linear(8, 4), nn.Linear(8, 2)

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> list[torch.Tensor]:
        y = torch.relu(self.a(image)) + torch.relu(self.b(depth))
        h = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)
        return [self.fc(h), self.aux(h)]


class Nested(TwoHeads):
    def __init__(self) -> None:
        super().__init__()
        self.objectness = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple:
        h = self.features(x)
        return self.classes(h), (self.regress(h), torch.sigmoid(self.objectness(h)))


class PassThrough(TwoHeads):
    """The input returned as is (under a key that is the ONNX input's name), a
    constant buffer, and one tensor returned twice."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.arange(6.0).reshape(3, 2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.classes(self.features(x))
        return {"input": x, "y": y, "y_again": y, "anchors": self.anchors}


def _sigmoid_input_steps(name: str) -> Callable[[edgeq.QuantizedModel], float]:
    """Sigmoid (no integer kernel) runs in float in both runtimes on the same
    dequantized input: what may differ is float32 rounding (measured: 1 ulp), far
    below 0.01 steps of its input quantizer (one wrong input level moves a sigmoid
    by up to a quarter step)."""

    def tolerance(qm: edgeq.QuantizedModel) -> float:
        node = next(n for n in qm.module.graph.nodes if n.name == name)
        return 0.01 * float(qm.module.get_submodule(str(node.args[0].target)).scale)

    return tolerance


def _accumulator_steps(layer: str) -> Callable[[edgeq.QuantizedModel], np.ndarray]:
    """A conv whose float output is a model output runs as DQ -> float Conv in ONNX
    Runtime (no Q after it to fuse into QLinearConv), the simulation as an exact
    integer sum times ``s_x * s_w``: float summation order differs (measured 0.006
    accumulator steps), while a wrong weight or input level moves the result by at
    least one step ``s_x * s_w[c]`` per unit of its partner: tolerance 0.05 steps."""

    def tolerance(qm: edgeq.QuantizedModel) -> np.ndarray:
        m = qm.module.get_submodule(layer)
        return 0.05 * (m.input_scale * m.weight_scale).reshape(1, -1, 1, 1).numpy()

    return tolerance


CASES = [
    pytest.param(TwoHeads, [(3, 8, 8)], ["output_0", "output_1"], {}, id="tuple-two-heads"),
    pytest.param(
        BoxesScores,
        [(3, 8, 8)],
        ["boxes", "scores"],
        {"boxes": _accumulator_steps("boxes"), "scores": _sigmoid_input_steps("sigmoid")},
        id="dict-boxes-scores",
    ),
    pytest.param(
        TwoInTwoOut, [(3, 8, 8), (1, 8, 8)], ["output_0", "output_1"], {}, id="two-in-two-out"
    ),
    pytest.param(
        Nested,
        [(3, 8, 8)],
        ["output_0", "output_1_0", "output_1_1"],
        {"output_1_1": _sigmoid_input_steps("sigmoid")},
        id="nested-tuple",
    ),
    pytest.param(
        PassThrough, [(3, 8, 8)], ["input_1", "y", "y_again", "anchors"], {}, id="passthrough"
    ),
]


def _inputs(shapes: list[tuple[int, ...]], batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, *s, generator=g) for s in shapes)


def _feeds(session, xs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs, strict=True)}


def _export(qm, tmp_path, shapes, quantized: bool):
    path = edgeq.export_onnx(
        qm, tmp_path / f"{quantized}.onnx", _inputs(shapes, 1, seed=0), quantized=quantized
    )
    return path, ort_session(path)


def _check_signature(path, names: list[str], qm) -> None:
    graph = onnx.load(path).graph
    assert [o.name for o in graph.output] == names
    for o in graph.output:
        dims = [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
        assert dims[0] == ("batch" if o.name != "anchors" else 3), (o.name, dims)
    assert output_names(qm) == output_names(onnx.load(path)) == names


@pytest.mark.filterwarnings(FLOAT_OPS)
@pytest.mark.parametrize(("factory", "shapes", "names", "tolerances"), CASES)
def test_every_output_matches_in_onnxruntime(tmp_path, factory, shapes, names, tolerances):
    torch.manual_seed(0)
    model = factory().eval()
    calibration = [_inputs(shapes, 4, seed=s) for s in range(3)]
    qm = edgeq.quantize(model, [c[0] if len(c) == 1 else c for c in calibration])
    for quantized in (False, True):
        path, session = _export(qm, tmp_path, shapes, quantized)
        _check_signature(path, names, qm)
        for batch in (1, 3):
            xs = _inputs(shapes, batch, seed=10 + batch)
            arrays = session.run(None, _feeds(session, xs))
            with torch.no_grad():
                structure = qm.module(*xs) if quantized else model(*xs)
            expected = flatten_outputs(qm, structure)
            for name, ours, ref in zip(names, arrays, expected, strict=True):
                ref = ref.numpy()
                assert ours.shape == ref.shape, name
                if not quantized:  # float arithmetic in two runtimes
                    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, err_msg=name)
                elif name in tolerances:
                    bound = tolerances[name](qm)
                    steps = float(np.max(np.abs(ours - ref) / bound))
                    print(f"{name}: {steps:.3f} of its tolerance")
                    assert steps <= 1.0, name
                else:
                    np.testing.assert_array_equal(ours, ref, err_msg=name)
        # the structure comes back, from the file alone and from the model
        assert type(run_outputs(session, _feeds(session, xs))) is type(structure)
        assert type(unflatten_outputs(qm, arrays)) is type(structure)
        assert output_spec(onnx.load(path)) == output_spec(qm)


@pytest.mark.filterwarnings(FLOAT_OPS)
@pytest.mark.parametrize("factory", [BoxesScores, Nested], ids=["dict", "nested-tuple"])
def test_weight_only_outputs_match_in_onnxruntime(tmp_path, factory):
    torch.manual_seed(0)
    qm = edgeq.quantize(factory().eval(), [], edgeq.PTQConfig(mode="weight_only"))
    path, session = _export(qm, tmp_path, [(3, 8, 8)], quantized=True)
    model = onnx.load(path)
    assert output_names(model) == output_names(qm)
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    for batch in (1, 3):
        x = _inputs([(3, 8, 8)], batch, seed=batch)
        with torch.no_grad():
            expected = flatten_outputs(qm, qm(*x))
        arrays = session.run(None, _feeds(session, x))
        assert len(arrays) == len(expected) == len(output_names(qm))
        for ours, ref in zip(arrays, expected, strict=True):
            # dequantized weights in float convs of two runtimes: float rounding apart
            np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


class Returns(nn.Module):
    def __init__(self, build: Callable[[torch.Tensor, torch.Tensor], object]) -> None:
        super().__init__()
        self.fc, self.build = nn.Linear(4, 3), build

    def forward(self, x: torch.Tensor) -> object:
        return self.build(x, self.fc(x))


NAMING = [
    pytest.param(lambda x, y: y, ["output"], id="single"),
    pytest.param(lambda x, y: (y, y.relu()), ["output_0", "output_1"], id="tuple"),
    pytest.param(lambda x, y: [y, -y], ["output_0", "output_1"], id="list"),
    pytest.param(
        lambda x, y: {"det": (y, -y), "cls/logits": y, "0": y, "x": {"y": y}},
        ["det_0", "det_1", "cls_logits", "output_0", "x_y"],
        id="nested-dict",
    ),
    pytest.param(lambda x, y: (y, {"s": y}), ["output_0", "output_1_s"], id="tuple-of-dict"),
    pytest.param(lambda x, y: {"a b": y, "a_b": y}, ["a_b", "a_b_1"], id="sanitized-clash"),
]


@pytest.mark.parametrize(("build", "names"), NAMING)
def test_output_names_follow_the_documented_rule(build, names):
    gm = capture(Returns(build))
    assert output_names(gm) == names
    spec = output_spec(gm)
    assert spec_from_json(spec_json(spec)) == spec  # the ONNX metadata round trip
    value = gm(torch.randn(2, 4))
    flat = flatten_outputs(gm, value)
    assert len(flat) == len(names)
    rebuilt = unflatten_outputs(gm, flat)
    assert type(rebuilt) is type(value)
    assert all(a is b for a, b in zip(flatten_outputs(gm, rebuilt), flat, strict=True))


def test_single_output_model_keeps_its_one_output(tmp_path):
    gm = capture(Returns(lambda x, y: y))
    path = edgeq.export_onnx(gm, tmp_path / "m.onnx", torch.randn(1, 4), quantized=False)
    model = onnx.load(path)
    assert [o.name for o in model.graph.output] == ["output"]
    assert not model.metadata_props  # nothing recorded: the bytes are as before
    x = torch.randn(2, 4)
    out = run_outputs(ort_session(path), {"input": x.numpy()})
    np.testing.assert_allclose(out, gm(x).detach().numpy(), atol=1e-6)


class LSTMState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> object:
        return self.lstm(x)


X = torch.randn(2, 3, 4)
REFUSED = [
    pytest.param(
        capture(Returns(lambda x, y: (y, None))),
        r"output \[1\] \(output_1\) is None, not a tensor",
        id="none",
    ),
    pytest.param(
        capture(Returns(lambda x, y: {"y": y, "n": 3})),
        r"output \['n'\] \(n\) is the constant 3 \(int\), not a tensor",
        id="int-constant",
    ),
    pytest.param(
        capture(Returns(lambda x, y: (y, x.size(0)))),
        r"output \[1\] \(output_1\) is int, not a tensor \(node size\)",
        id="size",
    ),
    pytest.param(
        capture(LSTMState()),
        r"the output is tuple, not a tensor \(node lstm\)",
        id="lstm-tuple",
    ),
    pytest.param(
        capture(Returns(lambda x, y: {(0, 1): y})),
        r"has the key \(0, 1\) \(tuple\)",
        id="tuple-key",
    ),
]


@pytest.mark.parametrize(("gm", "match"), REFUSED)
def test_non_tensor_outputs_are_refused_by_name(tmp_path, gm, match):
    with pytest.raises(ExportError, match=match):
        edgeq.export_onnx(gm, tmp_path / "m.onnx", X, quantized=False)


def test_quantized_model_with_a_none_output_is_refused(tmp_path):
    qm = edgeq.quantize(Returns(lambda x, y: (y, None)), [torch.randn(8, 4)])
    with pytest.raises(ExportError, match=r"output \[1\] \(output_1\) is None"):
        edgeq.export_onnx(qm, tmp_path / "q.onnx", torch.randn(1, 4))


def test_unflatten_checks_the_number_of_arrays():
    gm = capture(Returns(lambda x, y: (y, -y)))
    with pytest.raises(ValueError, match=r"2 outputs \['output_0', 'output_1'\]; got 1 arrays"):
        unflatten_outputs(gm, [np.zeros(3)])
    with pytest.raises(ValueError, match=r"no array for the outputs \['output_1'\]"):
        unflatten_outputs(gm, {"output_0": np.zeros(3)})


@pytest.mark.filterwarnings(FLOAT_OPS)
def test_a_dict_output_keeps_its_keys_through_torch_export_capture(tmp_path):
    """capture="export" lifts an ATen graph that returns a flat tuple; the program's
    output structure is rebuilt around it, so the names are the keys, as with fx."""
    from edgeq.graph.lift import export_and_lift

    torch.manual_seed(0)
    model = BoxesScores().eval()
    x = _inputs([(3, 8, 8)], 4, seed=0)[0]
    lifted = export_and_lift(model, (x,))
    out = lifted(x)
    assert isinstance(out, dict)
    assert list(out) == ["boxes", "scores"]
    assert torch.allclose(out["scores"], model(x)["scores"], atol=1e-6)
    qm = edgeq.quantize(lifted, [x])
    path, session = _export(qm, tmp_path, [(3, 8, 8)], quantized=True)
    assert [o.name for o in onnx.load(path).graph.output] == ["boxes", "scores"]
    arrays = session.run(None, _feeds(session, (x,)))
    with torch.no_grad():
        sim = qm.module(x)
    bound = _accumulator_steps("boxes")(qm)  # float output: summation order only
    assert float(np.max(np.abs(arrays[0] - sim["boxes"].numpy()) / bound)) <= 1.0
    assert arrays[1].shape == tuple(sim["scores"].shape)
