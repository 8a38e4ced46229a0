"""Weight quantization MSE of each range estimator on the real MobileNetV2 weights.

    .venv/bin/python benchmarks/weight_range_estimators.py [--out benchmarks/results]

Writes weight_range_estimators.json and .md: estimator x bits x granularity, the mean
squared error over all 53 conv/linear weights, and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from edgeq.models import mobilenet_v2_weights_path
from edgeq.quant import (
    QuantInputError,
    QuantSpec,
    choose_qparams,
    codebook_dequantize,
    codebook_quantize,
    dequantize,
    estimate_range,
    kmeans_codebook,
    quantize,
)

METHODS = ["minmax", "percentile", "mse", "kl", "kmeans"]


def _mse(weights: dict[str, torch.Tensor], spec: QuantSpec) -> tuple[float, int]:
    err, n, skipped = 0.0, 0, 0
    for name, w in weights.items():
        if spec.scheme.value == "kmeans":
            cb = kmeans_codebook(w, spec)
            w_hat = codebook_dequantize(codebook_quantize(w, cb, spec), cb, spec)
        else:
            try:
                lo, hi = estimate_range(w, spec, name=name)
            except QuantInputError:  # KL refuses rows with too few values
                skipped += 1
                lo, hi = estimate_range(w, spec.replace(range_method="minmax"), name=name)
            s, z = choose_qparams(lo, hi, spec)
            w_hat = dequantize(quantize(w, s, z, spec), s, z, spec)
        err += float(((w - w_hat) ** 2).sum())
        n += w.numel()
    return err / n, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    sd = torch.load(mobilenet_v2_weights_path(), weights_only=True, map_location="cpu")
    weights = {k: v for k, v in sd.items() if k.endswith("weight") and v.ndim in (2, 4)}
    torch.set_num_threads(2)
    rows = []
    for gran in ["per_tensor", "per_channel"]:
        for bits in [4, 8]:
            for method in METHODS:
                axis = {"axis": 0} if gran == "per_channel" else {}
                if method == "kmeans":
                    spec = QuantSpec(bits=bits, scheme="kmeans", granularity=gran, **axis)
                else:
                    spec = QuantSpec(
                        bits=bits, granularity=gran, range_method=method, percentile=99.99, **axis
                    )
                t0 = time.perf_counter()
                mse, skipped = _mse(weights, spec)
                rows.append(
                    {
                        "granularity": gran,
                        "bits": bits,
                        "method": method,
                        "mse": mse,
                        "kl_fallback_tensors": skipped,
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                )
                print(rows[-1], flush=True)
    meta = {
        "model": "torchvision MobileNetV2 ImageNet weights (mobilenet_v2-b0353104.pth)",
        "tensors": len(weights),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "percentile": 99.99,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "weight_range_estimators.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Weight quantization MSE by range estimator (MobileNetV2, real weights)",
        "",
        f"{meta['tensors']} conv/linear weights; MSE over all weights (lower is better);"
        f" torch {meta['torch']}, {meta['torch_threads']} threads.",
        "KL falls back to min-max for tensors with fewer than 512 values per row"
        " (count in brackets).",
        "",
        "| granularity | bits | " + " | ".join(METHODS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in METHODS) + " |",
    ]
    for gran in ["per_tensor", "per_channel"]:
        for bits in [4, 8]:
            cells = []
            for m in METHODS:
                r = next(
                    x for x in rows if (x["granularity"], x["bits"], x["method"]) == (gran, bits, m)
                )
                note = f" [{r['kl_fallback_tensors']}]" if r["kl_fallback_tensors"] else ""
                cells.append(f"{r['mse']:.3e}{note}")
            lines.append(f"| {gran} | {bits} | " + " | ".join(cells) + " |")
    (args.out / "weight_range_estimators.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
