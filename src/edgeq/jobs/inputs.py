"""What a job reads, checked before it writes anything.

Every check that can fail on the user's input runs here, before the run folder
exists: the recipe against the mode, the model (loaded once; files that can carry
code only with ``trust_model_file``), the recipe's overrides against the model's
layers, the model's inputs and outputs, the preprocessing, the calibration sample and
the evaluation labels against the model's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

import edgeq
from edgeq.data import LabeledImages, Preprocess, describe_sample, load_labeled_images
from edgeq.data import sample_indices as _sample_indices
from edgeq.models.preprocessing import declared_preprocess
from edgeq.ptq import PTQConfig, check_config
from edgeq.recipe import RecipeError, to_config


class JobInputError(ValueError):
    """The model or data cannot be used by this job (names which and why)."""


@dataclass
class JobInputs:
    model: nn.Module
    config: PTQConfig
    preprocess: Preprocess
    preprocess_origin: str  # where the preprocessing came from, for the report
    calib_x: torch.Tensor
    calib_desc: str
    eval_images: LabeledImages | None
    num_classes: int


def resolve_preprocess(
    model: nn.Module | None, weights: Path | None, given: dict[str, Any]
) -> tuple[Preprocess, str]:
    """The model's declared preprocessing (ImageNet's when it declares none), with the
    recipe's ``preprocess`` keys on top; and a phrase saying where it came from."""
    declared = declared_preprocess(model, weights=weights) if model is not None else None
    base = declared or Preprocess.imagenet()
    origin = "declared by the model" if declared is not None else "ImageNet default"
    if not given:
        return base, origin
    try:
        chosen = Preprocess.from_dict({**base.to_dict(), **given})
    except ValueError as e:
        raise RecipeError(f"preprocess: {e}") from e
    return chosen, f"{origin}, with {', '.join(sorted(given))} from the recipe"


def check_model_io(
    model: nn.Module, graph: torch.fx.GraphModule, ref: str, example: torch.Tensor
) -> int:
    """The number of classes of an image model (``graph``: its capture) with one input
    and one output of shape (batch, classes).

    Raises:
        JobInputError: several inputs, or outputs that are not one 2-d tensor.
    """
    inputs = sum(1 for n in graph.graph.nodes if n.op == "placeholder")
    if inputs != 1:
        raise JobInputError(
            f"{ref}: the model takes {inputs} inputs; the command line feeds one image "
            "batch. Quantize it from Python with a calibration function "
            "(edgeq.quantize(model, lambda m: [m(a, b) for a, b in data]))"
        )
    with torch.no_grad():
        out = model(example)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = (
            type(out).__name__ if not isinstance(out, torch.Tensor) else f"shape {list(out.shape)}"
        )
        raise JobInputError(
            f"{ref}: the model returns {what}; the command line scores one tensor of class "
            "scores (batch, classes). Models with several outputs are not supported here yet"
        )
    return int(out.shape[1])


def _calibration(
    calib: Path | None, preprocess: Preprocess, n: int, seed: int
) -> tuple[torch.Tensor, str]:
    if calib is None:
        from edgeq.data.samples import sample_photo_batch

        x = sample_photo_batch(preprocess)[:n]
        return x, f"{len(x)} crops of scikit-image's sample photographs"
    images = load_labeled_images(calib, preprocess)
    idx = _sample_indices(images.labels, n, seed)
    x, _ = images.tensors(idx)
    return x, f"{calib}: {describe_sample(images.labels, idx, seed)}"


class JobSource(Protocol):
    """What a job names (`QuantizeJob`, `SensitivityJob`), read only."""

    @property
    def model(self) -> str: ...
    @property
    def recipe(self) -> dict[str, Any]: ...
    @property
    def weights(self) -> Path | None: ...
    @property
    def calib(self) -> Path | None: ...
    @property
    def eval(self) -> Path | None: ...
    @property
    def trust_model_file(self) -> bool: ...


def prepare_inputs(job: JobSource) -> JobInputs:
    """Load and check everything a quantize or sensitivity job reads.

    Raises:
        RecipeError, ModelLoadError, DataError, SpecError, CaptureError, JobInputError:
            naming what is wrong and where, before any file is written.
    """
    recipe, weights, model_ref = job.recipe, job.weights, job.model
    config = to_config(recipe)
    model = edgeq.load_model(
        model_ref, weights, capture=recipe["capture"], trust_model_file=job.trust_model_file
    )
    preprocess, origin = resolve_preprocess(model, weights, recipe["preprocess"])
    graph = check_config(model, config)
    cal = recipe["calibration"]
    calib_x, calib_desc = _calibration(job.calib, preprocess, cal["images"], cal["seed"])
    num_classes = check_model_io(model, graph, model_ref, calib_x[:1])
    eval_images = None
    if job.eval is not None:
        eval_images = load_labeled_images(job.eval, preprocess)
        eval_images.check_labels(num_classes)
    return JobInputs(
        model, config, preprocess, origin, calib_x, calib_desc, eval_images, num_classes
    )
