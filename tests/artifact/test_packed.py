"""edgeq.save / edgeq.load: packed artifacts restore the simulated model bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import edgeq
from edgeq.artifact import ArtifactError
from edgeq.graph import QuantConv2d


class SmallNet(nn.Module):
    """A MobileNetV2-like block with a residual add and global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet().eval()


def _data() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(8, 3, 12, 12)


@pytest.mark.parametrize(
    "config",
    [edgeq.PTQConfig(), edgeq.PTQConfig(target="vnni"), edgeq.PTQConfig.weight_only(4, 32)],
    ids=["w8a8-portable", "w8a8-vnni", "w4-group32"],
)
def test_load_restores_the_simulation_bit_for_bit(tmp_path, config):
    model = edgeq.load_model(f"{__name__}:small_net")
    x = _data()
    qm = edgeq.quantize(model, [x], config)
    folder = edgeq.save(qm, tmp_path / "model")
    loaded = edgeq.load(folder, trust_model_file=True)
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))
    for name, m in qm.module.named_modules():
        if isinstance(m, QuantConv2d):
            other = loaded.module.get_submodule(name)
            assert torch.equal(other.weight_levels(), m.weight_levels())


def test_int4_weights_are_packed_two_per_byte(tmp_path):
    qm = edgeq.quantize(
        edgeq.load_model(f"{__name__}:small_net"), [], edgeq.PTQConfig.weight_only(4, 32)
    )
    folder = edgeq.save(qm, tmp_path / "m")
    from safetensors.torch import load_file

    t = load_file(str(folder / "model.safetensors"))
    assert t["pw.0.weight_q"].dtype == torch.uint8
    assert t["pw.0.weight_q"].numel() == 64 * 64 // 2


def test_a_model_without_a_source_saves_and_loads_from_its_recorded_graph(tmp_path):
    qm = edgeq.quantize(SmallNet().eval(), [_data()])
    assert qm.source is None
    loaded = edgeq.load(edgeq.save(qm, tmp_path / "m"))  # no trust: nothing to import
    with torch.no_grad():
        assert torch.equal(loaded(_data()), qm(_data()))


def test_tampered_or_incomplete_artifacts_are_refused(tmp_path):
    qm = edgeq.quantize(edgeq.load_model(f"{__name__}:small_net"), [_data()])
    folder = edgeq.save(qm, tmp_path / "m")
    with (folder / "model.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        edgeq.load(folder, trust_model_file=True)
    (folder / "edgeq.json").unlink()
    with pytest.raises(ArtifactError, match="interrupted save"):
        edgeq.load(folder, trust_model_file=True)


def test_metadata_records_source_and_config(tmp_path):
    qm = edgeq.quantize(edgeq.load_model(f"{__name__}:small_net"), [_data()])
    meta = json.loads((edgeq.save(qm, tmp_path / "m") / "edgeq.json").read_text())
    assert meta["source"] == {"kind": "factory", "ref": f"{__name__}:small_net"}
    assert meta["config"]["mode"] == "static"
    assert meta["layers"]["pw.0"]["bits"] == 8


def test_float16_mode_halves_the_files_and_restores_exactly(tmp_path):
    import onnxruntime as ort

    model = edgeq.load_model(f"{__name__}:small_net")
    x = _data()
    qm = edgeq.quantize(model, [], edgeq.PTQConfig(mode="float16"))
    with torch.no_grad():
        ref, sim = model(x), qm(x)
    assert 0 < float((ref - sim).abs().max()) < 1e-2  # weights really rounded, barely
    fp32 = edgeq.export_onnx(qm, tmp_path / "fp32.onnx", x[:1], quantized=False)
    fp16 = edgeq.export_onnx(qm, tmp_path / "fp16.onnx", x[:1])
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    out = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]
    torch.testing.assert_close(torch.from_numpy(out), sim, rtol=1e-4, atol=1e-5)
    loaded = edgeq.load(edgeq.save(qm, tmp_path / "m"), trust_model_file=True)
    with torch.no_grad():
        assert torch.equal(loaded(x), sim)


def test_weight_only_models_export_to_onnx(tmp_path):
    """int4 (packed, per group) and int8 (per channel) DequantizeLinear weights, opset
    21: ONNX Runtime runs them; the int4 file is the smallest."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    x = _data()
    sizes = {}
    for bits, group in ((4, 32), (8, None)):
        qm = edgeq.quantize(small_net(), [], edgeq.PTQConfig.weight_only(bits, group))
        path = edgeq.export_onnx(qm, tmp_path / f"w{bits}.onnx", x[:1])
        sizes[bits] = path.stat().st_size
        model = onnx.load(str(path))
        assert model.opset_import[0].version == 21
        weights = [i for i in model.graph.initializer if i.name.endswith("_w_q")]
        expected = onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8
        assert {w.data_type for w in weights} == {expected}
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": x.numpy()}
        )[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, qm(x).numpy(), atol=1e-5)
    fp32 = edgeq.export_onnx(qm, tmp_path / "f.onnx", x[:1], quantized=False)
    assert sizes[4] < sizes[8] < 0.35 * fp32.stat().st_size


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def test_dynamic_models_save_and_load_bit_exact(tmp_path):
    qm = edgeq.quantize(edgeq.load_model(f"{__name__}:mlp"), [], edgeq.PTQConfig(mode="dynamic"))
    loaded = edgeq.load(edgeq.save(qm, tmp_path / "m"), trust_model_file=True)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))
