"""The train job: quantization-aware training with distillation, into a run folder.

    PTQ on a sample of the training images (or --calib)  ->  `edgeq.prepare_qat`
    the FP32 model (or --teacher) teaches                ->  `DistillationObjective`
    the one training loop                                ->  `edgeq.train.engine.fit`
    `edgeq.convert`, then what quantize writes           ->  `finish_run`

The run folder holds what a quantize run holds (fp32.onnx, quantized.onnx, model/,
recipe.yaml, metrics.json with a ``training`` section, per_layer.csv, the report with
the loss and accuracy curves) plus the engine's checkpoint.pt, train_metrics.csv and
train_metrics.json. ``--resume`` continues a run folder whose training was cut short
from its checkpoint, in place.

The --eval images never train or calibrate: an --eval folder that is the --data (or
--calib) folder is refused.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import edgeq
from edgeq.data import DataError, LabeledImages, Preprocess, describe_sample, load_labeled_images
from edgeq.data import sample_indices as _sample_indices
from edgeq.data.listing import IMAGE_SUFFIXES
from edgeq.evaluate.classification import as_predictor, predict, score
from edgeq.graph.states import convert
from edgeq.jobs.inputs import JobInputError, JobInputs, check_model_io, resolve_preprocess
from edgeq.jobs.quantize import batches, finish_run, log_quantized, used_recipe
from edgeq.ptq import check_config
from edgeq.ptq.static import QuantizedModel
from edgeq.recipe import RecipeError, TrainRecipe, dump, load_recipe, resolve, to_config, to_train
from edgeq.runs import RUN_MARKER, RunFolder, RunFolderError, run_status, write_text_atomic
from edgeq.train.distill import DistillationObjective
from edgeq.train.engine import TrainData, TrainResult, fit
from edgeq.train.qat import QAT_MODES, parameter_groups

CHECKPOINT = "checkpoint.pt"  # `edgeq.train.checkpoint.CHECKPOINT_NAME`, in the run folder


@dataclass
class TrainJob:
    model: str
    recipe: dict[str, Any]  # resolved with train=True
    data: Path  # training images: labeled (class folders, labels.csv) or a plain folder
    weights: Path | None = None
    calib: Path | None = None  # None: a sample of the training images
    eval: Path | None = None
    teacher: str | None = None  # None: the FP32 model itself
    teacher_weights: Path | None = None
    resume: bool = False
    progress: bool = True
    log: Callable[[str], None] = print
    trust_model_file: bool = False


@dataclass
class TrainInputs:
    """What a train job reads, checked (`prepare_train`)."""

    base: JobInputs  # model, config, preprocessing, calibration, eval images, classes
    settings: TrainRecipe
    train_x: torch.Tensor
    train_y: torch.Tensor | None  # None: unlabeled, or labels not used (label_weight 0)
    data_desc: str
    teacher: nn.Module
    teacher_desc: str


def load_training_images(folder: Path, preprocess: Preprocess) -> tuple[LabeledImages, bool]:
    """A labeled folder (class subfolders or images/ + labels.csv), or else a plain
    folder of image files (unlabeled); and whether it is labeled.

    Raises:
        DataError: the folder is missing or holds no images, or a file resolves
            outside it.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    if (folder / "labels.csv").is_file() or any(p.is_dir() for p in folder.iterdir()):
        return load_labeled_images(folder, preprocess), True
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"{folder}: no images found (expected image files, class subfolders, or "
            "images/ + labels.csv)"
        )
    inside = folder.resolve()
    for p in files:  # a data folder should not make edgeq read files outside it
        if not p.resolve().is_relative_to(inside):
            raise DataError(f"{p}: resolves outside {folder} (a symlink to {p.resolve()})")
    origins = [f"{p} (unlabeled)" for p in files]
    return LabeledImages(files, [0] * len(files), origins, preprocess), False


