"""Checks of an artifact's ``edgeq.json``, field by field, before anything is used.

Everything in the JSON is written by whoever wrote the folder, the tensors file's
SHA-256 included, so nothing in it is trusted: every key is checked for presence,
type and range, and every failure is an `ArtifactError` naming the key path
(``edgeq.json: layers['fc'].bits=3: expected one of 2, 4, 8``). Sizes are only
checked for form here; `edgeq.artifact.fit` compares them with the rebuilt model,
the real oracle, before any tensor is allocated from them.

An artifact that records its architecture as data (schema 3) needs no source: its
source is only checked for form, never built. Without that record (schema 2, or a graph
that could not be recorded), a source that would import a module (``factory``) or read
a model file (``torchscript``, ``exported_program``) is refused unless the caller
passed ``trust_model_file=True``; the refusal happens before any path in the JSON is
opened, stat'ed or hashed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from edgeq.artifact.errors import ArtifactError
from edgeq.models.loaders import FACTORY_REF, MAX_INPUT_NUMEL, trust_required
from edgeq.ptq.config import PTQConfig
from edgeq.quant.packing import PACKABLE_BITS

FORMAT = "edgeq-packed"
# 2: layers and integer ops hold no copies of their quantizers' scales (shared)
# 3: the architecture recorded as data ("architecture", or null: rebuilt from "source")
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)
META = "edgeq.json"
# what pack_bits stores and QuantSpec's integer grids allow (2 to 16 bits)
STORED_BITS = tuple(b for b in PACKABLE_BITS if b >= 2)
SOURCE_KINDS = ("torchvision", "factory", "torchscript", "exported_program", "hf")
BIAS_KINDS = (None, "int32", "float")
MAX_DIMS = 8


@dataclass(frozen=True)
class At:
    """A key path in one file, for error messages: ``edgeq.json: layers['fc'].bits``."""

    file: str
    key: str = ""

    def child(self, name: str) -> At:
        return At(self.file, f"{self.key}.{name}" if self.key else name)

    def item(self, name: str) -> At:
        return At(self.file, f"{self.key}[{name!r}]")

    def fail(self, message: str) -> NoReturn:
        where = f"{self.file}: {self.key}" if self.key else self.file
        raise ArtifactError(f"{where}: {message}")

    def bad(self, value: object, expected: str) -> NoReturn:
        where = f"{self.file}: {self.key}=" if self.key else f"{self.file}: "
        raise ArtifactError(f"{where}{show(value)}: expected {expected}")


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class LayerInfo:
    """One quantized layer's entry in ``layers``."""

    bits: int
    signed: bool
    shape: tuple[int, ...]
    weight_scale_shape: tuple[int, ...]
    bias: str | None


@dataclass(frozen=True)
class Meta:
    """A checked ``edgeq.json``."""

    path: Path
    source: dict[str, Any] | None
    config: PTQConfig
    layers: dict[str, LayerInfo]
    tensors_sha256: str
    architecture: dict[str, Any] | None = None  # checked when rebuilt (`architecture`)


def get(d: dict[str, Any], key: str, at: At) -> tuple[Any, At]:
    sub = at.child(key)
    if key not in d:
        raise ArtifactError(f"{at.file}: {sub.key} missing")
    return d[key], sub


def as_dict(value: object, at: At) -> dict[str, Any]:
    if not isinstance(value, dict):
        at.bad(value, "an object")
    return value


def as_str(value: object, at: At) -> str:
    if not isinstance(value, str):
        at.bad(value, "a string")
    return value


def as_int(value: object, at: At, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is an int to Python, not to the format
        at.bad(value, "an int")
    if not lo <= value <= hi:
        at.bad(value, f"an int in [{lo}, {hi}]")
    return value


def as_sizes(value: object, at: At, *, min_size: int, min_len: int = 0) -> tuple[int, ...]:
    if not isinstance(value, list) or not min_len <= len(value) <= MAX_DIMS:
        at.bad(value, f"a list of {min_len} to {MAX_DIMS} sizes")
    return tuple(as_int(v, at.child(str(i)), min_size, 2**62) for i, v in enumerate(value))


def read_meta(folder: Path, *, trust_model_file: bool) -> Meta:
    """The checked ``edgeq.json`` of the artifact in ``folder``.

    Raises:
        ArtifactError: unreadable JSON, a missing or ill-typed key, a value out of
            range, or an untrusted factory / model file source.
    """
    path = folder / META
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {META} (not an edgeq artifact, or an interrupted save)")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, a 5000-digit int
        raise ArtifactError(f"{path}: corrupt JSON ({type(e).__name__}: {e})") from e
    at = At(str(path))
    meta = as_dict(raw, at)
    fmt, at_fmt = get(meta, "format", at)
    if fmt != FORMAT:
        at_fmt.bad(fmt, repr(FORMAT))
    version = get(meta, "schema_version", at)[0]
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path}: schema_version {show(version)}; this edgeq reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
            + (
                " (an artifact of an older edgeq: quantize again to rewrite it)"
                if type(version) is int and version < min(READABLE_VERSIONS)
                else ""
            )
        )
    as_str(get(meta, "edgeq_version", at)[0], at.child("edgeq_version"))
    digest = as_str(*get(meta, "tensors_sha256", at))
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        at.child("tensors_sha256").bad(digest, "64 lowercase hex digits")
    architecture = None
    if version >= 3:
        value, at_arch = get(meta, "architecture", at)
        architecture = None if value is None else as_dict(value, at_arch)
    source_value, at_source = get(meta, "source", at)
    if architecture is None:
        source = check_source(source_value, at_source, trust=trust_model_file)
    elif source_value is None:
        source = None
    else:  # recorded for information: checked for form, never built, so no trust needed
        source = check_source(source_value, at_source, trust=True)
    return Meta(
        path=path,
        source=source,
        config=parse_config(*get(meta, "config", at)),
        layers=parse_layers(*get(meta, "layers", at)),
        tensors_sha256=digest,
        architecture=architecture,
    )


