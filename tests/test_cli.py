"""The `edgeq` command end to end on a tiny model and a generated image folder: run
folders, reports, recipes, exit codes and atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

import edgeq
from edgeq.cli import main
from edgeq.recipe import load_recipe, resolve

FACTORY = f"{__name__}:tiny_classifier"


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.block(x)
        y = y + self.pool(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier().eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class_{c}").mkdir()
        for i in range(6):
            arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            arr[..., c] = 255  # a class-dependent colour cast
            Image.fromarray(arr).save(root / f"class_{c}" / f"{i}.png")
    return root


def _quantize(tmp_path, images, *extra: str) -> int:
    return main(
        [
            "quantize",
            FACTORY,
            "--calib",
            str(images),
            "--eval",
            str(images),
            "--quiet",
            *extra,
        ]
    )


def test_quantize_writes_a_complete_run_folder(tmp_path, images, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "r.yaml"
    bench.write_text("bench: {batch: [1, 4], rounds: 3}\n")
    assert _quantize(tmp_path, images, "--config", str(bench)) == 0
    run = tmp_path / "runs" / "001"
    for name in (
        "fp32.onnx",
        "quantized.onnx",
        "recipe.yaml",
        "metrics.json",
        "per_layer.csv",
        "report.md",
        "report.html",
        "model/edgeq.json",
        "model/model.safetensors",
        "plots/per_layer_sqnr.png",
    ):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert m["export_check"]["pass"] is True
    assert m["export_check"]["max_abs_logit_difference"] == 0.0
    assert set(m["latency"]) == {"1", "4"}
    assert 0.0 <= m["accuracy"]["quantized_onnx"]["top1"] <= 1.0
    meta = {p.key: p.value for p in onnx.load(str(run / "quantized.onnx")).metadata_props}
    assert meta["source_model"] == FACTORY
    report = (run / "report.md").read_text()
    assert "PASS" in report
    cal = m["calibration_result"]
    assert float(cal["activation_percentile"]) in (99.9, 99.95, 99.98, 99.99, 99.995, 99.999)
    assert cal["bias_corrected_layers"] > 0
    assert set(cal["seconds"]) >= {"calibration", "percentile_search", "bias_correction"}
    assert f"Activation ranges: the {cal['activation_percentile']}th percentile" in report
    # the recipe the run wrote runs again as is (its preprocessing resolved)
    written = resolve(load_recipe(run / "recipe.yaml"))
    assert written["preprocess"]["resize"] == 256
    # the packed artifact restores the same simulation
    qm = edgeq.load(run, trust_model_file=True)  # rebuilt by importing FACTORY
    x = torch.randn(2, 3, 224, 224)
    assert qm(x).shape == (2, 3)
    out = capsys.readouterr().out
    assert "next:" in out
    assert "edgeq bench" in out
    # a second run never overwrites the first
    assert _quantize(tmp_path, images, "--config", str(bench)) == 0
    assert (tmp_path / "runs" / "002" / "metrics.json").is_file()
    # compare shows both runs side by side
    capsys.readouterr()
    plots = tmp_path / "cmp"
    assert main(["compare", str(run), str(tmp_path / "runs" / "002"), "--out", str(plots)]) == 0
    assert (plots / "accuracy_vs_size.png").is_file()
    assert (plots / "accuracy_vs_latency.png").is_file()
    table = capsys.readouterr().out
    assert "runs/001" in table
    assert "runs/002" in table
    assert "latency_ratio_b1" in table


def test_existing_out_folder_needs_force(tmp_path, images, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("previous results")
    assert _quantize(tmp_path, images, "--out", str(out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--force" in err[0]
    assert (out / "keep.txt").read_text() == "previous results"


def test_interrupted_export_leaves_no_complete_looking_file(tmp_path, images, monkeypatch):
    calls = {"n": 0}
    real_save = onnx.save

    def failing_save(model, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the quantized model: die halfway through the write
            with open(path, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
        return real_save(model, path, *a, **k)

    monkeypatch.setattr(onnx, "save", failing_save)
    out = tmp_path / "run"
    assert _quantize(tmp_path, images, "--out", str(out)) == 130
    assert (out / "fp32.onnx").is_file()
    assert not (out / "quantized.onnx").exists()
    assert not list(out.glob("*.tmp"))
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quantize", FACTORY, "--calib", "/nonexistent"], "/nonexistent: not a folder"),
        (["quantize", "torchvision:mobilenet_v9", "--calib", "."], "did you mean 'mobilenet_v2'"),
        (["quantize", "nosuchpkg.mod:fn", "--calib", "."], "cannot import 'nosuchpkg.mod'"),
        (["bench", "/nonexistent.onnx"], "ONNX file not found"),
        (["compare", "/nonexistent"], "no metrics.json"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    assert not (tmp_path / "runs").exists()  # nothing created for a failed start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0]


def test_corrupt_weights_file_is_named(tmp_path, images, capsys):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "run"
    assert (
        main(
            ["quantize", FACTORY, "--calib", str(images), "--weights", str(bad), "--out", str(out)]
        )
        == 1
    )
    assert not out.exists()
    assert f"{bad}: not a valid checkpoint" in capsys.readouterr().err


def test_internal_errors_exit_2(monkeypatch, images, tmp_path, capsys):
    import edgeq.jobs.quantize as job

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(job, "per_layer_errors", boom)
    assert _quantize(tmp_path, images, "--out", str(tmp_path / "r")) == 2
    assert "internal error" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_recipe_with_flags_over_file(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("calibration: {images: 64}\ntarget: vnni\n")
    code = main(
        [
            "quantize",
            FACTORY,
            "--calib",
            ".",
            "--config",
            str(recipe),
            "--calib-images",
            "32",
            "--dry-run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "images: 32" in out
    assert "target: vnni" in out
    assert "range_method: percentile" in out
    assert "bias_correction: true" in out


def test_recipe_error_exits_1_through_the_command(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weight: {bitz: 4}\n")
    out = tmp_path / "run"
    assert (
        main(["quantize", FACTORY, "--calib", ".", "--config", str(recipe), "--out", str(out)]) == 1
    )
    assert not out.exists()
    assert "did you mean 'weight.bits'" in capsys.readouterr().err


def test_overrides_keep_layers_in_float_or_change_bits(tmp_path, images):
    x = torch.randn(4, 3, 64, 64)
    cfg = resolve(
        {"overrides": [{"match": "stem.*", "float": True}, {"match": "block.0", "bits": 4}]}
    )
    from edgeq.recipe import to_config

    qm = edgeq.quantize(tiny_classifier(), [x], to_config(cfg))
    assert any("stem.0" in f for f in qm.placement.float_ops)
    assert qm.module.get_submodule("block.0").weight_spec.bits == 4
    assert int(qm.module.get_submodule("block.0").weight_levels().abs().max()) <= 8
    # still exports and runs; a float layer is float arithmetic in two runtimes, so the
    # simulation is close to ONNX Runtime rather than bit-exact
    path = edgeq.export_onnx(qm, tmp_path / "m.onnx", x[:1])
    from edgeq.evaluate.classification import as_predictor

    with torch.no_grad():
        np.testing.assert_allclose(as_predictor(path)(x), qm(x).numpy(), atol=0.01)


def test_bench_and_eval_commands(tmp_path, images, capsys):
    qm = edgeq.quantize(tiny_classifier(), [torch.randn(4, 3, 224, 224)])
    path = edgeq.export_onnx(qm, tmp_path / "m.onnx", torch.randn(1, 3, 224, 224))
    assert main(["bench", str(path), "--batch", "1", "2", "--rounds", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in res] == [1, 2]
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in res)
    assert main(["eval", str(path), "--data", str(images), "--ref", FACTORY, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 18
    assert {"top1", "top5", "agreement", "sqnr_db", "kl"} <= set(res)


def test_sample_photographs_give_real_calibration_images():
    from edgeq.data.samples import sample_photo_batch

    x = sample_photo_batch()
    assert x.shape[1:] == (3, 224, 224)
    assert x.shape[0] == 80  # 8 photos x 10 crops
    assert float(x.std()) > 0.5  # real images, not constants


def test_sensitivity_ranks_every_layer_and_suggests_overrides(tmp_path, images, capsys):
    out = tmp_path / "sens"
    code = main(
        [
            "sensitivity",
            FACTORY,
            "--calib",
            str(images),
            "--eval",
            str(images),
            "--images",
            "8",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["layer"] for r in res["layers"]} == {"stem.0", "block.0", "fc"}
    gains = [r["sqnr_gain_db"] for r in res["layers"]]
    assert gains == sorted(gains, reverse=True)
    assert res["suggested_overrides"][0] == {"match": res["layers"][0]["layer"], "float": True}
    assert (out / "sensitivity.html").is_file()
    assert (out / "plots" / "sensitivity.png").is_file()


def test_sensitivity_switchboard_gives_float_layers_their_float_bias():
    from edgeq.jobs.sensitivity import LayerSwitchboard

    torch.manual_seed(1)
    calib = [torch.randn(8, 3, 32, 32) for _ in range(4)]
    qm = edgeq.quantize(tiny_classifier(), calib)
    assert qm.calibration["bias_corrected_layers"] == 3
    board = LayerSwitchboard(qm)
    assert board.names == ["stem.0", "block.0", "fc"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = qm.float_module(x)
        board.set_all(False)
        all_float = qm.module(x)
        board.only_quantized("fc")
        fc_alone = qm.module(x)
        board.set_all(True)
        all_quantized = qm.module(x)
    # corrected biases kept in float layers would shift every logit
    torch.testing.assert_close(all_float, reference, rtol=0, atol=1e-5)
    assert not torch.equal(fc_alone, reference)
    assert not torch.equal(all_quantized, fc_alone)


def test_weight_only_run_writes_the_artifact_and_report(tmp_path, images):
    out = tmp_path / "w4"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weight: {bits: 4}\nbench: {rounds: 2}\n")
    code = _quantize(
        tmp_path, images, "--mode", "weight_only", "--config", str(recipe), "--out", str(out)
    )
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "weight_only"
    assert (out / "quantized.onnx").is_file()  # int4 DequantizeLinear weights, opset 21
    assert m["export_check"]["top1_agreement"] == 1.0
    assert edgeq.load(out, trust_model_file=True).config.weight.bits == 4


def test_float16_run_exports_a_half_size_onnx(tmp_path, images):
    out = tmp_path / "f16"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("bench: {rounds: 2}\n")
    assert (
        _quantize(tmp_path, images, "--mode", "float16", "--config", str(recipe), "--out", str(out))
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["bytes"]["quantized_onnx"] < 0.6 * m["bytes"]["fp32_onnx"]
    assert m["export_check"]["top1_agreement"] == 1.0
