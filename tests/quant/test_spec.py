import pytest

from edgeq.quant import CastSpec, Granularity, QuantSpec, RangeMethod, Scheme, SpecError


@pytest.mark.parametrize(
    ("kwargs", "qmin", "qmax"),
    [
        pytest.param({"bits": 8, "signed": True}, -128, 127, id="int8"),
        pytest.param({"bits": 8, "signed": False, "symmetric": False}, 0, 255, id="uint8"),
        pytest.param({"bits": 8, "narrow_range": True}, -127, 127, id="int8-narrow"),
        pytest.param({"bits": 4, "signed": True}, -8, 7, id="int4"),
        pytest.param({"bits": 2, "signed": False}, 0, 3, id="uint2"),
        pytest.param({"bits": 16, "signed": True}, -32768, 32767, id="int16"),
    ],
)
def test_integer_range(kwargs, qmin, qmax):
    spec = QuantSpec(**kwargs)
    assert (spec.qmin, spec.qmax) == (qmin, qmax)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"bits": 1}, r"bits=1 is out of range .* allowed 2\.\.16", id="bits-low"),
        pytest.param({"bits": 17}, r"bits=17", id="bits-high"),
        pytest.param({"bits": 8.0}, r"must be an int", id="bits-float"),
        pytest.param({"scheme": "kmeans", "bits": 9}, r"at most 256 entries", id="kmeans-bits"),
        pytest.param({"granularity": "per_channel"}, r"needs axis", id="channel-no-axis"),
        pytest.param(
            {"granularity": "per_group", "axis": 1}, r"needs group_size", id="group-no-size"
        ),
        pytest.param({"axis": 0}, r"per_tensor takes no axis", id="tensor-with-axis"),
        pytest.param(
            {"granularity": "per_channel", "axis": 0, "group_size": 4},
            r"only for granularity=per_group",
            id="channel-group",
        ),
        pytest.param(
            {"narrow_range": True, "symmetric": False},
            r"narrow_range=True needs",
            id="narrow-affine",
        ),
        pytest.param(
            {"scheme": "power_of_two", "symmetric": False}, r"use symmetric=True", id="pow2-affine"
        ),
        pytest.param(
            {"scheme": "kmeans", "granularity": "per_group", "axis": 0, "group_size": 8},
            r"per tensor or per channel",
            id="kmeans-group",
        ),
        pytest.param({"percentile": 0.0}, r"percentile=0.0 must be in", id="percentile"),
        pytest.param({"momentum": 1.5}, r"momentum=1.5", id="momentum"),
        pytest.param({"range_method": "mse_"}, r"did you mean 'mse'", id="enum-typo"),
    ],
)
def test_impossible_specs_are_rejected_with_a_fix(kwargs, match):
    with pytest.raises(SpecError, match=match):
        QuantSpec(**kwargs)


def test_strings_resolve_to_enums():
    spec = QuantSpec(granularity="per_channel", axis=0, range_method="kl", scheme="uniform")
    assert spec.granularity is Granularity.PER_CHANNEL
    assert spec.range_method is RangeMethod.KL
    assert spec.scheme is Scheme.UNIFORM


def test_dict_round_trip_and_schema():
    spec = QuantSpec(bits=4, granularity="per_group", axis=1, group_size=32, range_method="mse")
    d = spec.to_dict()
    assert d["schema_version"] == 1
    assert d["granularity"] == "per_group"
    assert QuantSpec.from_dict(d) == spec
    assert CastSpec.from_dict(CastSpec("bfloat16").to_dict()) == CastSpec("bfloat16")


def test_from_dict_rejects_unknown_keys_and_versions():
    with pytest.raises(SpecError, match=r"unknown field 'bit' .* did you mean 'bits'"):
        QuantSpec.from_dict({"bit": 8})
    with pytest.raises(SpecError, match=r"schema_version=99"):
        QuantSpec.from_dict({"schema_version": 99})
    with pytest.raises(SpecError, match=r"expected 'cast'"):
        CastSpec.from_dict({"kind": "quant"})


def test_specs_are_frozen():
    spec = QuantSpec()
    with pytest.raises(AttributeError):
        spec.bits = 4  # type: ignore[misc]
    assert spec.replace(bits=4).bits == 4
