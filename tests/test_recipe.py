"""Recipes: YAML keys, defaults, flags over the file, and every bad value refused with
the key named before any work starts."""

from __future__ import annotations

import pytest

from edgeq.recipe import RecipeError, dump, load_recipe, resolve, to_config


def test_recipe_turns_the_search_and_the_correction_off():
    config = to_config(
        resolve(
            {"activation": {"percentile_search": []}, "calibration": {"bias_correction": False}}
        )
    )
    assert config.percentile_search == ()
    assert not config.bias_correction
    assert to_config(resolve()).percentile_search == (99.9, 99.95, 99.98, 99.99, 99.995, 99.999)


def test_recipe_percentile_without_a_search_is_used_as_is():
    alone = to_config(resolve({"activation": {"percentile": 99.99}}))
    assert alone.activation.percentile == 99.99
    assert alone.percentile_candidates() == (99.99,)  # one candidate: no search
    from_flag = to_config(resolve(flags={"activation.percentile": 99.9}))
    assert from_flag.percentile_candidates() == (99.9,)
    both = to_config(
        resolve({"activation": {"percentile": 99.99, "percentile_search": [99.9, 99.999]}})
    )
    assert both.percentile_candidates() == (99.9, 99.99, 99.999)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"weight": {"bitz": 4}}, "unknown key 'weight.bitz'; did you mean 'weight.bits'?"),
        ({"calibraton": {}}, "did you mean 'calibration'?"),
        ({"mode": "statik"}, "did you mean 'static'?"),
        ({"weight": {"bits": 1}}, "weight: bits=1"),
        ({"calibration": {"images": 0}}, "calibration.images=0 must be a positive integer"),
        ({"overrides": [{"match": "fc", "bitz": 4}]}, "did you mean 'overrides[0].bits'?"),
        ({"overrides": [{"match": "fc", "bits": 4, "float": True}]}, "not both"),
        (
            {"activation": {"percentile_search": 99.9}},
            "activation.percentile_search=99.9 must be a list of numbers",
        ),
        (
            {"activation": {"percentile_search": [99.9, 120]}},
            "activation.percentile_search: 120.0 must be in (0, 100]",
        ),
        (
            {"calibration": {"bias_correction": "yes"}},
            "calibration.bias_correction='yes' must be true or false",
        ),
        # options a mode cannot quantize, pack and export are refused up front
        ({"weight": {"bits": 3}}, "weight.bits=3: mode static takes 2, 4, 8"),
        ({"weight": {"bits": 16}}, "weight.bits=16: mode static takes 2, 4, 8"),
        ({"mode": "weight_only", "weight": {"bits": 2}}, "mode weight_only takes 4, 8"),
        ({"weight": {"scheme": "kmeans"}}, "kmeans levels are not built"),
        ({"weight": {"scheme": "power_of_two"}}, "power_of_two levels are not built"),
        ({"activation": {"bits": 16}}, "static mode takes 8-bit uniform activations"),
        ({"weight": {"granularity": "per_tensor"}}, "mode static takes per_channel"),
        ({"overrides": [{"match": "fc", "bits": 6}]}, "override 'fc': bits=6: mode static"),
        ({"overrides": [{"match": 5, "bits": 8}]}, "match=5 must be a module name or glob"),
        ({"mode": "float16", "weight": {"bits": 4}}, "weight.bits: mode float16 does not use"),
        ({"mode": "dynamic", "activation": {"signed": True}}, "mode dynamic does not use it"),
        # counts and sizes
        ({"bench": {"threads": "abc"}}, "bench.threads='abc' must be a positive integer"),
        ({"bench": {"rounds": 0}}, "bench.rounds=0 must be a positive integer"),
        ({"bench": {"batch": [0, -1]}}, "bench.batch=[0, -1] must be a list of positive"),
        ({"evaluation": {"batch_size": 0}}, "evaluation.batch_size=0 must be a positive"),
        ({"evaluation": {"images": -3}}, "evaluation.images=-3 must be a positive integer"),
        ({"calibration": {"seed": -1}}, "calibration.seed=-1 must be a non-negative"),
        # preprocessing
        ({"preprocess": {"interp": "x"}}, "did you mean 'preprocess.interpolation'?"),
        ({"preprocess": {"resize": 200, "crop": 224}}, "crop=224 is larger than resize=200"),
        ({"preprocess": {"std": [0.5, 0, 0.5]}}, "preprocess: std"),
    ],
)
def test_recipe_errors_name_the_key(recipe, message):
    with pytest.raises(RecipeError) as e:
        resolve(recipe)
    assert message in str(e.value)


