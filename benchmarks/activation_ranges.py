"""Activation ranges on the real MobileNetV2: which estimator, which percentile, and
what the percentile search and bias correction add. The evidence for the defaults.

    .venv/bin/python benchmarks/activation_ranges.py ../shared/data/imagenet-val-dev \
        [--out benchmarks/results]

Static W8A8 with edgeq's defaults except the activation ranges; calibrated on the first
256 dev images. Scored by the SQNR of the logits against FP32 (low variance: every
logit of every image counts) on three sets: all 298 dev images, the 42 not used for
calibration, and 80 crops of scikit-image's photographs (never seen in calibration,
another distribution); top-1 agreement and top-1 on the dev images for reference (one
image is 0.34 pt). Time to quantize is measured by ptq_mobilenet_v2.py, not here.
Writes activation_ranges.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import edgeq
from edgeq.data import load_labeled_images
from edgeq.data.samples import sample_photo_batch
from edgeq.models import mobilenet_v2_weights_path
from edgeq.ptq.range_search import output_sqnr_db
from edgeq.quant import QuantSpec

CALIB = 256


def _spec(method: str, percentile: float = 99.999) -> QuantSpec:
    return QuantSpec(
        bits=8, signed=False, symmetric=False, range_method=method, percentile=percentile
    )


def _variants() -> dict[str, edgeq.PTQConfig]:
    fixed = {"percentile_search": (), "bias_correction": False}
    out = {m: edgeq.PTQConfig(activation=_spec(m), **fixed) for m in ("minmax", "mse", "kl")}
    for p in (99.9, 99.95, 99.98, 99.99, 99.995, 99.999, 99.9999):
        out[f"percentile {p}"] = edgeq.PTQConfig(activation=_spec("percentile", p), **fixed)
    out["percentile search"] = edgeq.PTQConfig(bias_correction=False)
    out["search + bias correction (default)"] = edgeq.PTQConfig()
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = edgeq.load_model("torchvision:mobilenet_v2", weights=mobilenet_v2_weights_path())
    x, y = load_labeled_images(args.data).tensors()
    photos = sample_photo_batch()
    calib = [x[i : i + 32] for i in range(0, CALIB, 32)]
    fp, fp_photos = model(x), model(photos)
    rows = {}
    for name, config in _variants().items():
        qm = edgeq.quantize(model, calib, config)
        logits = torch.cat([qm(x[i : i + 50]) for i in range(0, len(x), 50)])
        rows[name] = {
            "sqnr_db_all": output_sqnr_db([fp], [logits]),
            "sqnr_db_held_out": output_sqnr_db([fp[CALIB:]], [logits[CALIB:]]),
            "sqnr_db_photos": output_sqnr_db([fp_photos], [qm(photos)]),
            "agreement": float((logits.argmax(1) == fp.argmax(1)).float().mean()),
            "top1": float((logits.argmax(1) == y).float().mean()),
            "chosen_percentile": qm.calibration.get("activation_percentile"),
        }
        print(name, {k: round(v, 3) for k, v in rows[name].items() if v is not None}, flush=True)
    res = {
        "model": "mobilenet_v2 (torchvision ImageNet weights)",
        "images": len(x),
        "calibration_images": CALIB,
        "photos": len(photos),
        "fp32_top1": float((fp.argmax(1) == y).float().mean()),
        "threads": 2,
        "variants": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "activation_ranges.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Activation ranges, MobileNetV2 (real weights): logits SQNR against FP32",
        "",
        f"Calibrated on the first {CALIB} of {len(x)} ImageNet dev images; SQNR in dB on all "
        f"dev images, the {len(x) - CALIB} held out from calibration, and {len(photos)} crops "
        f"of scikit-image photographs. FP32 top-1 {res['fp32_top1']:.3f}.",
        "",
        "| activation ranges | SQNR all | SQNR held-out | SQNR photos | agreement | top-1 "
        "| chosen |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        chosen = r["chosen_percentile"]
        lines.append(
            f"| {name} | {r['sqnr_db_all']:.2f} | {r['sqnr_db_held_out']:.2f} | "
            f"{r['sqnr_db_photos']:.2f} | {r['agreement']:.3f} | {r['top1']:.3f} | "
            f"{'' if chosen is None else chosen} |"
        )
    (args.out / "activation_ranges.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
