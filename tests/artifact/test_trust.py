"""Loading never imports a module or reads a model file unless trust_model_file=True:
a tampered artifact's factory or file source is refused untouched, and a trusted
factory's exceptions (SystemExit included) become errors naming it."""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import edgeq
from edgeq.artifact import ArtifactError, ArtifactSourceError
from edgeq.models import ModelLoadError, build_from_source, load_model

OPT_IN = r"trust_model_file=True \(on the command line: --trust-model-file\)"
CALLED: list[str] = []


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3)).eval()


def spy() -> nn.Module:
    CALLED.append("spy")
    return tiny()


def exits() -> nn.Module:
    raise SystemExit(0)


def closes() -> nn.Module:
    raise GeneratorExit


def fails() -> nn.Module:
    raise RuntimeError("no GPU here")


def interrupted() -> nn.Module:
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    qm = edgeq.quantize(edgeq.load_model(f"{__name__}:tiny"), [], edgeq.PTQConfig(mode="dynamic"))
    return edgeq.save(qm, tmp_path_factory.mktemp("art") / "m")


def with_source(artifact: Path, tmp_path: Path, source: dict, *, record: bool = False) -> Path:
    """A copy of ``artifact`` with another source; without its architecture record
    (``record=False``), so that loading must build the source."""
    folder = tmp_path / "t"
    shutil.copytree(artifact, folder)
    meta = json.loads((folder / "edgeq.json").read_text())
    meta["source"] = source
    if not record:
        meta["architecture"] = None
    (folder / "edgeq.json").write_text(json.dumps(meta))
    return folder


_TOUCHED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _TOUCHED is not None and event == "open" and isinstance(args[0], str | Path):
        _TOUCHED.append(str(args[0]))


sys.addaudithook(_audit)  # cannot be removed: records only inside `touched()`


