"""The command against bad input, as a hostile but realistic user tries it: each case
asserts the exit code, the one-line message and that nothing outside the run folder
changed (no run folder is created for a run that could not start)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgeq.cli import main
from edgeq.runs import run_status

FACTORY = f"{__name__}:tiny_classifier"


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.stem(x), 1), 1))


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier().eval()


class TwoOutputs(TinyClassifier):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        y = torch.flatten(nn.functional.adaptive_avg_pool2d(self.stem(x), 1), 1)
        return self.fc(y), y


def two_outputs() -> nn.Module:
    return TwoOutputs().eval()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(a + b)


def two_inputs() -> nn.Module:
    return TwoInputs().eval()


def exits_quietly() -> nn.Module:
    raise SystemExit(0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class_{c}").mkdir()
        for i in range(4):
            arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"class_{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, images) -> Path:
    """A complete run of the tiny factory (shared; tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["quantize", FACTORY, "--calib", str(images), "--out", str(out), "--quiet"])
    assert code == 0
    return out


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _quantize(images: Path, out: Path, *extra: str) -> int:
    return main(["quantize", FACTORY, "--calib", str(images), "--out", str(out), "--quiet", *extra])


def _recipe(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("overrides: [{match: stm.*, float: true}]", "matches no layer of the model; closest"),
        ("weight: {bits: 3}", "weight.bits=3: mode static takes 2, 4, 8"),
        ("activation: {bits: 16}", "static mode takes 8-bit uniform activations"),
        ("weight: {scheme: kmeans}", "kmeans levels are not built"),
        (
            "mode: weight_only\nweight: {bits: 4, granularity: per_group, group_size: 5}",
            "group_size=5 does not divide the 8 input channels of layer 'fc'",
        ),
        ("bench: {threads: abc}", "bench.threads='abc' must be a positive integer"),
        ("evaluation: {batch_size: 0}", "evaluation.batch_size=0"),
        ("bench: {batch: [0, -1]}", "bench.batch=[0, -1]"),
        ("evaluation: {images: -3}", "evaluation.images=-3"),
    ],
    ids=[
        "override-matches-nothing",
        "weight-bits-3",
        "activation-bits-16",
        "kmeans",
        "group-size",
        "threads-abc",
        "eval-batch-0",
        "bench-batch",
        "eval-images",
    ],
)
def test_bad_options_stop_before_any_file_is_written(tmp_path, images, capsys, recipe, message):
    out = tmp_path / "run"
    assert _quantize(images, out, "--config", _recipe(tmp_path, recipe)) == 1
    assert message in _one_line(capsys)
    assert not out.exists()


def test_override_error_lists_the_closest_layer_names(tmp_path, images, capsys):
    assert (
        _quantize(
            images,
            tmp_path / "r",
            "--config",
            _recipe(tmp_path, "overrides: [{match: stem.9, bits: 4}]"),
        )
        == 1
    )
    assert "closest layer names: stem.0" in _one_line(capsys)


def test_bench_rounds_0_and_files_that_are_not_onnx(tmp_path, earlier_run, capsys):
    assert main(["bench", str(earlier_run / "quantized.onnx"), "--rounds", "0"]) == 1
    assert "bench.rounds=0 must be a positive integer" in _one_line(capsys)
    junk = tmp_path / "model.onnx"
    junk.write_text("not a model")
    assert main(["bench", str(junk)]) == 1
    assert "not an ONNX model ONNX Runtime can load" in _one_line(capsys)
    assert main(["bench", str(earlier_run / "recipe.yaml")]) == 1
    assert "not an ONNX model" in _one_line(capsys)