def check_source(value: object, at: At, *, trust: bool) -> dict[str, Any]:
    """The recorded model source, checked; refused when it needs trust not given."""
    source = as_dict(value, at)
    kind, at_kind = get(source, "kind", at)
    if kind not in SOURCE_KINDS:
        at_kind.bad(kind, f"one of {', '.join(SOURCE_KINDS)}")
    if kind == "factory":
        ref, at_ref = get(source, "ref", at)
        if not isinstance(ref, str) or not FACTORY_REF.fullmatch(ref):
            at_ref.bad(ref, "'package.module:factory'")
    elif kind != "torchvision":
        as_str(*get(source, "path", at))
    refusal = trust_required(source)
    if refusal is not None and not trust:
        at.fail(f"{kind} source; {refusal}")  # before any recorded path is touched
    if kind not in ("torchvision", "factory"):
        _check_recorded_path(source["path"], at.child("path"))
    if kind == "torchvision":
        _check_torchvision_name(*get(source, "name", at))
    elif kind not in ("factory", "hf"):  # an hf folder is read by transformers
        digest = as_str(*get(source, "sha256", at))
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            at.child("sha256").bad(digest, "64 lowercase hex digits")
    capture = source.get("capture", "fx")
    if capture not in ("fx", "export"):
        at.child("capture").bad(capture, "'fx' or 'export'")
    if kind != "hf" and (capture == "export" or kind not in ("torchvision", "factory")):
        _check_input_shape(*get(source, "input_shape", at))  # hf: captured on text
    return dict(source)


def _check_recorded_path(path: str, at: At) -> None:
    """edgeq.save records the resolved, absolute path of a model file or folder: a
    relative one would be read from wherever the loader happens to run, and '..' walks
    out of the folder it names."""
    parts = PurePosixPath(path)
    if not parts.is_absolute() or ".." in parts.parts:
        at.bad(path, "the absolute path edgeq.save recorded, without '..'")


def _check_torchvision_name(name: object, at: At) -> None:
    import torchvision

    if not isinstance(name, str) or name not in torchvision.models.list_models():
        at.bad(name, "a torchvision architecture (torchvision.models.list_models())")


def _check_input_shape(value: object, at: At) -> None:
    sizes = as_sizes(value, at, min_size=1, min_len=1)
    numel = 1
    for d in sizes:
        numel *= d
    if numel > MAX_INPUT_NUMEL:  # the example input is allocated
        at.bad(value, f"at most {MAX_INPUT_NUMEL} values in all")


def parse_config(value: object, at: At) -> PTQConfig:
    d = as_dict(value, at)
    try:
        return PTQConfig.from_dict(d)
    except Exception as e:  # from_dict trusts its input's form: any failure is a bad config
        at.fail(f"not a valid PTQConfig ({type(e).__name__}: {e})")


def parse_layers(value: object, at: At) -> dict[str, LayerInfo]:
    return {name: parse_layer(info, at.item(name)) for name, info in as_dict(value, at).items()}


def parse_layer(value: object, at: At) -> LayerInfo:
    info = as_dict(value, at)
    bits, at_bits = get(info, "bits", at)
    if type(bits) is not int or bits not in STORED_BITS:
        at_bits.bad(bits, f"one of {', '.join(map(str, STORED_BITS))}")
    signed, at_signed = get(info, "signed", at)
    if not isinstance(signed, bool):
        at_signed.bad(signed, "true or false")
    bias, at_bias = get(info, "bias", at)
    if bias not in BIAS_KINDS:
        at_bias.bad(bias, "null, 'int32' or 'float'")
    return LayerInfo(
        bits=bits,
        signed=signed,
        shape=as_sizes(*get(info, "shape", at), min_size=0, min_len=2),
        weight_scale_shape=as_sizes(*get(info, "weight_scale_shape", at), min_size=0),
        bias=bias,
    )
