"""The architecture record: an artifact rebuilds its model from the JSON alone (no
torchvision name, no factory, no model file), a structure changed before quantization
included, and a forged record is refused naming the key, before any allocation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import edgeq
from edgeq.artifact import ArtifactError
from edgeq.artifact.architecture import ArchitectureError, describe, rebuild
from edgeq.artifact.validate import At
from edgeq.graph.capture import capture
from edgeq.graph.fold_bn import fold_batchnorm


class SmallNet(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6()
        )
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.drop(x))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet().eval()


class Softplus(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x).sum(1)  # a function edgeq does not place


def _data() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(8, 3, 12, 12)


def _narrowed(model: SmallNet, width: int) -> SmallNet:
    """What a channel-pruning pass leaves: the same modules, fewer channels."""
    torch.manual_seed(2)
    narrow = SmallNet(width).eval()
    narrow.edgeq_source = model.edgeq_source  # type: ignore[assignment]
    return narrow


@pytest.mark.parametrize(
    "name", ["mobilenet_v2", "resnet18", "efficientnet_b0", "regnet_x_400mf", "squeezenet1_0"]
)
def test_torchvision_graphs_rebuild_from_their_record(name):
    model = torchvision.models.get_model(name).eval()
    gm = fold_batchnorm(capture(model))
    record = json.loads(json.dumps(describe(gm)))  # through JSON text
    rebuilt = rebuild(record, At("edgeq.json", "architecture"), max_numel=None)
    rebuilt.load_state_dict(gm.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), gm(x))
    assert describe(rebuilt, check=False) == record


def test_a_pruned_model_loads_with_its_own_shapes_without_its_source(tmp_path):
    """The source names the 32-wide factory; the model was narrowed to 24 channels
    before quantization: the artifact must rebuild 24, and never call the factory."""
    model = _narrowed(edgeq.load_model(f"{__name__}:small_net"), 24)
    qm = edgeq.quantize(model, [_data()])
    folder = edgeq.save(qm, tmp_path / "m")
    loaded = edgeq.load(folder)  # untrusted: a factory source alone would be refused
    assert loaded.module.get_submodule("stem.0").weight.shape[0] == 24
    with torch.no_grad():
        assert torch.equal(loaded(_data()), qm(_data()))
    # saved again from the loaded model, the record travels on
    again = edgeq.load(edgeq.save(loaded, tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(again(_data()), qm(_data()))


def test_a_trained_qat_model_round_trips_through_the_record(tmp_path):
    qm = edgeq.prepare_qat(SmallNet().eval(), [_data()])
    opt = torch.optim.SGD([p for p in qm.module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        qm.module(_data()).square().mean().backward()
        opt.step()
    edgeq.convert(qm)
    loaded = edgeq.load(edgeq.save(qm, tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(loaded(_data()), qm(_data()))


def test_an_unrecordable_graph_falls_back_to_its_source_or_is_named(tmp_path):
    x = torch.randn(4, 6)
    with pytest.warns(UserWarning, match="stay in float"):
        qm = edgeq.quantize(Softplus(), [x])
    with pytest.raises(ArtifactError, match=r"softplus is not one edgeq records.*load_model"):
        edgeq.save(qm, tmp_path / "a")
    assert not (tmp_path / "a" / "edgeq.json").exists()
    qm.source = {"kind": "factory", "ref": f"{__name__}:Softplus"}
    with pytest.warns(UserWarning, match="rebuilds it from its source"):
        folder = edgeq.save(qm, tmp_path / "b")
    assert json.loads((folder / "edgeq.json").read_text())["architecture"] is None
    with pytest.raises(ArtifactError, match="trust"):
        edgeq.load(folder)  # the source is then needed, and needs trust
    loaded = edgeq.load(folder, trust_model_file=True)
    assert torch.equal(loaded(x), qm(x))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    qm = edgeq.quantize(SmallNet().eval(), [_data()])
    return edgeq.save(qm, tmp_path_factory.mktemp("arch") / "m")


def _forged(artifact: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "f"
    shutil.copytree(artifact, folder)
    meta = json.loads((folder / "edgeq.json").read_text())
    edit(meta["architecture"])
    (folder / "edgeq.json").write_text(json.dumps(meta))
    return folder


def _node(arch: dict, name: str) -> dict:
    return next(n for n in arch["nodes"] if n["name"] == name)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda a: a["modules"]["fc"].update(type="Module"),
            r"architecture\.modules\['fc'\]\.type='Module': expected a torch\.nn module class",
        ),
        (
            lambda a: a["modules"]["fc"].update(type="os.system"),
            r"type='os\.system': expected a torch\.nn module class",
        ),
        (
            lambda a: a["modules"]["fc"]["init"].update(in_features=10**7, out_features=10**7),
            r"tensors hold \d+ values, more than the tensors file can store",
        ),
        (
            lambda a: a["modules"]["fc"]["init"].update(weights_file="/etc/passwd"),
            r"init\.weights_file: not an argument of Linear",
        ),
        (
            lambda a: a["modules"]["fc"]["init"].update(in_features=-3),
            r"modules\['fc'\]: Linear\(\.\.\.\) cannot be built",
        ),
        (
            lambda a: _node(a, "flatten").update(target="builtins.eval"),
            r"nodes\.\d+\.target='builtins\.eval': expected a function edgeq records",
        ),
        (
            lambda a: _node(a, "flatten").update(op="call_method", target="__reduce_ex__"),
            r"target='__reduce_ex__': expected a method edgeq records",
        ),
        (
            lambda a: _node(a, "stem_0").update(args=[{"node": "fc"}]),
            r"args\.0\.node='fc': expected the name of an earlier node",
        ),
        (
            lambda a: _node(a, "stem_0").update(target="nope"),
            r"target='nope': expected a path listed in modules / attributes",
        ),
        (
            lambda a: a["nodes"].pop(),
            r"the last node must be the output",
        ),
        (
            lambda a: a.update(version=2),
            r"architecture\.version=2: expected 1",
        ),
        (
            lambda a: a["modules"].update({"../x": a["modules"]["fc"]}),
            r"modules='\.\./x': expected a dotted module path",
        ),
    ],
    ids=[
        "module-base",
        "module-os",
        "huge-linear",
        "unknown-arg",
        "bad-arg",
        "eval",
        "method",
        "forward-ref",
        "missing-module",
        "no-output",
        "version",
        "path",
    ],
)
def test_a_forged_record_is_refused_naming_the_key(artifact, tmp_path, edit, match):
    folder = _forged(artifact, tmp_path, edit)
    with pytest.raises(ArtifactError, match=match):
        edgeq.load(folder)


def test_a_record_whose_shapes_do_not_fit_the_tensors_is_refused(artifact, tmp_path):
    folder = _forged(
        artifact, tmp_path, lambda a: a["modules"]["fc"]["init"].update(in_features=16)
    )
    with pytest.raises(ArtifactError, match="fc"):
        edgeq.load(folder)


def test_describe_names_what_it_cannot_record():
    class Custom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.custom = Custom()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.custom(x)

    tracer = torch.fx.Tracer()
    tracer.is_leaf_module = lambda m, name: isinstance(m, Custom)  # type: ignore[method-assign]
    outer = Outer()
    gm = torch.fx.GraphModule(outer, tracer.trace(outer))
    with pytest.raises(ArchitectureError, match=r"module 'custom': .*Custom is not a torch\.nn"):
        describe(gm)
