"""`edgeq train` end to end on a tiny factory model and generated image folders: the
run folder (the quantize run's files, the training section, the curves), the ONNX
model against the artifact bit for bit, resume after an interruption, and bad input
(each one line, exit 1, nothing created before the run could start)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import edgeq
from edgeq.cli import _Out, main
from edgeq.evaluate.classification import as_predictor
from edgeq.runs import run_status

FACTORY = f"{__name__}:tiny_classifier"
FIVE_CLASSES = f"{__name__}:five_classes"
# small images and a small batch: a run takes seconds
RECIPE = """\
preprocess: {resize: 64, crop: 64}
calibration: {images: 8}
bench: {batch: [1], rounds: 2}
train: {batch_size: 8, warmup_steps: 0, label_weight: 0.5}
"""


class TinyClassifier(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier().eval()


def five_classes() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier(classes=5).eval()


def _write_images(root: Path, n: int, *, classes: int | None, seed: int) -> Path:
    """``n`` images in class subfolders (``classes``) or directly in ``root`` (None)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % (classes or 1)
        folder = root / f"class_{c}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        arr[..., c] = 255  # a class-dependent colour cast
        Image.fromarray(arr).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train-data")
    return {
        "data": _write_images(root / "data", 16, classes=3, seed=0),
        "plain": _write_images(root / "plain", 16, classes=None, seed=1),
        "eval": _write_images(root / "eval", 6, classes=3, seed=2),
    }


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def _train(data: Path, out: Path, recipe: Path, *extra: str, model: str = FACTORY) -> int:
    return main(
        ["train", model, "--data", str(data), "--config", str(recipe), "--out", str(out),
         "--trust-model-file", "--quiet", *extra]
    )  # fmt: skip


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, folders, recipe) -> tuple[Path, dict]:
    """One epoch on 16 labeled images, evaluated each epoch: the run folder and the
    command's --json summary."""
    out = tmp_path_factory.mktemp("trained") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = _train(folders["data"], out, recipe, "--eval", str(folders["eval"]), "--json")
    assert code == 0
    return out, json.loads(printed.getvalue())


