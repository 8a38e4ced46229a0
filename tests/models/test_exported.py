"""TorchScript and ExportedProgram files: lifted back into modules, then quantized."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeq
from edgeq.graph.lift import lift_aten
from edgeq.models import ModelLoadError, load_model
from edgeq.ptq import PTQConfig, quantize


class Branchy(nn.Module):
    """Conv+BN+ReLU6, a residual add, a concat, max pool, SiLU, GAP and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8))
        self.side = nn.Conv2d(8, 4, 1, bias=False)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.max_pool2d(x + self.body(x), 2)
        x = torch.cat([x, F.silu(self.side(x))], 1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def branchy() -> nn.Module:
    torch.manual_seed(0)
    model = Branchy()
    for bn in (model.stem[1], model.body[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _export(model: nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(model, (x,), dynamic_shapes=({0: batch},))


def test_lifted_graph_has_the_users_modules_and_the_same_outputs():
    model, x = branchy(), torch.randn(4, 3, 16, 16)
    lifted = lift_aten(_export(model, x).module())
    names = dict(lifted.named_modules())
    assert isinstance(names["stem.0"], nn.Conv2d)
    assert isinstance(names["stem.1"], nn.BatchNorm2d)
    assert isinstance(names["body.0"], nn.Conv2d)
    assert names["body.0"].groups == 8
    assert isinstance(names["head"], nn.Linear)
    aten_left = [n for n in lifted.graph.nodes if "aten" in str(n.target)]
    assert aten_left == []
    with torch.no_grad():
        for k in (1, 3):  # the batch dimension stays dynamic
            assert torch.equal(lifted(x[:k]), model(x[:k]))


def _save_torchscript(model: nn.Module, x: torch.Tensor, path, how: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        ts = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
        ts.save(str(path))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_file_loads_with_its_weights(tmp_path, how):
    model, x = branchy(), torch.randn(2, 3, 16, 16)
    path = tmp_path / "m.pt"
    _save_torchscript(model, x, path, how)
    loaded = load_model(str(path), trust_model_file=True, input_shape=(2, 3, 16, 16))
    with torch.no_grad():
        for k in (1, 2):
            assert torch.equal(loaded(x[:k]), model(x[:k]))
    assert loaded.edgeq_source["kind"] == "torchscript"


def test_exported_program_quantizes_like_the_python_module(tmp_path):
    """Same modules, same calibration: the quantized simulation is identical, and the
    ONNX export from the lifted graph is bit-exact in ONNX Runtime."""
    model, x = branchy(), torch.randn(8, 3, 16, 16)
    path = tmp_path / "m.pt2"
    torch.export.save(_export(model, x), str(path))
    loaded = load_model(str(path), trust_model_file=True)
    with pytest.warns(UserWarning, match="silu"):  # SiLU has no integer kernel
        direct = quantize(model, [x], PTQConfig())
    with pytest.warns(UserWarning, match="silu"):
        lifted = quantize(loaded, [x], PTQConfig())
    assert len(lifted.placement.float_ops) == len(direct.placement.float_ops) == 1
    with torch.no_grad():
        sim = lifted.module(x)
        assert torch.equal(sim, direct.module(x))
    onnx_path = edgeq.export_onnx(lifted, tmp_path / "q.onnx", x[:1])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(ours - sim.numpy()).max() < 1e-5  # SiLU runs in float in both


def test_artifact_from_a_model_file_round_trips_and_refuses_a_changed_file(tmp_path):
    model, x = branchy(), torch.randn(8, 3, 16, 16)
    path = tmp_path / "m.pt2"
    torch.export.save(_export(model, x), str(path))
    with pytest.warns(UserWarning, match="silu"):
        qm = quantize(load_model(str(path), trust_model_file=True), [x], PTQConfig())
    edgeq.save(qm, tmp_path / "art")
    restored = edgeq.load(tmp_path / "art", trust_model_file=True)
    with torch.no_grad():
        assert torch.equal(restored(x), qm(x))
    path.write_bytes(path.read_bytes() + b"\0")
    # the artifact records the lifted graph: the model file is not read again
    assert torch.equal(edgeq.load(tmp_path / "art")(x), qm(x))
    # without that record (schema 2) the file rebuilds it, and a changed file is refused
    meta_path = tmp_path / "art" / "edgeq.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "architecture": None}))
    with pytest.raises(ModelLoadError, match="changed since"):
        edgeq.load(tmp_path / "art", trust_model_file=True)


def test_bad_model_files_are_named(tmp_path):
    ckpt = tmp_path / "weights.pth"
    torch.save(branchy().state_dict(), ckpt)
    with pytest.raises(ModelLoadError, match=r"checkpoint.*--weights"):
        load_model(str(ckpt))
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=r"junk\.pt2: not a model file"):
        load_model(str(junk))
    broken = tmp_path / "broken.pt2"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("m/serialized_exported_program.json", "{oops")
    with pytest.raises(ModelLoadError, match=r"broken\.pt2: cannot load this ExportedProgram"):
        load_model(str(broken), trust_model_file=True)


@pytest.mark.slow
def test_real_mobilenet_v2_from_torchscript_is_identical_after_quantization(
    tmp_path, mobilenet_v2_state_dict
):
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(mobilenet_v2_state_dict)
    model.eval()
    torch.manual_seed(0)
    x = torch.randn(4, 3, 224, 224).clamp(-2.1, 2.6)
    path = tmp_path / "mnv2.pt"
    _save_torchscript(model, x[:2], path, "trace")
    loaded = load_model(str(path), trust_model_file=True)
    direct, lifted = quantize(model, [x], PTQConfig()), quantize(loaded, [x], PTQConfig())
    assert lifted.placement.float_ops == []
    with torch.no_grad():
        assert torch.equal(lifted.module(x), direct.module(x))
