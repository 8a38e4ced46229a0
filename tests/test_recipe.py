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