def test_train_writes_a_complete_run_folder(trained):
    out, summary = trained
    for name in (
        "fp32.onnx",
        "quantized.onnx",
        "recipe.yaml",
        "metrics.json",
        "per_layer.csv",
        "report.md",
        "report.html",
        "model/edgeq.json",
        "checkpoint.pt",
        "train_metrics.csv",
        "train_metrics.json",
        "plots/train_loss.png",
        "plots/train_accuracy.png",
    ):
        assert (out / name).is_file(), name
    assert run_status(out) == "complete"
    m = json.loads((out / "metrics.json").read_text())
    assert summary["training"] == m["training"]
    t = m["training"]
    assert len(t["history"]) == 1  # one row per epoch
    row = t["history"][0]
    assert {"loss", "kd", "ce", "eval_top1", "eval_agreement"} <= set(row)
    assert t["steps"] == 2  # 16 images, batches of 8
    assert t["config"]["label_weight"] == 0.5
    assert "labels used for cross-entropy" in t["data"]
    assert t["teacher"] == f"the FP32 model itself ({FACTORY})"
    assert t["images_per_s"] > 0
    assert m["seconds"]["train"] > 0
    assert m["export_check"]["pass"] is True
    report = (out / "report.md").read_text()
    assert "## Training: quantization-aware, distilled" in report
    assert "(plots/train_loss.png)" in report
    assert "(plots/train_accuracy.png)" in report
    assert 'src="plots/train_loss.png"' in (out / "report.html").read_text()
    # ONNX Runtime runs the trained model exactly as the artifact restores it
    qm = edgeq.load(out, trust_model_file=True)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ours = qm(x).numpy()
    np.testing.assert_array_equal(as_predictor(out / "quantized.onnx")(x), ours)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_the_same_command_trains_under_torchrun(tmp_path, trained, folders, recipe):
    """Two processes (gloo), each half of every batch: the weights trained equal the
    single-process run's to float tolerance; rank 0 alone wrote the run folder."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "edgeq.cli", "train", FACTORY, "--data", str(folders["data"]), "--eval",
           str(folders["eval"]), "--config", str(recipe), "--out", str(out),
           "--trust-model-file", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run_status(out) == "complete"
    assert proc.stdout.count("run folder:") == 1  # one summary: rank 0's
    two, one = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (out, trained[0]))
    assert two["step"] == one["step"] == 2
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=0, atol=1e-5, msg=name)


def test_resume_continues_a_run_cut_short(tmp_path, folders, recipe, capsys, monkeypatch):
    """Interrupted after epoch 1 of 2 (unlabeled images), the run resumes from its
    checkpoint in place and ends as the uninterrupted run does, bit for bit; a
    checkpoint of another model is refused."""
    plain, cut, whole = folders["plain"], tmp_path / "cut", tmp_path / "whole"
    unlabeled = tmp_path / "unlabeled.yaml"
    unlabeled.write_text(RECIPE.replace("label_weight: 0.5", "label_weight: 0"))
    assert _train(plain, whole, unlabeled, "--epochs", "2") == 0

    def interrupt_after_epoch_1(self: _Out, msg: str) -> None:
        if msg.startswith("epoch 1/2:"):  # logged once epoch 1's checkpoint is written
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(_Out, "log", interrupt_after_epoch_1)
        assert _train(plain, cut, unlabeled, "--epochs", "2") == 130
    assert run_status(cut) == "failed"
    assert (cut / "checkpoint.pt").is_file()
    assert not (cut / "metrics.json").exists()
    capsys.readouterr()

    assert _train(plain, cut, unlabeled, "--resume", model=FIVE_CLASSES) == 1
    assert "is a checkpoint of another model" in _one_line(capsys)
    assert run_status(cut) == "failed"
    other = tmp_path / "other.yaml"
    other.write_text(RECIPE.replace("label_weight: 0.5", "label_weight: 0, lr: 0.001"))
    assert _train(plain, cut, other, "--resume") == 1
    assert "its recipe has train.lr=2e-05, this run train.lr=0.001" in _one_line(capsys)

    # the run's own recipe.yaml (2 epochs) is used when --config is not given
    code = main(["train", FACTORY, "--data", str(plain), "--out", str(cut), "--resume",
                 "--trust-model-file", "--quiet"])  # fmt: skip
    assert code == 0
    assert run_status(cut) == "complete"
    t = json.loads((cut / "metrics.json").read_text())["training"]
    assert t["resumed"] is True
    assert [r["epoch"] for r in t["history"]] == [1, 2]
    assert t["data"] == f"16 images of {plain} (unlabeled)"
    x = torch.randn(4, 3, 64, 64)
    resumed, uninterrupted = (as_predictor(p / "quantized.onnx")(x) for p in (cut, whole))
    np.testing.assert_array_equal(resumed, uninterrupted)

    assert _train(plain, cut, unlabeled, "--resume") == 1
    assert "this run is complete, nothing to resume" in _one_line(capsys)


def test_train_stops_on_a_nan_loss_naming_the_step(tmp_path, folders, capsys):
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(
        RECIPE.replace("label_weight: 0.5", "lr: 1.0e+30, grad_clip: null, scale_lr_factor: 1")
    )
    out = tmp_path / "run"
    assert _train(folders["data"], out, recipe) == 1
    line = _one_line(capsys)
    assert "step 2 (epoch 1): the loss is nan" in line
    assert "the first non-finite output was at layer" in line
    assert run_status(out) == "failed"


def _labels_out_of_range(tmp_path: Path) -> Path:
    root = tmp_path / "labeled"
    _write_images(root / "images", 4, classes=None, seed=3)
    (root / "labels.csv").write_text("file,label\n0.png,0\n1.png,1\n2.png,7\n3.png,2\n")
    return root


BAD_INPUT = {
    "eval-is-data": "is the --data folder: accuracy must be measured on images",
    "eval-is-calib": "is the --calib folder",
    "empty-folder": "no images found",
    "teacher-of-5-classes": "its output is shape (1, 5), the model's is shape (1, 3)",
    "unknown-train-key": "unknown key 'train.epoch'; did you mean 'train.epochs'?",
    "bad-train-value": "train.temperature=0: must be a finite number > 0",
    "labels-out-of-range": "label 7 is not a class of the model, which has 3 outputs",
    "labels-on-unlabeled": "has no labels (a plain folder of images)",
    "float16": "edgeq train trains static, weight_only models",
    "teacher-weights-alone": "--teacher-weights needs --teacher",
    "resume-a-folder-that-is-not-a-run": "not an edgeq run folder",
    "resume-and-force": "--resume continues --out in place and --force replaces it",
    "resume-a-quantize-run": "a run of edgeq quantize, not of edgeq train",
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_1(tmp_path, folders, recipe, capsys, case):
    data, extra = folders["data"], []
    config = recipe
    if case == "eval-is-data":
        extra = ["--eval", str(data)]
    elif case == "eval-is-calib":
        extra = ["--calib", str(folders["eval"]), "--eval", str(folders["eval"])]
    elif case == "empty-folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "teacher-of-5-classes":
        extra = ["--teacher", FIVE_CLASSES]
    elif case == "labels-out-of-range":
        data = _labels_out_of_range(tmp_path)
    elif case == "labels-on-unlabeled":
        data = folders["plain"]
    elif case == "teacher-weights-alone":
        extra = ["--teacher-weights", str(tmp_path / "w.pth")]
    elif case == "resume-a-folder-that-is-not-a-run":
        (tmp_path / "run").mkdir()
        extra = ["--resume"]
    elif case == "resume-a-quantize-run":
        (tmp_path / "run").mkdir()
        marker = {"format": "edgeq-run", "status": "failed", "command": "quantize"}
        (tmp_path / "run" / "edgeq-run.json").write_text(json.dumps(marker))
        extra = ["--resume"]
    elif case == "resume-and-force":
        extra = ["--resume", "--force"]
    else:
        config = tmp_path / "bad.yaml"
        bad = {
            "unknown-train-key": "train: {epoch: 2}\n",
            "bad-train-value": "train: {temperature: 0}\n",
            "float16": "mode: float16\n",
        }
        config.write_text(RECIPE.split("train:")[0] + bad[case])
    out = tmp_path / "run"
    assert _train(data, out, config, *extra) == 1
    assert BAD_INPUT[case] in _one_line(capsys)
    if case != "resume-a-quantize-run":  # no run folder for a run that cannot start
        assert not (out / "edgeq-run.json").exists()


def test_dry_run_prints_the_train_recipe_with_flags_over_file(recipe, capsys):
    args = ["train", FACTORY, "--data", ".", "--config", str(recipe), "--epochs", "3"]
    assert main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "train:" in printed
    assert "epochs: 3" in printed  # --epochs over the file's default
    assert "label_weight: 0.5" in printed  # the file over the defaults
    assert "range_method: percentile" in printed  # quantize's keys, as quantize reads them