def _same_folder(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and a.resolve() == b.resolve()


def _check_folders(job: TrainJob) -> None:
    for flag, other in (("--data", job.data), ("--calib", job.calib)):
        if _same_folder(job.eval, other):
            raise JobInputError(
                f"--eval {job.eval} is the {flag} folder: accuracy must be measured on images "
                "that did not train or calibrate the model; pass another --eval folder"
            )


def _calibration(
    job: TrainJob, images: LabeledImages, x: torch.Tensor, preprocess: Preprocess
) -> tuple[torch.Tensor, str]:
    n, seed = job.recipe["calibration"]["images"], job.recipe["calibration"]["seed"]
    if job.calib is not None:
        cal = load_labeled_images(job.calib, preprocess)
        idx = _sample_indices(cal.labels, n, seed)
        return cal.tensors(idx)[0], f"{job.calib}: {describe_sample(cal.labels, idx, seed)}"
    idx = _sample_indices(images.labels, n, seed)
    sample = describe_sample(images.labels, idx, seed)
    return x[idx], f"{job.data} (training images): {sample}"


def _teacher(job: TrainJob, model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str]:
    """The frozen teacher and a phrase naming it; its output must have the model's."""
    if job.teacher is None:
        # a copy taken before quantization touches anything: the FP32 model as given
        return copy.deepcopy(model).eval(), f"the FP32 model itself ({job.model})"
    teacher = edgeq.load_model(
        job.teacher, job.teacher_weights, trust_model_file=job.trust_model_file
    ).eval()
    with torch.no_grad():
        theirs, ours = teacher(example), model(example)
    if not isinstance(theirs, torch.Tensor) or theirs.shape != ours.shape:
        what = (
            f"shape {tuple(theirs.shape)}"
            if isinstance(theirs, torch.Tensor)
            else f"a {type(theirs).__name__}"
        )
        raise JobInputError(
            f"--teacher {job.teacher}: its output is {what}, the model's is shape "
            f"{tuple(ours.shape)}: the teacher must score the same classes"
        )
    weights = f" with weights {job.teacher_weights}" if job.teacher_weights else ""
    return teacher, f"{job.teacher}{weights}"


def prepare_train(job: TrainJob) -> TrainInputs:
    """Load and check everything a train job reads, before any file is written.

    Raises:
        RecipeError, ModelLoadError, DataError, SpecError, CaptureError, JobInputError:
            naming what is wrong: a mode QAT does not train, an --eval folder that
            trains or calibrates, an empty training folder, labels outside the model's
            classes (or asked for on unlabeled images), a teacher of other outputs.
    """
    _check_folders(job)
    settings = to_train(job.recipe)
    config = to_config(job.recipe)
    if config.mode not in QAT_MODES:
        allowed = ", ".join(m.value for m in QAT_MODES)
        raise RecipeError(f"mode={config.mode.value!r}: edgeq train trains {allowed} models")
    model = edgeq.load_model(
        job.model, job.weights, capture=job.recipe["capture"], trust_model_file=job.trust_model_file
    )
    preprocess, origin = resolve_preprocess(model, job.weights, job.recipe["preprocess"])
    graph = check_config(model, config)
    images, labeled = load_training_images(job.data, preprocess)
    train_x, labels = images.tensors()
    num_classes = check_model_io(model, graph, job.model, train_x[:1])
    label_weight = settings.distill.label_weight
    if label_weight > 0 and not labeled:
        raise RecipeError(
            f"train.label_weight={label_weight}: {job.data} has no labels (a plain folder of "
            "images); give class subfolders or images/ + labels.csv, or set label_weight: 0"
        )
    if label_weight > 0:
        images.check_labels(num_classes)
        use = "labels used for cross-entropy"
    else:
        use = "labeled, labels unused as train.label_weight is 0" if labeled else "unlabeled"
    calib_x, calib_desc = _calibration(job, images, train_x, preprocess)
    eval_images = None
    if job.eval is not None:
        eval_images = load_labeled_images(job.eval, preprocess)
        eval_images.check_labels(num_classes)
    teacher, teacher_desc = _teacher(job, model, train_x[:1])
    base = JobInputs(
        model, config, preprocess, origin, calib_x, calib_desc, eval_images, num_classes
    )
    return TrainInputs(
        base,
        settings,
        train_x,
        labels if label_weight > 0 else None,
        f"{len(train_x)} images of {job.data} ({use})",
        teacher,
        teacher_desc,
    )


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys(), key=str):
            d = _first_difference(a.get(k), b.get(k), f"{where}{k}.")
            if d is not None:
                return d
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        a, b = list(a), list(b)
    return None if a == b else (where.rstrip("."), a, b)


def resume_folder(folder: Path, recipe: dict[str, Any]) -> RunFolder:
    """The run folder ``--resume`` continues in place, checked: an edgeq train run that
    was cut short or failed, written with ``recipe`` (as run: `used_recipe`) except
    for ``train.epochs``.

    Raises:
        RunFolderError: not a train run folder, a complete one, or another recipe
            (naming the first differing key).
    """
    status = run_status(folder)
    if status is None:
        raise RunFolderError(f"--resume {folder}: not an edgeq run folder (no {RUN_MARKER})")
    if status == "complete":
        raise RunFolderError(
            f"--resume {folder}: this run is complete, nothing to resume; start a new run"
        )
    command = json.loads((folder / RUN_MARKER).read_text()).get("command")
    if command != "train":
        raise RunFolderError(f"--resume {folder}: a run of edgeq {command}, not of edgeq train")
    recorded = folder / "recipe.yaml"
    if recorded.is_file():
        theirs = resolve(load_recipe(recorded), train=True)
        theirs["train"]["epochs"] = recipe["train"]["epochs"]  # the one that may change
        diff = _first_difference(theirs, recipe)
        if diff is not None:
            key, a, b = diff
            raise RunFolderError(
                f"--resume {folder}: its recipe has {key}={a!r}, this run {key}={b!r}; only "
                f"train.epochs may change (resume with --config {recorded})"
            )
    # `edgeq.runs` has no call that marks a folder running again: its marker says
    # 'running' or 'failed' until `complete` (or `fail`) rewrites it
    return RunFolder(folder, folder, "train")


