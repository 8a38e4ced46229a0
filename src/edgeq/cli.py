"""The `edgeq` command. A thin layer: each subcommand calls one public function."""

from __future__ import annotations

import argparse
import sys

import torch

from edgeq.evaluate import weight_error_table
from edgeq.models import PretrainedWeightsMissing, mobilenet_v2_weights_path
from edgeq.quant import QuantSpec


def demo(worst: int = 8) -> int:
    """Quantize the real pretrained MobileNetV2's weights (int8 per channel and int4 per
    group, MSE ranges) and print the per-layer error, worst layers first."""
    path = mobilenet_v2_weights_path()
    state_dict = torch.load(path, weights_only=True, map_location="cpu")
    specs = {
        "int8/channel": QuantSpec(bits=8, granularity="per_channel", axis=0, range_method="mse"),
        "int4/channel": QuantSpec(bits=4, granularity="per_channel", axis=0, range_method="mse"),
    }
    tables = {label: weight_error_table(state_dict, spec) for label, spec in specs.items()}
    first = next(iter(tables.values()))
    print(f"MobileNetV2 (torchvision ImageNet weights, {path.name}): {len(first)} weight tensors")
    print("weight SQNR in dB (higher is better); worst int8 layers first\n")
    labels = list(tables)
    print(f"{'layer':<34} {'shape':<14} " + " ".join(f"{lab:>13}" for lab in labels))
    order = sorted(range(len(first)), key=lambda i: float(first[i]["sqnr_db"]))
    for i in order[:worst]:
        row = first[i]
        cells = " ".join(f"{float(tables[lab][i]['sqnr_db']):13.1f}" for lab in labels)
        print(f"{row['name']!s:<34} {row['shape']!s:<14} {cells}")
    for lab in labels:
        vals = [float(r["sqnr_db"]) for r in tables[lab]]
        print(f"\n{lab}: median {sorted(vals)[len(vals) // 2]:.1f} dB, min {min(vals):.1f} dB")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="quantize the real pretrained MobileNetV2 (offline)")
    p_demo.add_argument("--worst", type=int, default=8, help="layers to list (default 8)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo(worst=args.worst)
    except PretrainedWeightsMissing as e:
        print(f"edgeq: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
