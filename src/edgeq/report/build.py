"""The run report: report.md and report.html (same content) with plots/*.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.evaluate.per_layer import LayerError
from edgeq.report import plots
from edgeq.report.document import Document, fmt
from edgeq.report.training import add_training
from edgeq.runs import write_text_atomic


def _f(v: Any, spec: str = ".3f") -> str:
    return fmt(v, spec, inf="inf (identical)")


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f}"


def build_report(out: Path, metrics: dict[str, Any], errors: list[LayerError]) -> Path:
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    acc = metrics["accuracy"]
    b = metrics["bytes"]
    lat = metrics.get("latency", {})
    how = f"{metrics['mode']}, quantization-aware training" if metrics.get("training") else ""
    doc = Document(f"edgeq report: {metrics['model']} ({how or metrics['mode']})")
    doc.p(
        f"Weights: {metrics['weights']}. Calibration: {metrics['calibration']}. "
        f"Evaluation: {metrics['evaluation']}."
    )
    pre = metrics.get("preprocess")
    if pre:
        doc.p(f"Preprocessing ({pre['origin']}): {pre['description']}.")

    doc.h2("FP32 vs quantized")
    headers = [
        "model",
        "top-1",
        "top-5",
        "agreement with FP32",
        "SQNR vs FP32 (dB)",
        "size (MB)",
    ] + [f"latency b{k} (ms)" for k in lat]
    rows = []
    labelled = "top1" in acc["fp32_onnx"]
    for key, label, size, lat_key in (
        ("fp32_onnx", "FP32 (ONNX Runtime)", b.get("fp32_onnx"), "fp32_ms"),
        ("quantized_onnx", "quantized (ONNX Runtime)", b.get("quantized_onnx"), "quantized_ms"),
        ("simulation", "quantized simulation (PyTorch)", b.get("artifact"), None),
    ):
        if key not in acc:
            continue
        m = acc[key]
        row = [
            label,
            _f(m.get("top1")),
            _f(m.get("top5")),
            _f(m.get("agreement", 1.0 if key == "fp32_onnx" else None)),
            _f(m.get("sqnr_db"), ".1f"),
            _mb(size),
        ]
        row += [_f(lat[k][lat_key], ".2f") if lat_key else "" for k in lat]
        rows.append(row)
    doc.table(headers, rows)
    if not labelled:
        doc.p(
            "No labeled evaluation data was given (--eval): accuracy is not measured; "
            "agreement and SQNR compare with the FP32 model on the calibration inputs."
        )
    if lat:
        doc.p(
            "Speed-up over FP32 in ONNX Runtime: "
            + ", ".join(
                f"batch {k}: {1 / v['ratio']:.2f}x (latency ratio {v['ratio']:.2f})"
                for k, v in lat.items()
            )
            + "."
        )
    if b.get("quantized_onnx"):
        doc.p(
            f"Size on disk: quantized ONNX is {b['quantized_onnx'] / b['fp32_onnx']:.3f}x the "
            f"FP32 ONNX; the packed artifact (model/) is {b['artifact'] / b['fp32_onnx']:.3f}x."
        )
    else:
        doc.p(
            f"Size on disk: the packed artifact (model/) is "
            f"{b['artifact'] / b['fp32_onnx']:.3f}x the FP32 ONNX."
        )

    if metrics.get("training"):
        add_training(doc, out, plot_dir, metrics["training"])

    doc.h2("Export check: ONNX Runtime vs the PyTorch simulation")
    ec = metrics.get("export_check")
    if ec is None:
        doc.p(
            "No quantized ONNX model in this mode (weight-only models are saved as packed "
            "artifacts only)."
        )
    else:
        mark = "PASS" if ec["pass"] else "FAIL"
        doc.table(
            ["check", "value", "result"],
            [
                ["top-1 agreement (target >= 0.995)", _f(ec["top1_agreement"]), mark],
                [
                    "max abs logit difference",
                    _f(ec["max_abs_logit_difference"], ".3g"),
                    "PASS (bit-exact)" if ec["max_abs_logit_difference"] == 0 else "info",
                ],
                ["logits SQNR (dB)", _f(ec["sqnr_db"], ".1f"), "info"],
            ],
        )

    doc.h2("Bit-width coverage")
    cov = metrics["coverage"]
    doc.table(
        ["weight bits", "layers"],
        [[k, str(v)] for k, v in sorted(cov["weight_bits"].items())]
        + [["float (not quantized)", str(len(cov["float_ops"]))]],
    )
    if cov["float_ops"]:
        doc.p("Kept in float: " + "; ".join(cov["float_ops"]) + ".")
    cal = metrics.get("calibration_result") or {}
    notes = []
    if cal.get("activation_percentile") is not None:
        tried = ", ".join(
            f"{p}: {v:.2f} dB" for p, v in cal.get("percentile_search_sqnr_db", {}).items()
        )
        notes.append(
            f"Activation ranges: the {cal['activation_percentile']}th percentile of each "
            f"tensor, the best logits SQNR against FP32 on calibration images ({tried})."
        )
    if cal.get("bias_corrected_layers"):
        notes.append(
            f"Bias correction: {cal['bias_corrected_layers']} layers, measured on "
            f"{cal['bias_correction_images']} calibration images."
        )
    if cal.get("padded_inputs"):
        notes.append(
            "Input channels padded for ONNX Runtime's symmetric conv kernels: "
            + "; ".join(cal["padded_inputs"])
            + "."
        )
    if notes:
        doc.p(" ".join(notes))

    doc.h2("Per-layer error")
    if not errors:
        doc.p(
            "No integer-quantized layers in this mode (float16 rounds every float "
            "parameter to float16; the graph is otherwise unchanged)."
        )
    if errors:
        doc.img(
            plots.per_layer_sqnr(errors, plot_dir / "per_layer_sqnr.png")
            .relative_to(out)
            .as_posix(),
            "Per-layer SQNR, worst layers first",
        )
        ranked = sorted(
            errors, key=lambda e: (e.activation_sqnr_db is None, e.activation_sqnr_db or 0.0)
        )
        doc.table(
            ["layer", "weight bits", "weight SQNR (dB)", "activation SQNR (dB)"],
            [
                [
                    e.name,
                    str(e.weight_bits),
                    _f(e.weight_sqnr_db, ".1f"),
                    _f(e.activation_sqnr_db, ".1f"),
                ]
                for e in ranked[:10]
            ],
        )
        for i, e in enumerate(ranked[:3]):
            p = plots.layer_histograms(
                e, plot_dir / f"worst_{i + 1}_{e.name.replace('.', '_')}.png"
            )
            doc.img(
                p.relative_to(out).as_posix(),
                f"{e.name}: weight and activation histograms with the quantization grid",
            )
    doc.h2("Time and machine")
    s = metrics["seconds"]
    train = f"training: {s['train']:.1f} s; " if "train" in s else ""
    doc.p(
        f"Quantize (calibration included): {s['quantize']:.1f} s; {train}"
        f"whole job: {s['total']:.1f} s. "
        f"{_machine_line(metrics['machine'])}; "
        + ", ".join(f"{k} {v}" for k, v in metrics["versions"].items())
        + "."
    )
    write_text_atomic(out / "report.md", doc.markdown())
    write_text_atomic(out / "report.html", doc.html())
    return out / "report.md"


def _machine_line(machine: dict) -> str:
    isa = ", ".join(machine.get("integer_isa") or []) or "no AVX2/VNNI/AMX/dot-product"
    return f"{machine.get('cpu')} ({machine.get('cores')} cores; {isa}), {machine.get('platform')}"
