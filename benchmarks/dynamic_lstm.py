"""Dynamic quantization of an LSTM-heavy model: edgeq vs ONNX Runtime's and PyTorch's.

    .venv/bin/python benchmarks/dynamic_lstm.py [--rounds 50] [--out benchmarks/results]

The model: a keyword-spotting-sized recurrent classifier (40 filterbank features x
100 frames -> Linear 40->128 + ReLU -> 2-layer LSTM, 256 hidden -> Linear 256->12),
random weights (seed 0): no pretrained LSTM ships on the package registries, so
fidelity is measured as SQNR of the logits against FP32 on random inputs, and
top-1 agreement with FP32 on 256 of them; not accuracy.

In one run, 2 threads:
- edgeq, ``mode: dynamic`` (per-row int8 weights; DynamicQuantizeLSTM + MatMulInteger);
- ONNX Runtime ``quantize_dynamic`` on the same FP32 ONNX (its defaults, per tensor,
  and per channel);
- PyTorch ``torch.ao.quantization.quantize_dynamic`` (runs in PyTorch only).
Latency is ONNX Runtime's, as a ratio to the FP32 ONNX, interleaved round by round.
Writes dynamic_lstm.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgeq
from edgeq.ptq import PTQConfig
from edgeq.quant import sqnr_db
from edgeq.runtime import measure_latency, ort_session

FEATURES, FRAMES, HIDDEN, CLASSES = 40, 100, 256, 12


class KeywordLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Linear(FEATURES, 128)
        self.lstm = nn.LSTM(128, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(torch.relu(self.frontend(x)))
        return self.head(y[:, -1, :])


def _agreement(ref: np.ndarray, x: np.ndarray) -> float:
    return float((ref.argmax(1) == x.argmax(1)).mean())


def _run(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = KeywordLSTM().eval()
    test = torch.randn(256, FRAMES, FEATURES)
    with torch.no_grad():
        ref = model(test).numpy()
    tmp = Path(tempfile.mkdtemp(prefix="edgeq-lstm-"))
    rows: dict[str, dict] = {}

    t0 = time.perf_counter()
    qm = edgeq.quantize(model, [], PTQConfig(mode="dynamic", runtime_threads=2))
    fp32 = edgeq.export_onnx(qm, tmp / "fp32.onnx", test[:1], quantized=False)
    ours = edgeq.export_onnx(qm, tmp / "edgeq.onnx", test[:1])
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        sim = qm(test).numpy()
    paths = {"FP32": fp32, "edgeq dynamic": ours}
    rows["edgeq dynamic"] = {"quantize_s": seconds}

    from onnxruntime.quantization import QuantType, quantize_dynamic

    for per_channel in (False, True):
        label = "ORT quantize_dynamic" + (" per-channel" if per_channel else "")
        path = tmp / f"ort_{per_channel}.onnx"
        t0 = time.perf_counter()
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=per_channel)
        rows[label] = {"quantize_s": time.perf_counter() - t0}
        paths[label] = path

    sessions = {k: ort_session(p) for k, p in paths.items()}
    outputs = {k: _run(s, test.numpy()) for k, s in sessions.items()}
    fp32_bytes = Path(fp32).stat().st_size
    rows["FP32"] = {}
    for k, p in paths.items():
        rows[k] |= {
            "sqnr_db": sqnr_db(ref, outputs[k]),
            "agreement": _agreement(ref, outputs[k]),
            "mb": Path(p).stat().st_size / 1e6,
            "size_ratio": Path(p).stat().st_size / fp32_bytes,
        }
    rows["edgeq dynamic"]["ort_vs_sim_sqnr_db"] = sqnr_db(sim, outputs["edgeq dynamic"])
    rows["edgeq dynamic"]["ort_vs_sim_max_abs"] = float(
        np.abs(sim - outputs["edgeq dynamic"]).max()
    )
    rows["edgeq dynamic"]["ort_vs_sim_agreement"] = _agreement(sim, outputs["edgeq dynamic"])
    for batch in (1, 16):
        x = test[:batch].numpy()
        t = measure_latency(sessions, x, rounds=args.rounds * (4 if batch == 1 else 1))
        for k in sessions:
            rows[k][f"ms_b{batch}"] = 1000 * t[k]
            rows[k][f"ratio_b{batch}"] = t[k] / t["FP32"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated upstream
        t0 = time.perf_counter()
        tq = torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, torch.qint8)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            out = tq(test).numpy()
    rows["PyTorch quantize_dynamic (in PyTorch)"] = {
        "quantize_s": seconds,
        "sqnr_db": sqnr_db(ref, out),
        "agreement": _agreement(ref, out),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dynamic_lstm.json").write_text(json.dumps(rows, indent=2) + "\n")

    def f(v: float | None, spec: str) -> str:
        return "" if v is None else format(v, spec)

    lines = [
        "# Dynamic quantization, 2-layer LSTM (256 hidden, 100 steps, random weights)",
        "",
        "ONNX Runtime, 2 threads; latency ratio to FP32 in the same run; SQNR of the "
        "logits and top-1 agreement against FP32 on 256 random inputs.",
        "",
        "| model | SQNR dB | agreement | MB | size | latency b1 | latency b16 | quantize s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in rows.items():
        lines.append(
            f"| {k} | {f(r.get('sqnr_db'), '.1f')} | {f(r.get('agreement'), '.3f')} "
            f"| {f(r.get('mb'), '.2f')} | {f(r.get('size_ratio'), '.3f')} "
            f"| {f(r.get('ratio_b1'), '.2f')} | {f(r.get('ratio_b16'), '.2f')} "
            f"| {f(r.get('quantize_s'), '.2f')} |"
        )
    e = rows["edgeq dynamic"]
    lines += [
        "",
        f"edgeq: ONNX Runtime vs its PyTorch simulation: SQNR {e['ort_vs_sim_sqnr_db']:.1f} dB, "
        f"max |diff| {e['ort_vs_sim_max_abs']:.2e}, "
        f"top-1 agreement {e['ort_vs_sim_agreement']:.3f}.",
    ]
    (args.out / "dynamic_lstm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
