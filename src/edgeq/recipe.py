"""Recipes: YAML that says everything the command-line flags say, and more.

    mode: static                # static | weight_only | float16 | dynamic
    capture: fx                 # fx | export (torch.export: vision transformers, ShuffleNet)
    target: portable            # portable (every x86 CPU) | vnni
    weight: {bits: 8, granularity: per_channel, range_method: mse,
             rounding: auto}      # auto (GPTQ below 8 bits) | nearest | gptq | adaround
    activation: {bits: 8, signed: false, symmetric: false, range_method: percentile,
                 percentile_search: [99.9, 99.95, 99.98, 99.99, 99.995, 99.999]}
    calibration: {images: 256, batch_size: 32, bias_correction: true, seed: 0}
    preprocess: {resize: 256, crop: 224}   # any of resize, crop, mean, std,
                                # interpolation, channel_order; unset keys come from
                                # the model's declared preprocessing, else ImageNet's
    evaluation: {images: null, batch_size: 50}
    bench: {batch: [1, 32], threads: 2, rounds: 20}   # batch 1: 10x the rounds
    overrides:                  # first match wins; module names or globs
      - {match: features.0.*, bits: 8}
      - {match: classifier.*, float: true}
    train:                      # edgeq train only (QAT with distillation); see TRAIN_DEFAULTS
      {epochs: 1, batch_size: 32, lr: 2.0e-5, optimizer: adamw, schedule: cosine,
       warmup_steps: 10, grad_clip: 1.0, augment: false, temperature: 1.0, kd_weight: 1.0,
       label_weight: 0.0, learn_scales: true, scale_lr_factor: 0.01}

The quantization keys mean the same to ``edgeq train`` as to ``edgeq quantize`` (QAT
starts from that PTQ); the ``train`` section is read by ``edgeq train`` alone
(``resolve(..., train=True)``) and refused elsewhere, where it would be ignored.

Flags override the file; the file overrides the defaults. A recipe that sets
``activation.percentile`` without ``activation.percentile_search`` gets that percentile
alone (no search). Unknown keys and bad values
are `RecipeError`s that name the key (``weight.bitz``) and suggest the closest valid
one. `resolve` returns the full recipe, every default filled in, ready to print or
write next to the results.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgeq.ptq.config import LayerOverride, PTQConfig
from edgeq.ptq.range_search import DEFAULT_PERCENTILES
from edgeq.quant import QuantSpec, SpecError
from edgeq.train.distill import DistillationError, DistillConfig
from edgeq.train.engine import TrainConfig


class RecipeError(ValueError):
    """A recipe key or value is invalid (names the key)."""


_WEIGHT_KEYS = {
    "bits",
    "granularity",
    "group_size",
    "range_method",
    "percentile",
    "scheme",
    "rounding",
}
_ACT_KEYS = {"bits", "signed", "symmetric", "range_method", "percentile", "percentile_search"}

DEFAULTS: dict[str, Any] = {
    "mode": "static",
    "capture": "fx",
    "target": "portable",
    # rounding: auto = GPTQ below 8 bits, nearest at 8 (`edgeq.ptq.rounding`)
    "weight": {"bits": 8, "granularity": "per_channel", "range_method": "mse", "rounding": "auto"},
    "activation": {
        "bits": 8,
        "signed": False,
        "symmetric": False,
        "range_method": "percentile",
        "percentile": 99.999,  # used as is when percentile_search is []
        "percentile_search": list(DEFAULT_PERCENTILES),
    },
    # images: a seeded sample spread evenly over the folder's classes
    "calibration": {"images": 256, "batch_size": 32, "bias_correction": True, "seed": 0},
    "preprocess": {},  # empty: the model's declared preprocessing, else ImageNet's
    "evaluation": {"images": None, "batch_size": 50},
    "bench": {"batch": [1, 32], "threads": 2, "rounds": 20},
    "overrides": [],
}
RECIPE_PREPROCESS_KEYS = {"resize", "crop", "mean", "std", "interpolation", "channel_order"}
# edgeq train's section: TrainConfig's keys (the engine), DistillConfig's (the loss) and
# QAT's own; the defaults are the usual QAT fine-tuning recipe (a short warmup, a
# learning rate ~1e-2 of training from scratch, the FP32 model's logits at T=1)
_TRAINER_KEYS = {
    "epochs": 1,
    "batch_size": 32,
    # lr 2e-5, no augmentation: the best of a hold-out sweep of W4A8 MobileNetV2 QAT on
    # 800 images (benchmarks/results/qat_holdout_sweep.md); 1e-4 and crops did worse
    "lr": 2e-5,
    "weight_decay": 0.0,
    "optimizer": "adamw",
    "schedule": "cosine",
    "warmup_steps": 10,
    "grad_clip": 1.0,
    "seed": 0,
    "augment": False,
    "crop_scale": [0.35, 1.0],
}
_DISTILL_KEYS = {
    "temperature": 1.0,
    "kd_weight": 1.0,
    "label_weight": 0.0,  # > 0: cross-entropy with the data's labels too
    "feature_weight": 0.0,
    "features": [],  # [[student module, teacher module], ...]
}
# learn_scales: LSQ on every scale (false: the PTQ scales, plain STE); the scales'
# learning rate is lr * scale_lr_factor (`edgeq.train.qat.parameter_groups` says why)
_QAT_KEYS = {"learn_scales": True, "scale_lr_factor": 0.01}
TRAIN_DEFAULTS: dict[str, Any] = {**_TRAINER_KEYS, **_DISTILL_KEYS, **_QAT_KEYS}
_SECTIONS = {
    "weight": _WEIGHT_KEYS,
    "activation": _ACT_KEYS,
    "calibration": {"images", "batch_size", "bias_correction", "seed"},
    "preprocess": RECIPE_PREPROCESS_KEYS,
    "evaluation": {"images", "batch_size"},
    "bench": {"batch", "threads", "rounds"},
    "train": set(TRAIN_DEFAULTS),
}
_CHOICES = {
    "mode": ["static", "weight_only", "float16", "dynamic"],
    "capture": ["fx", "export"],
    "target": ["portable", "vnni"],
}


def _unknown(key: str, allowed: set[str] | list[str], where: str) -> RecipeError:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f"; did you mean {where + close[0]!r}?" if close else ""
    return RecipeError(
        f"unknown key {where + str(key)!r}{hint} (valid: {', '.join(sorted(allowed))})"
    )


def _merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if k not in base:
            allowed = _SECTIONS.get(where.rstrip("."), set(base))
            raise _unknown(k, allowed if where else set(base), where)
        if k in _SECTIONS and not isinstance(v, dict):
            raise RecipeError(f"{where}{k}: expected a mapping, got {v!r}")
        if k in _SECTIONS:
            for sub in v:
                if sub not in _SECTIONS[k]:
                    raise _unknown(sub, _SECTIONS[k], f"{k}.")
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (validated by `resolve`)."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: recipe file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a recipe is a mapping of keys, got {type(data).__name__}")
    return data


def resolve(
    recipe: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    *,
    train: bool = False,
) -> dict[str, Any]:
    """Defaults <- recipe <- flags (dotted keys such as ``calibration.images``), validated.

    Args:
        recipe: the file's keys.
        flags: dotted keys from the command line (None values are not given).
        train: the recipe of ``edgeq train``: the ``train`` section is filled in with
            `TRAIN_DEFAULTS` and checked (`to_train`); other verbs refuse the section.

    Raises:
        RecipeError: unknown key (with the closest valid one) or bad value.
    """
    if not train and "train" in (recipe or {}):
        raise RecipeError(
            "train: only edgeq train reads this section (here it would be ignored); remove "
            "it, or run edgeq train"
        )
    defaults = {**DEFAULTS, "train": TRAIN_DEFAULTS} if train else DEFAULTS
    out = _merge(defaults, recipe or {})
    given: set[str] = {
        f"{section}.{key}"
        for section, body in (recipe or {}).items()
        if isinstance(body, dict)
        for key in body
    }
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        given.add(dotted)
        section, _, key = dotted.partition(".")
        out = _merge(out, {section: {key: value}} if key else {section: value})
    if "activation.percentile" in given and "activation.percentile_search" not in given:
        out["activation"]["percentile_search"] = []  # the percentile asked for, as is
    for k, choices in _CHOICES.items():
        if out[k] not in choices:
            close = difflib.get_close_matches(str(out[k]), choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"{k}={out[k]!r} is not one of {choices}{hint}")
    _check_numbers(out)
    quantization_keys = {k for k in given if not k.startswith("train.")}
    _check_mode_keys(out, quantization_keys | {k for k in (recipe or {}) if k not in _SECTIONS})
    if not isinstance(out["overrides"], list):
        raise RecipeError(f"overrides: expected a list, got {out['overrides']!r}")
    to_config(out)  # every spec and override is checked here
    _check_preprocess(out["preprocess"])
    if train:
        to_train(out)  # and every training setting here
    return out


def _check_preprocess(given: dict[str, Any]) -> None:
    from edgeq.data import Preprocess

    # the keys given, alone (the model's declared sizes fill the others in at run time)
    base = {**Preprocess.imagenet().to_dict(), "resize": None, "crop": None}
    try:
        Preprocess.from_dict({**base, **given})
    except ValueError as e:
        raise RecipeError(f"preprocess: {e}") from e


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_numbers(out: dict[str, Any]) -> None:
    """Counts and sizes: positive integers (evaluation.images may be null: all)."""
    keys = [
        ("calibration", "images"),
        ("calibration", "batch_size"),
        ("evaluation", "batch_size"),
        ("bench", "threads"),
        ("bench", "rounds"),
    ]
    for section, key in keys:
        v = out[section][key]
        if not _positive_int(v):
            raise RecipeError(f"{section}.{key}={v!r} must be a positive integer")
    seed = out["calibration"]["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise RecipeError(f"calibration.seed={seed!r} must be a non-negative integer")
    images = out["evaluation"]["images"]
    if images is not None and not _positive_int(images):
        raise RecipeError(
            f"evaluation.images={images!r} must be a positive integer, or null for all"
        )
    batch = out["bench"]["batch"]
    if _positive_int(batch):
        out["bench"]["batch"] = batch = [batch]
    if not isinstance(batch, list) or not batch or not all(_positive_int(b) for b in batch):
        raise RecipeError(f"bench.batch={batch!r} must be a list of positive integers")


# recipe keys a mode does not use: given explicitly, they would be silently ignored
_UNUSED_BY_MODE = {
    "float16": ("weight.", "activation.", "overrides"),
    "weight_only": ("activation.",),
    "dynamic": ("activation.",),
}


def _value(recipe: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return recipe[section].get(key) if key else recipe[section]


def _check_mode_keys(out: dict[str, Any], given: set[str]) -> None:
    """A key the mode does not use may appear (a resolved recipe holds every key) only
    with its default value."""
    mode = out["mode"]
    for key in sorted(given):
        if _value(out, key) == _value(DEFAULTS, key):
            continue
        for prefix in _UNUSED_BY_MODE.get(mode, ()):
            if key == prefix or key.startswith(prefix):
                raise RecipeError(
                    f"{key}: mode {mode} does not use it (it would be ignored); remove it or "
                    "choose another mode"
                )


def to_config(recipe: dict[str, Any]) -> PTQConfig:
    """The `PTQConfig` a resolved recipe describes."""
    w = dict(recipe["weight"])
    rounding = w.pop("rounding", "auto")
    a = dict(recipe["activation"])
    search = a.pop("percentile_search")
    if not isinstance(search, list) or not all(
        isinstance(p, int | float) and not isinstance(p, bool) for p in search
    ):
        raise RecipeError(f"activation.percentile_search={search!r} must be a list of numbers")
    bias_correction = recipe["calibration"]["bias_correction"]
    if not isinstance(bias_correction, bool):
        raise RecipeError(f"calibration.bias_correction={bias_correction!r} must be true or false")
    try:
        if w.get("granularity") == "per_group":
            w.setdefault("group_size", 128)
            weight = QuantSpec(axis=1, symmetric=True, signed=True, **w)
        elif w.get("granularity") == "per_tensor":
            weight = QuantSpec(symmetric=True, signed=True, **w)
        else:
            weight = QuantSpec(axis=0, symmetric=True, signed=True, **w)
    except (SpecError, TypeError) as e:
        raise RecipeError(f"weight: {e}") from e
    try:
        activation = QuantSpec(**a)
    except (SpecError, TypeError) as e:
        raise RecipeError(f"activation: {e}") from e
    overrides = []
    for i, o in enumerate(recipe["overrides"]):
        if not isinstance(o, dict) or "match" not in o:
            raise RecipeError(f"overrides[{i}]: expected {{match: GLOB, bits: N | float: true}}")
        for k in o:
            if k not in ("match", "bits", "float"):
                raise _unknown(k, {"match", "bits", "float"}, f"overrides[{i}].")
        try:
            overrides.append(LayerOverride(**o))
        except SpecError as e:
            raise RecipeError(f"overrides[{i}]: {e}") from e
    try:
        return PTQConfig(
            weight=weight,
            activation=activation,
            target=recipe["target"],
            mode=recipe["mode"],
            overrides=tuple(overrides),
            bias_correction=bias_correction,
            runtime_threads=int(recipe["bench"]["threads"]),  # what ORT runs with here
            percentile_search=tuple(float(p) for p in search),
            rounding=rounding,
        )
    except SpecError as e:
        raise RecipeError(f"activation.{e}" if "percentile_search" in str(e) else str(e)) from e


def dump(recipe: dict[str, Any]) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)


@dataclass(frozen=True)
class TrainRecipe:
    """What a resolved recipe's ``train`` section says: the engine's settings, the
    distillation loss, and how QAT trains the scales."""

    train: TrainConfig
    distill: DistillConfig
    learn_scales: bool
    scale_lr_factor: float

    @property
    def scale_lr(self) -> float:
        """The scales' learning rate."""
        return self.train.lr * self.scale_lr_factor


