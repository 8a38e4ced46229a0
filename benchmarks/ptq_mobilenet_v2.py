"""W8A8 PTQ of the real pretrained MobileNetV2 on ImageNet dev images, in ONNX Runtime.

    .venv/bin/python benchmarks/ptq_mobilenet_v2.py ../shared/data/imagenet-val-dev \
        [--target portable|vnni] [--out benchmarks/results]

Calibrates on the first 256 images (sorted by file name), evaluates on all of them.
Writes ptq_mobilenet_v2.json/.md: FP32 vs simulation vs ONNX Runtime int8 top-1,
agreement, ORT-vs-simulation fidelity, sizes, node counts, latency ratios (batch 1
and 32, 2 threads, FP32 and int8 interleaved in the same run).
Peers (ORT quantize_static, NNCF, PyTorch FX) are not in this script yet.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

from edgeq.data import load_labeled_images
from edgeq.export import export_onnx
from edgeq.models import mobilenet_v2_weights_path
from edgeq.ptq import PTQConfig, quantize
from edgeq.runtime import measure_latency, ort_session


def _run(sess, x: torch.Tensor) -> np.ndarray:
    return np.concatenate(
        [sess.run(None, {"input": x[i : i + 32].numpy()})[0] for i in range(0, len(x), 32)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("--target", default="portable", choices=["portable", "vnni"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(
        torch.load(mobilenet_v2_weights_path(), weights_only=True, map_location="cpu")
    )
    model.eval()
    x, y = load_labeled_images(args.data).tensors()
    calib = [x[i : i + 32] for i in range(0, 256, 32)]
    qm = quantize(model, calib, PTQConfig(target=args.target))
    with torch.no_grad():
        fp, sim = model(x).numpy(), qm.module(x).numpy()
    tmp = Path(tempfile.mkdtemp())
    q_path = export_onnx(qm.module, tmp / "int8.onnx", x[:1])
    f_path = export_onnx(qm.float_module, tmp / "fp32.onnx", x[:1], quantized=False)
    sq = ort_session(q_path, optimized_model_path=tmp / "opt.onnx")
    sf = ort_session(f_path)
    oq, of = _run(sq, x), _run(sf, x)
    labels = y.numpy()
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp / "opt.onnx")).graph.node)
    lat = {b: measure_latency({"fp32": sf, "int8": sq}, x[:b].numpy(), rounds=20) for b in (1, 32)}
    res = {
        "images": len(x),
        "calibration_images": 256,
        "target": args.target,
        "top1": {
            "fp32_torch": float((fp.argmax(1) == labels).mean()),
            "fp32_onnx": float((of.argmax(1) == labels).mean()),
            "sim": float((sim.argmax(1) == labels).mean()),
            "int8_onnx": float((oq.argmax(1) == labels).mean()),
        },
        "agreement_with_fp32": {
            "sim": float((sim.argmax(1) == fp.argmax(1)).mean()),
            "int8_onnx": float((oq.argmax(1) == fp.argmax(1)).mean()),
        },
        "ort_vs_sim": {
            "top1_agreement": float((oq.argmax(1) == sim.argmax(1)).mean()),
            "logits_sqnr_db": float(10 * np.log10((sim**2).sum() / ((oq - sim) ** 2).sum())),
        },
        "bytes": {"fp32_onnx": f_path.stat().st_size, "int8_onnx": q_path.stat().st_size},
        "size_ratio": q_path.stat().st_size / f_path.stat().st_size,
        "optimized_graph_ops": dict(ops),
        "latency_s": {str(b): v for b, v in lat.items()},
        "latency_ratio": {str(b): v["int8"] / v["fp32"] for b, v in lat.items()},
        "quantize_seconds": qm.seconds,
        "machine": {
            "cpu": platform.processor(),
            "threads": 2,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq_mobilenet_v2.json").write_text(json.dumps(res, indent=2) + "\n")
    t, a, f = res["top1"], res["agreement_with_fp32"], res["ort_vs_sim"]
    md = [
        "# W8A8 PTQ, MobileNetV2 (real weights), ImageNet dev images",
        "",
        f"{res['images']} images, calibrated on 256; target={args.target}; "
        "ONNX Runtime, 2 threads.",
        "",
        "| model | top-1 | agreement with FP32 |",
        "| --- | --- | --- |",
        f"| FP32 (ONNX) | {t['fp32_onnx']:.3f} | 1.000 |",
        f"| edgeq simulation (PyTorch) | {t['sim']:.3f} | {a['sim']:.3f} |",
        f"| edgeq int8 (ONNX Runtime) | {t['int8_onnx']:.3f} | {a['int8_onnx']:.3f} |",
        "",
        f"ORT vs simulation: top-1 agreement {f['top1_agreement']:.3f}, "
        f"logits SQNR {f['logits_sqnr_db']:.1f} dB.",
        f"Size: int8 / fp32 = {res['size_ratio']:.3f}. Latency int8 / fp32: batch 1 "
        f"{res['latency_ratio']['1']:.2f}, batch 32 {res['latency_ratio']['32']:.2f}.",
        f"Optimized graph ops: {dict(ops)}. Quantize: {qm.seconds:.1f} s.",
    ]
    (args.out / "ptq_mobilenet_v2.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