def test_a_resolved_recipe_runs_again_unchanged_in_every_mode(tmp_path):
    """What a run writes as recipe.yaml (every key, defaults included) is accepted back,
    even by modes that do not use some of its keys (they hold their defaults)."""
    for mode in ("static", "weight_only", "float16", "dynamic"):
        resolved = resolve({"mode": mode})
        path = tmp_path / f"{mode}.yaml"
        path.write_text(dump(resolved))
        assert resolve(load_recipe(path)) == resolved


def test_bench_batch_may_be_one_number():
    assert resolve({"bench": {"batch": 8}})["bench"]["batch"] == [8]


def test_preprocess_keys_are_kept_for_the_job():
    r = resolve({"preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
    assert r["preprocess"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert resolve()["preprocess"] == {}  # the model's declared preprocessing, else ImageNet


def test_train_section_defaults_and_settings():
    from edgeq.recipe import TRAIN_DEFAULTS, to_train

    r = resolve({"weight": {"bits": 4}, "train": {"epochs": 3}}, {"train.lr": 1e-3}, train=True)
    assert r["train"] == {**TRAIN_DEFAULTS, "epochs": 3, "lr": 1e-3}
    assert r["weight"]["bits"] == 4  # the quantization keys are quantize's
    s = to_train(r)
    assert (s.train.epochs, s.train.batch_size, s.train.warmup_steps) == (3, 32, 10)
    assert (s.train.optimizer, s.train.schedule, s.train.grad_clip) == ("adamw", "cosine", 1.0)
    assert s.train.augment is False  # the hold-out sweep's choice
    assert (s.distill.temperature, s.distill.kd_weight, s.distill.label_weight) == (1.0, 1.0, 0.0)
    assert s.learn_scales is True
    assert s.scale_lr == pytest.approx(1e-3 * 0.01)
    pairs = resolve(
        {"train": {"features": [["stem.0", "stem.0"]], "feature_weight": 0.5}}, train=True
    )
    assert to_train(pairs).distill.features == (("stem.0", "stem.0"),)
    assert "train" not in resolve()  # quantize's recipe is unchanged


def test_a_resolved_train_recipe_runs_again_unchanged(tmp_path):
    resolved = resolve({"train": {"epochs": 2, "grad_clip": None}}, train=True)
    path = tmp_path / "train.yaml"
    path.write_text(dump(resolved))
    assert resolve(load_recipe(path), train=True) == resolved


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"epoch": 2}, "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        ({"scale_lr": 0.1}, "did you mean 'train.scale_lr_factor'?"),
        ({"epochs": 0}, "train.epochs=0: must be an integer >= 1"),
        ({"lr": -1}, "train.lr=-1: must be a finite number > 0"),
        ({"optimizer": "adan"}, "train.optimizer='adan': must be one of adamw, sgd"),
        ({"crop_scale": [0.5]}, "train.crop_scale=[0.5]: must be two numbers"),
        ({"temperature": 0}, "train.temperature=0: must be a finite number > 0"),
        ({"kd_weight": 0}, "train: kd_weight, label_weight and feature_weight are all 0"),
        ({"features": [["a", "b"]]}, "train.feature_weight=0.0 with 1 feature pairs"),
        ({"features": "a"}, "train.features='a' must be a list of [student module, teacher"),
        ({"features": [["a"]], "feature_weight": 1}, "train.features: ('a',) must be a"),
        ({"learn_scales": "yes"}, "train.learn_scales='yes' must be true or false"),
        ({"scale_lr_factor": 0}, "train.scale_lr_factor=0 must be a number > 0"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_train_errors_name_the_key(train, message):
    with pytest.raises(RecipeError) as e:
        resolve({"train": train}, train=True)
    assert message in str(e.value)


def test_other_verbs_refuse_a_train_section():
    with pytest.raises(RecipeError, match="train: only edgeq train reads this section"):
        resolve({"train": {"epochs": 2}})