def _train_error(e: Exception) -> RecipeError:
    """A TrainConfig or DistillConfig error with the recipe's key (``train.lr=0: ...``)."""
    msg = str(e).removeprefix("TrainConfig.")
    key = msg.split("=", 1)[0].split(":", 1)[0]
    return RecipeError(f"train.{msg}" if key in TRAIN_DEFAULTS else f"train: {msg}")


def to_train(recipe: dict[str, Any]) -> TrainRecipe:
    """The training settings of a recipe resolved with ``train=True``.

    Raises:
        RecipeError: a value `TrainConfig` or `DistillConfig` refuses, naming the key
            (``train.lr=0: must be a finite number > 0``).

    Example:
        >>> to_train(resolve({"train": {"epochs": 3}}, train=True)).train.epochs
        3
    """
    t = recipe["train"]
    try:
        trainer = TrainConfig(**{k: t[k] for k in _TRAINER_KEYS})
    except SpecError as e:
        raise _train_error(e) from e
    features = t["features"]
    if not isinstance(features, list):
        raise RecipeError(
            f"train.features={features!r} must be a list of [student module, teacher module]"
        )
    pairs = tuple(tuple(p) if isinstance(p, list) else p for p in features)
    try:
        distill = DistillConfig(
            **{k: t[k] for k in _DISTILL_KEYS if k != "features"}, features=pairs
        )
    except (DistillationError, TypeError) as e:
        raise _train_error(e) from e
    if not isinstance(t["learn_scales"], bool):
        raise RecipeError(f"train.learn_scales={t['learn_scales']!r} must be true or false")
    factor = t["scale_lr_factor"]
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
        raise RecipeError(f"train.scale_lr_factor={factor!r} must be a number > 0")
    return TrainRecipe(trainer, distill, t["learn_scales"], float(factor))
