"""ResNet-18 (random weights) int8 vs FP32 latency in ONNX Runtime, alone on the machine.

    .venv/bin/python benchmarks/resnet18_latency.py [--rounds-b1 300] [--out benchmarks/results]

Static W8A8 with edgeq's defaults (2 random calibration batches: latency does not
depend on the weights' values), both models in one run, interleaved round by round,
2 threads. Writes resnet18_latency.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import edgeq
from edgeq.runtime import machine_info, measure_latency, ort_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds-b1", type=int, default=300)
    parser.add_argument("--rounds-b32", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = edgeq.load_model("torchvision:resnet18")
    calib = [torch.randn(8, 3, 224, 224) for _ in range(2)]
    qm = edgeq.quantize(model, calib)
    tmp = Path(tempfile.mkdtemp(prefix="edgeq-r18-"))
    fp32 = edgeq.export_onnx(qm, tmp / "fp32.onnx", calib[0][:1], quantized=False)
    int8 = edgeq.export_onnx(qm, tmp / "int8.onnx", calib[0][:1])
    sessions = {"fp32": ort_session(fp32), "int8": ort_session(int8)}
    res: dict = {}
    for batch, rounds in ((1, args.rounds_b1), (32, args.rounds_b32)):
        t = measure_latency(sessions, torch.randn(batch, 3, 224, 224).numpy(), rounds=rounds)
        res[str(batch)] = {
            "fp32_ms": 1000 * t["fp32"],
            "int8_ms": 1000 * t["int8"],
            "ratio": t["int8"] / t["fp32"],
            "rounds": rounds,
        }
    machine = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine, "threads": 2, "batches": res}
    (args.out / "resnet18_latency.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# ResNet-18 (random weights): edgeq int8 vs FP32 in ONNX Runtime, 2 threads",
        "",
        f"CPU {machine['cpu']} ({', '.join(machine['integer_isa'])}), "  # type: ignore[arg-type]
        f"onnxruntime {__import__('onnxruntime').__version__}.",
        "",
        "| batch | FP32 ms | int8 ms | ratio | rounds |",
        "|---|---|---|---|---|",
    ] + [
        f"| {b} | {r['fp32_ms']:.2f} | {r['int8_ms']:.2f} | {r['ratio']:.3f} | {r['rounds']} |"
        for b, r in res.items()
    ]
    (args.out / "resnet18_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