def _evaluator(
    qm: QuantizedModel, images: LabeledImages, recipe: dict[str, Any]
) -> Callable[[], dict[str, float]]:
    """Top-1 and agreement with FP32 of the converted model on the --eval images: a
    converted copy is scored, so the model in training (DDP's too) is left alone."""
    n = recipe["evaluation"]["images"] or len(images)
    ex, ey = images.tensors(range(min(n, len(images))))
    xs = batches(ex, recipe["evaluation"]["batch_size"])
    assert qm.float_module is not None  # prepare_qat keeps it
    ref = predict(as_predictor(qm.float_module), xs)

    def evaluate() -> dict[str, float]:
        module = convert(copy.deepcopy(qm.module).eval())
        s = score(predict(as_predictor(module), xs), ey.numpy(), ref)
        return {"eval_top1": s["top1"], "eval_agreement": s["agreement"]}

    return evaluate


def train_model(
    job: TrainJob, inputs: TrainInputs, run_dir: Path | None, *, evaluate: bool = True
) -> tuple[QuantizedModel, TrainResult]:
    """PTQ, then QAT with distillation (`fit`, checkpoints in ``run_dir``); the model
    returned is still in the training state. ``evaluate``: score each epoch on the
    --eval images (rank 0 of a torchrun; other ranks write nothing and pass False)."""
    base, s = inputs.base, inputs.settings
    calib = batches(base.calib_x, job.recipe["calibration"]["batch_size"])
    qm = edgeq.prepare_qat(
        base.model, calib, base.config, learn_scales=s.learn_scales, progress=job.progress
    )
    log_quantized(job, qm)
    example = base.calib_x[:2] if s.distill.features else None
    objective = DistillationObjective(qm.module, inputs.teacher, s.distill, example=example)
    groups = parameter_groups(objective, weight_decay=s.train.weight_decay, scale_lr=s.scale_lr)
    check = None
    if evaluate and base.eval_images is not None:
        check = _evaluator(qm, base.eval_images, job.recipe)
    job.log(f"training on {inputs.data_desc}; teacher: {inputs.teacher_desc}")
    result = fit(
        objective,
        TrainData(inputs.train_x, inputs.train_y),
        s.train,
        run_dir=run_dir,
        resume=job.resume,
        evaluate=check,
        parameters=groups,
        progress=job.progress,
        log=job.log,
    )
    return qm, result


def _training_metrics(
    job: TrainJob, inputs: TrainInputs, result: TrainResult, recipe: dict[str, Any], resumed: bool
) -> dict[str, Any]:
    history = result.history
    seconds = sum(r["seconds"] for r in history)
    images = sum(r["images_per_s"] * r["seconds"] for r in history)
    return {
        "config": recipe["train"],
        "data": inputs.data_desc,
        "teacher": inputs.teacher_desc,
        "eval": None if job.eval is None else f"{job.eval}",
        "epochs": len(history),
        "steps": result.steps,
        "seconds": seconds,  # the training steps of every epoch, resumed ones included
        "images_per_s": images / seconds if seconds else float("nan"),
        "resumed": resumed,
        "history": history,
        "files": {"checkpoint": CHECKPOINT, "csv": "train_metrics.csv"},
    }


def run_train(job: TrainJob, inputs: TrainInputs, out: Path) -> dict[str, Any]:
    """Run the whole job into the folder ``out`` (a new run folder, or the one
    ``--resume`` continues), from ``inputs`` (`prepare_train`); returns the metrics
    written to ``metrics.json``."""
    t_start = time.perf_counter()
    base = inputs.base
    recipe = used_recipe(job.recipe, base.preprocess)
    if not job.resume:  # a resumed run keeps its recipe until this attempt has trained
        write_text_atomic(out / "recipe.yaml", dump(recipe))
    job.log(f"preprocessing ({base.preprocess_origin}): {base.preprocess.describe()}")
    job.log(f"calibrating on {base.calib_desc}")
    resumed = job.resume and (out / CHECKPOINT).is_file()
    qm, result = train_model(job, inputs, out)
    if job.resume:
        write_text_atomic(out / "recipe.yaml", dump(recipe))
    edgeq.convert(qm)  # the integer-exact simulation: export and save need it
    training = _training_metrics(job, inputs, result, recipe, resumed)
    return finish_run(
        job,
        base,
        qm,
        out,
        recipe,
        t_start=t_start,
        extra_metrics={"training": training},
        extra_seconds={"train": result.seconds},
    )


def final_scores(metrics: dict[str, Any]) -> list[str]:
    """The training lines of the command's summary."""
    t = metrics["training"]
    last = t["history"][-1] if t["history"] else {}
    lines = [
        f"training: {t['epochs']} epoch(s), {t['steps']} steps, {t['seconds']:.1f} s "
        f"({t['images_per_s']:.1f} images/s); last epoch's loss {last.get('loss', np.nan):.4g}"
    ]
    if "eval_top1" in last:
        curve = ", ".join(f"{r['eval_top1']:.3f}" for r in t["history"])
        lines.append(f"top-1 on --eval after each epoch (converted model): {curve}")
    return lines