@contextlib.contextmanager
def touched(monkeypatch) -> Iterator[list[str]]:
    """Paths opened (audit hook) or stat'ed (Path.stat) inside the block."""
    global _TOUCHED
    paths: list[str] = []
    real_stat = pathlib.Path.stat

    def stat(self, *args, **kwargs):
        paths.append(str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    _TOUCHED = paths
    try:
        yield paths
    finally:
        _TOUCHED = None
        monkeypatch.undo()


def test_a_tampered_os_abort_factory_is_refused_and_never_called(artifact, tmp_path):
    folder = with_source(artifact, tmp_path, {"kind": "factory", "ref": "os:abort"})
    with pytest.raises(ArtifactError, match=rf"import the Python module 'os'.*{OPT_IN}"):
        edgeq.load(folder)  # the test process is still alive to see the error


def test_with_an_architecture_record_the_source_is_never_built(artifact, tmp_path):
    folder = with_source(artifact, tmp_path, {"kind": "factory", "ref": "os:abort"}, record=True)
    qm = edgeq.load(folder)  # os.abort would end the test run
    assert qm.source == {"kind": "factory", "ref": "os:abort"}  # kept, as information


def test_an_untrusted_factory_is_neither_imported_nor_called(artifact, tmp_path):
    CALLED.clear()
    for ref in (f"{__name__}:spy", "edgeq_payload_module:run"):
        folder = with_source(
            artifact, tmp_path / ref.replace(":", "_"), {"kind": "factory", "ref": ref}
        )
        with pytest.raises(ArtifactError, match=r"source: factory source; building this model"):
            edgeq.load(folder)
    assert CALLED == []
    assert "edgeq_payload_module" not in sys.modules
    folder = with_source(artifact, tmp_path / "ok", {"kind": "factory", "ref": f"{__name__}:spy"})
    edgeq.load(folder, trust_model_file=True)  # the opt-in works
    assert CALLED == ["spy"]


@pytest.mark.parametrize(
    ("factory", "raised"),
    [("exits", "SystemExit"), ("closes", "GeneratorExit"), ("fails", "RuntimeError: no GPU")],
)
def test_a_trusted_factory_that_raises_is_named(artifact, tmp_path, factory, raised):
    ref = f"{__name__}:{factory}"
    folder = with_source(artifact, tmp_path, {"kind": "factory", "ref": ref})
    with pytest.raises(ArtifactSourceError, match=rf"factory {ref} raised {raised}") as info:
        edgeq.load(folder, trust_model_file=True)
    assert isinstance(info.value, ModelLoadError)  # callers catching either see it
    with pytest.raises(ModelLoadError, match=rf"factory {ref} raised {raised}"):
        load_model(ref)  # typed by the caller: allowed, and wrapped the same way


def test_keyboard_interrupt_in_a_factory_is_not_swallowed():
    with pytest.raises(KeyboardInterrupt):
        load_model(f"{__name__}:interrupted")


@pytest.mark.parametrize("kind", ["torchscript", "exported_program"])
@pytest.mark.parametrize("path", ["/nonexistent/model.pt", "../../etc/passwd"])
def test_an_untrusted_model_file_source_is_never_touched(
    artifact, tmp_path, monkeypatch, kind, path
):
    source = {"kind": kind, "path": path, "sha256": "0" * 64, "input_shape": [2, 4]}
    folder = with_source(artifact, tmp_path, source)
    with touched(monkeypatch) as paths, pytest.raises(ArtifactError) as info:
        edgeq.load(folder)
    message = str(info.value)
    assert f"would read {path!r}" in message
    assert "trust_model_file=True" in message
    assert "not found" not in message
    assert not [p for p in paths if p.endswith(("model.pt", "passwd"))], paths
    assert paths  # the hooks did record the artifact's own files


def test_a_trusted_model_file_source_is_checked(artifact, tmp_path):
    source = {"kind": "torchscript", "path": "/nonexistent/m.pt", "sha256": "0" * 64}
    folder = with_source(artifact, tmp_path, {**source, "input_shape": [2, 4]})
    with pytest.raises(ArtifactSourceError, match=r"/nonexistent/m\.pt: model file not found"):
        edgeq.load(folder, trust_model_file=True)
    folder = with_source(artifact, tmp_path / "b", {**source, "input_shape": [2**40, 2**40]})
    with pytest.raises(ArtifactError, match=r"source\.input_shape=.*at most 67108864 values"):
        edgeq.load(folder, trust_model_file=True)


@pytest.mark.parametrize("path", ["../../etc/passwd", "model.pt", "/models/../../etc/passwd"])
def test_even_trusted_a_recorded_path_never_walks_out(artifact, tmp_path, monkeypatch, path):
    """save records an absolute path; a relative one (resolved against wherever the loader
    runs) or one with '..' is refused before it is opened."""
    source = {"kind": "torchscript", "path": path, "sha256": "0" * 64, "input_shape": [2, 4]}
    folder = with_source(artifact, tmp_path, source)
    with touched(monkeypatch) as paths, pytest.raises(ArtifactError, match=r"without '\.\.'"):
        edgeq.load(folder, trust_model_file=True)
    assert not [p for p in paths if p.endswith(("model.pt", "passwd"))], paths


def _exported(tmp_path: Path) -> Path:
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny(), (torch.randn(2, 4),)), str(path))
    return path


def test_load_model_refuses_an_untrusted_model_file_after_listing_it_only(tmp_path, monkeypatch):
    import edgeq.models.loaders as loaders

    path = _exported(tmp_path)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("read without trust")

    for name in ("sha256_of", "source_for", "load_model_file"):
        monkeypatch.setattr(loaders, name, forbidden)
    monkeypatch.setattr(torch.export, "load", forbidden)
    with pytest.raises(ModelLoadError, match=rf"m\.pt2: an ExportedProgram .*{OPT_IN}"):
        load_model(str(path))
    monkeypatch.undo()
    assert isinstance(load_model(str(path), trust_model_file=True), nn.Module)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"kind": "factory", "ref": "os:abort"}, r"factory 'os:abort': .*import the Python"),
        ({"kind": "torchscript", "path": "/x.pt", "input_shape": [1]}, r"would read '/x\.pt'"),
    ],
    ids=["factory", "torchscript"],
)
def test_build_from_source_needs_trust_for_code(source, match):
    with pytest.raises(ModelLoadError, match=rf"{match}.*{OPT_IN}"):
        build_from_source(source)


def test_build_from_source_checks_torchvision_names_before_building():
    with pytest.raises(ModelLoadError, match=r"torchvision:\['resnet18'\]: unknown"):
        build_from_source({"kind": "torchvision", "name": ["resnet18"]})
    with pytest.raises(ModelLoadError, match=r"torchvision:resnet17: .*did you mean 'resnet18'"):
        build_from_source({"kind": "torchvision", "name": "resnet17"})
    model = build_from_source({"kind": "torchvision", "name": "resnet18"})
    assert model.edgeq_source == {"kind": "torchvision", "name": "resnet18"}
