"""Sensitivity: which layers lose the most when quantized?

The model is quantized once (calibrated once). Then, in the fake-quantized simulation
(float arithmetic on the same grids), each conv/linear layer is in turn (a) the only
layer left in float, everything else quantized, and (b) the only layer quantized,
everything else float (`LayerSwitchboard`; a layer in float gets its float bias back
from bias correction). Each setting is scored on the evaluation images against the
FP32 model: logits SQNR, top-1 agreement and, with labels, top-1. Layers are ranked by
how much SQNR keeping them in float recovers; the worst few are suggested as recipe
overrides.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edgeq
from edgeq.evaluate.classification import score
from edgeq.graph.insert import feeding_quantizer, output_quantizer
from edgeq.graph.qmodules import ActivationQuantizer, IntegerOp, QuantConv2d, QuantLinear
from edgeq.jobs.inputs import JobInputs
from edgeq.recipe import dump
from edgeq.report.document import Document
from edgeq.runs import write_text_atomic


@dataclass
class SensitivityJob:
    model: str
    calib: Path
    eval: Path
    recipe: dict[str, Any]
    weights: Path | None = None
    images: int = 64
    suggest: int = 3
    progress: bool = True
    log: Callable[[str], None] = print
    trust_model_file: bool = False


@dataclass
class _Switch:
    module: QuantConv2d | QuantLinear
    biases: tuple[torch.Tensor, torch.Tensor] | None  # (quantized, float)
    input_quantizer: ActivationQuantizer | None
    output_quantizer: ActivationQuantizer | None


class LayerSwitchboard:
    """Switches the conv/linear layers of a quantized model between quantized and
    float one at a time, in its fake-quantized simulation (float arithmetic on the
    same grids; the integer kernels need every neighbour quantized).

    A layer in float runs its float weights and its float bias: bias correction
    (`edgeq.ptq.bias_correction`) adds each quantized layer's rounding shift to its
    bias, which a float layer must not keep. With every layer in float the model
    computes what ``qm.float_module`` computes.
    """

    def __init__(self, qm: edgeq.QuantizedModel) -> None:
        gm = qm.module
        modules = dict(gm.named_modules())
        float_modules = dict(qm.float_module.named_modules()) if qm.float_module else {}
        self._layers: dict[str, _Switch] = {}
        for node in gm.graph.nodes:
            m = modules.get(node.target) if node.op == "call_module" else None
            if not (isinstance(m, QuantConv2d | QuantLinear) and m.quantized):
                continue
            if node.target not in float_modules:
                raise RuntimeError(f"layer {node.target}: not found in the float model")
            float_bias = getattr(float_modules[node.target], "bias", None)
            biases = None
            if m.bias is not None:
                fb = torch.zeros_like(m.bias) if float_bias is None else float_bias.detach()
                biases = (m.bias.detach().clone(), fb.clone())
            m.integer_exact = False  # fake-quant path: layers can be switched one by one
            self._layers[node.target] = _Switch(
                m, biases, feeding_quantizer(node.args[0], modules), output_quantizer(node, modules)
            )
        self._quantizers = [m for m in modules.values() if isinstance(m, ActivationQuantizer)]
        self._int_ops = [m for m in modules.values() if isinstance(m, IntegerOp)]

    @property
    def names(self) -> list[str]:
        """The switchable layers, in graph order."""
        return list(self._layers)

    def _layer(self, name: str, quantized: bool) -> None:
        switch = self._layers[name]
        switch.module.quantized = quantized
        bias = switch.module.bias
        if switch.biases is not None and bias is not None:
            with torch.no_grad():
                bias.copy_(switch.biases[0 if quantized else 1])

    def set_all(self, quantized: bool) -> None:
        for name in self._layers:
            self._layer(name, quantized)
        for q in self._quantizers:
            q.enabled = quantized
        for op in self._int_ops:
            op.integer = quantized and op.out_spec is not None

    def only_float(self, name: str) -> None:
        """Every layer quantized but ``name`` (and its output quantizer)."""
        self.set_all(True)
        self._layer(name, False)
        qout = self._layers[name].output_quantizer
        if qout is not None:
            qout.enabled = False

    def only_quantized(self, name: str) -> None:
        """Every layer in float but ``name`` (and the quantizers around it)."""
        self.set_all(False)
        self._layer(name, True)
        switch = self._layers[name]
        for q in (switch.input_quantizer, switch.output_quantizer):
            if q is not None:
                q.enabled = True


def run_sensitivity(job: SensitivityJob, inputs: JobInputs, out: Path) -> dict[str, Any]:
    """Rank the layers (see the module docstring) into the folder ``out``."""
    model, cx = inputs.model, inputs.calib_x
    bs = job.recipe["calibration"]["batch_size"]
    job.log(f"calibrating on {inputs.calib_desc}")
    qm = edgeq.quantize(model, [cx[i : i + bs] for i in range(0, len(cx), bs)], inputs.config)
    ev = inputs.eval_images
    assert ev is not None  # prepare_inputs was given the evaluation folder
    ex, ey = ev.tensors(range(min(job.images, len(ev))))
    labels = ey.numpy()
    gm = qm.module
    board = LayerSwitchboard(qm)
    with torch.no_grad():
        fp = model(ex).numpy()

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            logits = np.concatenate([gm(ex[i : i + 32]).numpy() for i in range(0, len(ex), 32)])
        return score(logits, labels, fp)

    base = evaluate()
    rows = []
    it: Any = board.names
    if job.progress:
        from tqdm import tqdm

        it = tqdm(board.names, desc="layers", unit="layer", disable=None)
    for name in it:
        board.only_float(name)
        kept_float = evaluate()
        board.only_quantized(name)
        alone = evaluate()
        rows.append(
            {
                "layer": name,
                "float_kept_sqnr_db": kept_float["sqnr_db"],
                "float_kept_agreement": kept_float["agreement"],
                "float_kept_top1": kept_float["top1"],
                "sqnr_gain_db": kept_float["sqnr_db"] - base["sqnr_db"],
                "only_quantized_sqnr_db": alone["sqnr_db"],
                "only_quantized_agreement": alone["agreement"],
                "only_quantized_top1": alone["top1"],
            }
        )
    board.set_all(True)
    ranked = sorted(rows, key=lambda r: -r["sqnr_gain_db"])
    suggestions = [{"match": r["layer"], "float": True} for r in ranked[: job.suggest]]

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in ranked:
        w.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()})
    write_text_atomic(out / "sensitivity.csv", buf.getvalue())
    result = {
        "model": job.model,
        "images": len(ex),
        "all_quantized": base,
        "fp32_top1": score(fp, labels)["top1"],
        "layers": ranked,
        "suggested_overrides": suggestions,
    }
    write_text_atomic(out / "sensitivity.json", json.dumps(result, indent=2) + "\n")
    _report(out, result)
    return result


def _report(out: Path, result: dict[str, Any]) -> None:
    from edgeq.report.plots import plt

    ranked = result["layers"][:25]
    (out / "plots").mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(ranked) + 1.6))
    names = [r["layer"] for r in ranked][::-1]
    ax.barh(names, [r["sqnr_gain_db"] for r in ranked][::-1], color="#4f81bd")
    ax.set_xlabel("logits SQNR recovered by keeping the layer in float (dB)")
    ax.set_title(f"Layer sensitivity ({result['images']} images), most sensitive at the top")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plots" / "sensitivity.png", dpi=110)
    plt.close(fig)
    base = result["all_quantized"]
    doc = Document(f"edgeq sensitivity: {result['model']}")
    doc.p(
        f"All layers quantized: logits SQNR {base['sqnr_db']:.1f} dB, top-1 agreement with "
        f"FP32 {base['agreement']:.3f}, top-1 {base['top1']:.3f} (FP32 "
        f"{result['fp32_top1']:.3f}), on {result['images']} images."
    )
    doc.img("plots/sensitivity.png", "SQNR recovered by keeping each layer in float")
    doc.table(
        ["layer", "SQNR gain (dB)", "agreement, layer float", "SQNR, layer alone quantized"],
        [
            [
                r["layer"],
                f"{r['sqnr_gain_db']:.2f}",
                f"{r['float_kept_agreement']:.3f}",
                f"{r['only_quantized_sqnr_db']:.1f}",
            ]
            for r in ranked[:15]
        ],
    )
    doc.p("Suggested recipe overrides (keep the most sensitive layers in float):")
    doc.code(dump({"overrides": result["suggested_overrides"]}))
    write_text_atomic(out / "sensitivity.md", doc.markdown())
    write_text_atomic(out / "sensitivity.html", doc.html())
