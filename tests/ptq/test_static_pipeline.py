"""PTQ pipeline on a small synthetic MobileNetV2-like block: placement, export, and
bit-exactness of every conv/linear layer against ONNX Runtime's fused integer kernels."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgeq.export import export_onnx
from edgeq.export.onnx_qdq import _Emitter
from edgeq.graph import CaptureError, QuantConv2d, capture
from edgeq.ptq import PTQConfig, quantize
from edgeq.quant import QuantInputError
from edgeq.quant.saturation import saturating_pairs


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _model_and_data(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(16, 3, 16, 16)


@pytest.mark.parametrize("target", ["portable", "vnni"])
def test_every_op_runs_as_an_integer_kernel(tmp_path, target):
    model, x = _model_and_data()
    qm = quantize(model, [x[:8], x[8:]], PTQConfig(target=target))
    assert qm.placement.float_ops == []
    path = export_onnx(qm.module, tmp_path / "q.onnx", x[:1])
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    print(dict(ops))
    assert ops["QLinearConv"] == 3
    assert ops["QLinearAdd"] == 1
    assert ops["QGemm"] == 1
    assert ops["Conv"] == 0
    assert ops["Gemm"] == 0
    assert ops["DequantizeLinear"] == 0


def _exported_pairs(tmp_path, target: str) -> tuple[dict[str, int], dict[str, tuple]]:
    """Saturating pairs in each int8 weight as the ONNX file hands it to the kernel."""
    model, x = _model_and_data()
    qm = quantize(model, [x], PTQConfig(target=target))
    path = export_onnx(qm.module, tmp_path / f"{target}.onnx", x[:1])
    weights = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(path).graph.initializer
        if i.name.endswith("_w_q")
    }
    pairs = {
        n: int(saturating_pairs(torch.from_numpy(w.astype(np.int32)))) for n, w in weights.items()
    }
    return pairs, {n: w.shape for n, w in weights.items()}


def test_portable_target_leaves_no_saturating_pair_in_the_exported_weights(tmp_path):
    pairs, shapes = _exported_pairs(tmp_path, "portable")
    assert shapes["stem_0_w_q"][1] == 4  # RGB input padded onto the symmetric kernels
    assert pairs == dict.fromkeys(pairs, 0)
    unconstrained, _ = _exported_pairs(tmp_path, "vnni")
    print(unconstrained)
    assert sum(unconstrained.values()) > 0  # without the limit these weights do saturate


def test_input_channel_padding_is_exact_and_reported(tmp_path):
    model, x = _model_and_data()
    qm = quantize(model, [x], PTQConfig())
    assert qm.placement.padded_inputs == ["stem.0: 3 -> 4 channels"]
    path = export_onnx(qm.module, tmp_path / "q.onnx", x[:1])
    graph = onnx.load(path).graph
    # the uint8 levels are padded with the zero point, between QuantizeLinear and DQ
    assert [n.op_type for n in graph.node[:3]] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.array_equal(sess.run(None, {"input": x.numpy()})[0], qm(x).numpy())


def _single_layer_onnx(em: _Emitter, node, mod) -> onnx.ModelProto:
    s = em.init("sx", mod.input_scale.numpy().astype(np.float32))
    z = em.init("zx", mod.input_zero_point.numpy().astype(np.uint8))
    y = em.layer(node, em.qdq("input", s, z, "in", mod.pad_in()))  # as the exporter does
    sy = em.init("sy", mod.output_scale.numpy().astype(np.float32))
    zy = em.init("zy", mod.output_zero_point.numpy().astype(np.uint8))
    out = em.qdq(y, sy, zy, "out")
    g = helper.make_graph(
        em.nodes,
        "layer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        initializer=em.inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.needs_vnni
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_layers_are_bit_exact_against_onnxruntime_kernels(seed):
    model, x = _model_and_data(seed)
    qm = quantize(model, [x], PTQConfig(target="vnni"))
    mods = dict(qm.module.named_modules())
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, mod in mods.items():
        if isinstance(mod, QuantConv2d):
            mod.register_forward_hook(lambda m, i, o, n=name: inputs.__setitem__(n, (i[0], o)))
    with torch.no_grad():
        qm.module(x)
    checked = 0
    for node in qm.module.graph.nodes:
        mod = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(mod, QuantConv2d):
            continue
        xin, y_sim = inputs[node.target]
        onnx_model = _single_layer_onnx(_Emitter(qm.module, True), node, mod)
        sess = ort.InferenceSession(
            onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        y_ort = sess.run(None, {"input": xin.numpy()})[0]
        lsb = np.abs(y_ort - y_sim.numpy()) / float(mod.output_scale)
        assert lsb.max() == 0.0, f"{node.target}: {lsb.max()} LSB"
        checked += 1
    assert checked == 3


def test_simulation_stays_close_to_float():
    model, x = _model_and_data()
    qm = quantize(model, [x], PTQConfig())
    with torch.no_grad():
        ref, sim = model(x), qm.module(x)
    sqnr = 10 * torch.log10((ref**2).sum() / ((ref - sim) ** 2).sum())
    print(f"TinyNet W8A8 logits SQNR vs float: {float(sqnr):.1f} dB")
    assert sqnr > 25.0


def test_empty_calibration_data_is_an_error():
    model, _ = _model_and_data()
    with pytest.raises(QuantInputError, match="calibration data is empty"):
        quantize(model, [])


def test_nan_activation_names_the_layer():
    model, x = _model_and_data()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(QuantInputError, match=r"act_quant_\d+ \(after x\): holds 1 NaN"):
        quantize(model, [x])


class Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


def test_untraceable_model_names_the_source_line():
    with pytest.raises(
        CaptureError, match=r"cannot trace Untraceable: .*test_static_pipeline.py:\d+"
    ):
        capture(Untraceable())


def _ort_logits(path, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", ["portable", pytest.param("vnni", marks=pytest.mark.needs_vnni)])
def test_whole_model_is_bit_exact_against_onnxruntime(tmp_path, seed, target):
    """Conv, residual add (QLinearAdd), global pooling and QGemm: the simulation's
    logits equal ONNX Runtime's to the last bit."""
    model, x = _model_and_data(seed)
    qm = quantize(model, [x[:8], x[8:]], PTQConfig(target=target))
    with torch.no_grad():
        sim = qm.module(x).numpy()
    ours = _ort_logits(export_onnx(qm.module, tmp_path / "q.onnx", x[:1]), x)
    np.testing.assert_array_equal(ours, sim)


