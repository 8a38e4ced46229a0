"""W4A8 post-training quantization of the real MobileNetV2: rounding methods side by side.

    python benchmarks/ptq_w4a8_mobilenet_v2.py ../shared/data/imagenet-val-dev \
        --calib ../shared/data/imagenet-sample-1k

int4 per-channel weights on every conv and linear layer, depthwise included, the
first conv and the classifier at 8 bits (as the published W4A8 figures do); uint8
activations. Calibrated on a seeded class-spread sample of 256 training-side images
(``--calib``), evaluated on the dev images, never the same images. Rows: nearest
rounding and GPTQ (`edgeq.ptq.rounding`), with and without bias correction, and the
default recipe of ``weight: {bits: 4}`` (depthwise layers stay 8-bit; rounding auto,
i.e. GPTQ). Writes results/ptq_w4a8_mobilenet_v2.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import edgeq
from edgeq.data import load_labeled_images
from edgeq.data.sampling import sample_indices
from edgeq.models import mobilenet_v2_weights_path
from edgeq.ptq.config import LayerOverride
from edgeq.quant import sqnr_db
from edgeq.recipe import resolve, to_config
from edgeq.runtime import machine_info

CALIB = 256
FIRST_LAST = (LayerOverride("features.0.0", bits=8), LayerOverride("classifier.1", bits=8))


def _w4a8(rounding: str, bias_correction: bool) -> edgeq.PTQConfig:
    base = edgeq.PTQConfig()
    return dataclasses.replace(
        base,
        weight=dataclasses.replace(base.weight, bits=4),
        min_depthwise_bits=4,
        overrides=FIRST_LAST,
        rounding=rounding,
        bias_correction=bias_correction,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, help="labeled evaluation images")
    parser.add_argument("--calib", type=Path, required=True, help="labeled calibration images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.calib.resolve() == args.data.resolve():
        parser.error("--calib must not be the evaluation folder")
    torch.set_num_threads(2)
    model = edgeq.load_model("torchvision:mobilenet_v2", weights=mobilenet_v2_weights_path())
    x, y = load_labeled_images(args.data).tensors()
    calib_set = load_labeled_images(args.calib)
    xc, _ = calib_set.tensors(sample_indices(list(calib_set.labels), CALIB, seed=0))
    calib = [xc[i : i + 32] for i in range(0, len(xc), 32)]
    with torch.no_grad():
        fp = torch.cat([model(x[i : i + 50]) for i in range(0, len(x), 50)])
    rows: list[dict] = [
        {"name": "FP32", "top1": float((fp.argmax(1) == y).float().mean()), "agreement": 1.0}
    ]
    runs = [
        ("W4A8 nearest", _w4a8("nearest", True)),
        ("W4A8 GPTQ", _w4a8("gptq", True)),
        ("W4A8 nearest, no bias correction", _w4a8("nearest", False)),
        ("W4A8 GPTQ, no bias correction", _w4a8("gptq", False)),
        ("recipe weight: {bits: 4} (depthwise 8-bit)", to_config(resolve({"weight": {"bits": 4}}))),
    ]
    for name, cfg in runs:
        t = time.perf_counter()
        qm = edgeq.quantize(model, calib, cfg)
        seconds = time.perf_counter() - t
        with torch.no_grad():
            q = torch.cat([qm(x[i : i + 50]) for i in range(0, len(x), 50)])
        layers = qm.calibration.get("rounding", {}).get("layers", {})
        row = {
            "name": name,
            "rounding": cfg.rounding_method().value,
            "top1": float((q.argmax(1) == y).float().mean()),
            "agreement": float((q.argmax(1) == fp.argmax(1)).float().mean()),
            "logits_sqnr_db": sqnr_db(fp, q),
            "quantize_seconds": seconds,
            "rounding_seconds": qm.calibration.get("seconds", {}).get("rounding"),
            "layers_learned": len(layers),
            "layers_kept_nearest": sum(int(r.get("kept_nearest", 0)) for r in layers.values()),
            "output_error_ratio": (
                sum(r["learned"] for r in layers.values())
                / max(sum(r["nearest"] for r in layers.values()), 1e-30)
                if layers
                else None
            ),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    res = {
        "machine": machine_info(),
        "calibration": f"{CALIB} images of {args.calib.name} (seeded class-spread sample)",
        "evaluation": f"{len(x)} images of {args.data.name}",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq_w4a8_mobilenet_v2.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "ptq_w4a8_mobilenet_v2.md").write_text(_markdown(res))


def _markdown(res: dict) -> str:
    fp = res["rows"][0]["top1"]
    lines = [
        "# W4A8 MobileNetV2: rounding methods",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores. "
        f"Calibration: {res['calibration']}. Evaluation: {res['evaluation']}.",
        "",
        "| configuration | top-1 | drop (pt) | agreement | logits SQNR (dB) | quantize (s) |"
        " rounding (s) | output error vs nearest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        sq = f"{r['logits_sqnr_db']:.2f}" if "logits_sqnr_db" in r else "-"
        sec = f"{r['quantize_seconds']:.0f}" if "quantize_seconds" in r else "-"
        rs = f"{r['rounding_seconds']:.0f}" if r.get("rounding_seconds") else "-"
        ratio = f"{r['output_error_ratio']:.2f}x" if r.get("output_error_ratio") else "-"
        lines.append(
            f"| {r['name']} | {r['top1']:.4f} | {100 * (fp - r['top1']):.1f} | "
            f"{r['agreement']:.4f} | {sq} | {sec} | {rs} | {ratio} |"
        )
    lines += [
        "",
        "Output error vs nearest: the sum over layers of each layer's squared output error "
        "on the calibration inputs with the learned levels, over the same with nearest "
        "levels (GPTQ's `tr(D H D^T)`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
