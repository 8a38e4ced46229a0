"""The report's training section: what trained, from what, and its loss and accuracy
curves (plots/train_loss.png, plots/train_accuracy.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.report import plots
from edgeq.report.document import Document, fmt

# the per-epoch terms of the loss (`edgeq.train.distill.DistillationObjective`'s logs)
LOSS_TERMS = {
    "loss": "total (weighted)",
    "kd": "distillation (KL, x T^2)",
    "ce": "cross-entropy with labels",
    "feature": "feature MSE",
}
ACCURACY_CURVES = {"eval_top1": "top-1", "eval_agreement": "top-1 agreement with FP32"}


def add_training(doc: Document, out: Path, plot_dir: Path, training: dict[str, Any]) -> None:
    """Append the training section of metrics.json (``training``) to ``doc``, with the
    curve plots written to ``plot_dir`` (inside ``out``)."""
    history: list[dict[str, float]] = training["history"]
    cfg = training["config"]
    doc.h2("Training: quantization-aware, distilled")
    resumed = " (resumed from its checkpoint)" if training.get("resumed") else ""
    doc.p(
        f"Trained on {training['data']}; teacher: {training['teacher']}. "
        f"{len(history)} epoch(s), {training['steps']} steps of {cfg['batch_size']} images"
        f"{resumed}, {training['seconds']:.1f} s of training steps, "
        f"{training['images_per_s']:.1f} images/s. Optimizer {cfg['optimizer']}, lr "
        f"{cfg['lr']:g} ({cfg['schedule']}, {cfg['warmup_steps']} warmup steps), scales' lr "
        f"x{cfg['scale_lr_factor']:g}{'' if cfg['learn_scales'] else ' (scales frozen)'}; "
        f"distillation at temperature {cfg['temperature']:g}, kd_weight "
        f"{cfg['kd_weight']:g}, label_weight {cfg['label_weight']:g}."
    )
    losses = {k: v for k, v in LOSS_TERMS.items() if any(k in r for r in history)}
    p = plots.curves(
        history, losses, "loss", "Training loss per epoch", plot_dir / "train_loss.png"
    )
    doc.img(p.relative_to(out).as_posix(), "Training loss per epoch (mean over its steps)")
    accuracy = {k: v for k, v in ACCURACY_CURVES.items() if any(k in r for r in history)}
    if accuracy:
        path = plot_dir / "train_accuracy.png"
        p = plots.curves(history, accuracy, "%", "Accuracy per epoch", path, percent=True)
        doc.img(
            p.relative_to(out).as_posix(),
            f"Accuracy per epoch of the converted (integer) model on {training['eval']}",
        )
    else:
        doc.p("No --eval images: no accuracy curve (the final accuracy is measured above).")
    keys = ["epoch", *losses, *accuracy, "lr", "images_per_s"]
    doc.table(
        [k.replace("_", " ") for k in keys],
        [[_cell(row.get(k)) for k in keys] for row in history],
    )
    doc.p(
        "Per-layer weight SQNR below compares the trained integer weights with the "
        "original FP32 weights: it includes what training changed, not only rounding."
    )


def _cell(v: Any) -> str:
    if isinstance(v, int | float) and float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return fmt(v, ".4g")