@pytest.mark.slow
def test_real_mobilenet_v2_is_bit_exact_against_onnxruntime(tmp_path, mobilenet_v2_state_dict):
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(mobilenet_v2_state_dict)
    model.eval()
    torch.manual_seed(0)
    x = torch.randn(6, 3, 224, 224).clamp(-2.1, 2.6)  # the range of normalized images
    qm = quantize(model, [x[:4]], PTQConfig())
    with torch.no_grad():
        sim = qm.module(x).numpy()
    ours = _ort_logits(export_onnx(qm.module, tmp_path / "q.onnx", x[:1]), x)
    assert np.abs(ours - sim).max() == 0.0


class WithSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x)).mean((2, 3))


def test_unsupported_ops_are_named_in_a_warning_or_an_error_in_strict_mode():
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(
        UserWarning, match=r"2 op\(s\) stay in float.*sigmoid \(call_function sigmoid\); mean"
    ):
        quantize(WithSigmoid().eval(), [x])
    with pytest.raises(QuantInputError, match=r"sigmoid.*strict=True"):
        quantize(WithSigmoid().eval(), [x], PTQConfig(strict=True))


@pytest.mark.slow
def test_resnet18_add_relu_fuses_and_is_bit_exact(tmp_path):
    """ResNet's `out += identity; relu(out)` becomes one QLinearAdd (its clamp at zero
    point 0 is the ReLU): no float requantization left, logits equal ONNX Runtime's."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(4, 3, 64, 64)
    qm = quantize(model, [x[:2]])
    path = export_onnx(qm.module, tmp_path / "q.onnx", x[:1])
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearAdd"] == 8
    assert ops["QLinearConv"] == 20
    assert ops["DequantizeLinear"] == 0
    assert ops["Relu"] == 0
    with torch.no_grad():
        sim = qm.module(x).numpy()
    np.testing.assert_array_equal(_ort_logits(path, x), sim)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "densenet121"])
def test_float_ops_export_and_run_next_to_integer_kernels(tmp_path, name):
    """Hardswish, hardsigmoid, squeeze-excite multiplies (MobileNetV3) and BatchNorms
    that follow no conv (DenseNet) stay float in ONNX Runtime too; the model runs
    and agrees with the simulation."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="stay in float"):
        qm = quantize(model, [x])
    with torch.no_grad():
        sim = qm.module(x).numpy()
    ours = _ort_logits(export_onnx(qm.module, tmp_path / "q.onnx", x[:1]), x)
    np.testing.assert_allclose(ours, sim, atol=1e-3 * float(np.abs(sim).max()) + 1e-6)