def test_bench_two_models_reports_their_ratio_from_one_loop(earlier_run, capsys):
    assert main(["bench", str(earlier_run), "--batch", "2", "--rounds", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    (row,) = res["results"]
    assert res["base"].endswith("fp32.onnx")
    assert res["other"].endswith("quantized.onnx")
    assert row["ratio"] == pytest.approx(row["other_ms"] / row["base_ms"])


def test_eval_of_a_file_that_is_not_onnx(tmp_path, images, capsys):
    junk = tmp_path / "x.onnx"
    junk.write_bytes(b"\x00" * 10)
    assert main(["eval", str(junk), "--data", str(images)]) == 1
    assert "not an ONNX model" in _one_line(capsys)


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"accuracy": 3}'])
def test_compare_refuses_corrupt_metrics(tmp_path, earlier_run, capsys, content):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text(content)
    assert main(["compare", str(earlier_run), str(bad)]) == 1
    assert "metrics.json" in _one_line(capsys)


def test_force_never_replaces_user_files_or_the_working_directory(
    tmp_path, images, capsys, monkeypatch
):
    notes = tmp_path / "my_notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("keep")
    assert _quantize(images, notes, "--force") == 1
    assert "not an edgeq run" in _one_line(capsys)
    assert (notes / "ideas.txt").read_text() == "keep"
    monkeypatch.chdir(notes)
    assert _quantize(images, Path("."), "--force") == 1
    assert "refusing to replace the working directory" in _one_line(capsys)
    assert sorted(os.listdir(notes)) == ["ideas.txt"]


def test_out_that_is_a_file(tmp_path, images, capsys):
    f = tmp_path / "out.txt"
    f.write_text("x")
    assert _quantize(images, f) == 1
    assert "is a file, not a folder" in _one_line(capsys)
    assert f.read_text() == "x"


def test_a_failed_forced_run_leaves_the_earlier_run_intact(
    tmp_path, images, earlier_run, monkeypatch, capsys
):

    import edgeq.jobs.quantize as job

    run = tmp_path / "run"
    shutil.copytree(earlier_run, run)
    before = (run / "metrics.json").read_bytes()

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(job, "per_layer_errors", boom)
    assert _quantize(images, run, "--force") == 2
    assert (run / "metrics.json").read_bytes() == before
    assert run_status(run) == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_eval_and_load_refuse_a_run_that_was_cut_short(tmp_path, images, earlier_run, capsys):

    import edgeq
    from edgeq.runs import RunFolderError

    run = tmp_path / "run"
    shutil.copytree(earlier_run, run)
    marker = json.loads((run / "edgeq-run.json").read_text())
    (run / "edgeq-run.json").write_text(json.dumps({**marker, "status": "running"}))
    assert main(["eval", str(run / "quantized.onnx"), "--data", str(images)]) == 1
    assert "this run is running, not complete" in _one_line(capsys)
    with pytest.raises(RunFolderError, match="not complete"):
        edgeq.load(run, trust_model_file=True)


def test_eval_of_a_factory_run_needs_trust_only_without_its_architecture_record(
    images, earlier_run, tmp_path, capsys
):
    # the artifact records its graph: nothing to import, no trust needed
    assert main(["eval", str(earlier_run), "--data", str(images), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 12
    run = tmp_path / "run"
    shutil.copytree(earlier_run, run)
    meta_path = run / "model" / "edgeq.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "architecture": None}))  # as schema 2 had it
    assert main(["eval", str(run), "--data", str(images), "--quiet"]) == 1
    assert "--trust-model-file" in _one_line(capsys)
    args = ["eval", str(run), "--data", str(images), "--trust-model-file", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 12


def test_exported_program_needs_trust_on_the_command_line(tmp_path, images, capsys):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_classifier(), (torch.zeros(1, 3, 32, 32),)), path)
    out = tmp_path / "run"
    assert main(["quantize", str(path), "--calib", str(images), "--out", str(out)]) == 1
    assert "--trust-model-file" in _one_line(capsys)
    assert not out.exists()


def test_labels_outside_the_model_classes_and_duplicate_rows(tmp_path, images, capsys):
    folder = tmp_path / "labeled"
    (folder / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "images" / name)
    (folder / "labels.csv").write_text("\ufefffile,label\na.png,0\nb.png,7\n")  # BOM too
    args = ["quantize", FACTORY, "--calib", str(images), "--eval", str(folder)]
    assert main([*args, "--out", str(tmp_path / "r")]) == 1
    assert "label 7 is not a class of the model, which has 3 outputs" in _one_line(capsys)
    (folder / "labels.csv").write_text("file,label\na.png,0\na.png,1\n")
    assert main([*args, "--out", str(tmp_path / "r")]) == 1
    assert "is listed twice (lines 2 and 3)" in _one_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("two_outputs", "the model returns tuple"),
        ("two_inputs", "the model takes 2 inputs"),
        ("exits_quietly", "SystemExit"),
    ],
)
def test_models_the_command_cannot_take_are_named(tmp_path, images, capsys, factory, message):
    out = tmp_path / "r"
    args = ["quantize", f"{__name__}:{factory}", "--calib", str(images), "--out", str(out)]
    assert main(args) == 1
    assert message in _one_line(capsys)
    assert not out.exists()


def test_preprocessing_flags_reach_the_metrics_and_the_report(tmp_path, images, capsys):
    out = tmp_path / "run"
    flags = ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--crop", "32"]
    assert _quantize(images, out, "--resize", "40", *flags) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert m["preprocess"]["crop"] == 32
    assert "with crop, mean, resize, std from the recipe" in m["preprocess"]["origin"]
    assert "Preprocessing (" in (out / "report.md").read_text()
    assert "spread over 3 of 3 classes" in m["calibration"]


@pytest.mark.slow
def test_sigterm_stops_the_run_and_marks_it_failed(tmp_path, images):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgeq.cli", "quantize", FACTORY, "--calib", str(images)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--config", _recipe(tmp_path, "bench: {rounds: 100000}")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (out / "fp32.onnx").exists():  # well inside the job
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err
    assert run_status(out) == "failed"
    assert not (out / "metrics.json").exists()


def test_a_run_whose_export_check_fails_exits_3(tmp_path, images, monkeypatch, capsys):
    """ONNX Runtime disagreeing with the simulation is a failed run, not a success."""
    import edgeq.jobs.quantize as job

    real = job.as_predictor

    def disagreeing(model: object, **kw: object) -> object:
        run = real(model, **kw)
        if str(model).endswith("quantized.onnx"):
            return lambda x: -run(x)  # every top-1 moves
        return run

    monkeypatch.setattr(job, "as_predictor", disagreeing)
    out = tmp_path / "run"
    assert _quantize(images, out) == 3
    assert "export check FAILED" in _one_line(capsys)
    assert json.loads((out / "metrics.json").read_text())["export_check"]["pass"] is False