class ChannelsLastMLP(nn.Module):
    """Linear layers on [N, H, W, C] tensors (ConvNeXt blocks, transformer MLPs), with
    a wide hidden layer (1024 inputs: the exact accumulation is split in chunks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.Linear(8, 1024)
        self.down = nn.Linear(1024, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.down(torch.relu(self.up(y)))
        return self.head(y.mean((1, 2)))


def test_linear_on_channels_last_tensors_is_exact_and_close_to_float():
    torch.manual_seed(0)
    model = ChannelsLastMLP().eval()
    x = torch.randn(4, 3, 6, 6)
    with pytest.warns(UserWarning, match="stay in float"):
        qm = quantize(model, [x])
    with torch.no_grad():
        ref, sim = model(x), qm.module(x)
        m = qm.module.get_submodule("down")
        m.integer_exact = False  # the float fake-quant path computes the same values
        fake = qm.module(x)
    assert sim.shape == ref.shape
    sqnr = 10 * torch.log10((ref**2).sum() / ((ref - sim) ** 2).sum())
    assert sqnr > 25.0
    torch.testing.assert_close(sim, fake, rtol=0, atol=1e-4)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(image)) + torch.relu(self.b(depth))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_models_with_several_inputs_calibrate_through_a_callable(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    image, depth = torch.randn(4, 3, 8, 8), torch.randn(4, 1, 8, 8)

    def calibrate(m: nn.Module) -> None:
        for i in range(0, 4, 2):
            m(image[i : i + 2], depth[i : i + 2])

    with pytest.warns(UserWarning, match="cannot be replayed: bias correction and the"):
        quantize(model, calibrate)
    qm = quantize(model, calibrate, PTQConfig(bias_correction=False, percentile_search=()))
    assert qm.calibration == {}
    path = export_onnx(qm.module, tmp_path / "q.onnx", (image[:1], depth[:1]))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "depth"]
    ours = sess.run(None, {"image": image.numpy(), "depth": depth.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_array_equal(ours, qm.module(image, depth).numpy())
    with pytest.raises(QuantInputError, match="did not run the model"):
        quantize(model, lambda m: None, PTQConfig(bias_correction=False, percentile_search=()))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 600), nn.ReLU(), nn.Linear(600, 10)
    ).eval()


@pytest.mark.dynamic_vs_ort
def test_dynamic_quantization_is_bit_exact_against_onnxruntime(tmp_path):
    """Linear layers with int8 weights and per-call uint8 inputs: ONNX Runtime fuses the
    exported DynamicQuantizeLinear/MatMulInteger/Cast/Mul/Add into DynamicQuantizeMatMul,
    and its outputs equal the simulation's, whatever the input range."""
    model = mlp()
    qm = quantize(model, [], PTQConfig(mode="dynamic"))
    path = export_onnx(qm.module, tmp_path / "q.onnx", torch.randn(1, 64))
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["DynamicQuantizeMatMul"] == 3
    torch.manual_seed(1)
    for scale in (0.1, 1.0, 10.0):
        x = torch.randn(8, 64) * scale
        with torch.no_grad():
            sim, ref = qm.module(x).numpy(), model(x).numpy()
        np.testing.assert_array_equal(sess.run(None, {"input": x.numpy()})[0], sim)
        assert np.abs(sim - ref).max() < 0.05 * np.abs(ref).max()


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.avg_pool2d(self.conv(x), kernel_size=3, stride=1, padding=1)
        y = nn.functional.adaptive_avg_pool2d(self.pool(y), (2, 2))
        return self.fc(torch.flatten(y, 1))


def test_average_pools_export_as_float_ops(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    with pytest.warns(UserWarning, match="avg_pool2d.*pool.*adaptive_avg_pool2d"):
        qm = quantize(Pools().eval(), [x])
    with torch.no_grad():
        sim = qm.module(x).numpy()
    ours = _ort_logits(export_onnx(qm.module, tmp_path / "q.onnx", x[:1]), x)
    np.testing.assert_allclose(ours, sim, atol=1e-5)


def test_linear_on_channels_last_tensors_exports_as_qgemm_bit_exact(tmp_path):
    """Reshape -> Gemm -> Reshape, each Reshape repeating its tensor's Q/DQ: ONNX Runtime
    fuses every linear layer into QGemm and the logits equal the simulation's."""
    torch.manual_seed(0)
    model = ChannelsLastMLP().eval()
    x = torch.randn(4, 3, 6, 6)
    with pytest.warns(UserWarning, match="stay in float"):
        qm = quantize(model, [x])
    path = export_onnx(qm.module, tmp_path / "q.onnx", x[:1])
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QGemm"] == 3
    assert ops["Gemm"] == 0
    with torch.no_grad():
        sim = qm.module(x).numpy()
    np.testing.assert_array_equal(_ort_logits(path, x), sim)


def test_many_float_ops_are_summarized_by_kind():
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Conv2d(8, 8, 1), nn.Sigmoid()]
    model = nn.Sequential(nn.Conv2d(3, 8, 1), *layers).eval()
    with pytest.warns(UserWarning, match=r"6 op\(s\) stay in float.*: 6 Sigmoid \(first: _2 \("):
        qm = quantize(model, [torch.randn(2, 3, 4, 4)], PTQConfig(bias_correction=False))
    assert len(qm.placement.float_ops) == 6  # every one still listed
    assert qm.placement.float_op_kinds == {"Sigmoid": 6}
