"""QAT with distillation of the real pretrained MobileNetV2: W4A8 and W8A8 against PTQ.

    .venv/bin/python benchmarks/qat_mobilenet_v2.py ../shared/data/imagenet-sample-1k \
        ../shared/data/imagenet-val-dev [--epochs 3] [--feature-weight 10] \
        [--out benchmarks/results]

Trains on the 1000 training-side images (the first 256 also calibrate the PTQ start),
evaluates on imagenet-val-dev only. The FP32 model teaches: temperature KL on the
logits, with ``--feature-weight`` also the MSE of every inverted-residual block's
output, with ``--ce`` cross-entropy with the labels. First and last layer stay 8-bit
in W4A8 (depthwise layers too: ``min_depthwise_bits`` 8). The defaults were chosen on
a hold-out of 200 of the training-side images (trained on the other 800), never on
imagenet-val-dev. Every top-1
here is the converted integer simulation's, which equals ONNX Runtime's QDQ model
(checked at the end on the W4A8 model). Also measures the images/s of a QAT training
step next to a plain FP32 training step, in the same run. Writes qat_mobilenet_v2.json
and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgeq
from edgeq.data import load_labeled_images
from edgeq.graph.qmodules import _WeightQuantMixin
from edgeq.graph.states import to_training
from edgeq.models import mobilenet_v2_weights_path
from edgeq.ptq.config import LayerOverride
from edgeq.runtime import machine_info, ort_session
from edgeq.train.distill import DistillationObjective, DistillConfig
from edgeq.train.engine import TrainConfig, TrainData, fit
from edgeq.train.qat import parameter_groups

CALIB = 256
EDGE_LAYERS = (LayerOverride("features.0.0", bits=8), LayerOverride("classifier.1", bits=8))


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 50]) for i in range(0, len(x), 50)])


def _score(logits: torch.Tensor, y: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    pred = logits.argmax(1)
    return {
        "top1": float((pred == y).float().mean()),
        "agreement": float((pred == ref.argmax(1)).float().mean()),
    }


def _configs(bits: int) -> edgeq.PTQConfig:
    # nearest rounding, as issue 12's figures were measured (the default below 8 bits is
    # now GPTQ, issue 13; QAT from a GPTQ start is not measured yet)
    base = edgeq.PTQConfig(rounding="nearest")
    if bits == 8:
        return base
    import dataclasses

    return dataclasses.replace(
        base, weight=dataclasses.replace(base.weight, bits=bits), overrides=EDGE_LAYERS
    )


def _images_per_s(module: nn.Module, x: torch.Tensor, steps: int = 3) -> float:
    """A training step (forward, backward, SGD step) on a batch of 32, timed."""
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-9)
    module.train()
    loss = module(x[:32]).logsumexp(1).mean()  # warm-up
    loss.backward()
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        module(x[:32]).logsumexp(1).mean().backward()
        opt.step()
    return 32 * steps / (time.perf_counter() - t)


def block_features() -> tuple[tuple[str, str], ...]:
    """(student, teacher) module pairs at every inverted-residual block's output before
    the residual add (the student's projection conv has the BatchNorm folded in; the
    teacher's BatchNorm follows its conv) and at the last 1x1 conv."""
    pairs = [("features.1.conv.1", "features.1.conv.2")]
    pairs += [(f"features.{i}.conv.2", f"features.{i}.conv.3") for i in range(2, 18)]
    pairs.append(("features.18.0", "features.18"))
    return tuple(pairs)


def distill_training(
    model: nn.Module,
    qm: edgeq.QuantizedModel,
    example: torch.Tensor,
    args: argparse.Namespace,
    *,
    label_weight: float = 0.0,
) -> tuple[DistillationObjective, TrainConfig, list[dict]]:
    """The FP32 model teaching the prepared ``qm`` (logits, and the block features with
    ``args.feature_weight`` > 0), the engine's settings from ``args`` and the optimizer
    groups (scales at ``args.scale_lr`` times the lr): what every QAT run here trains."""
    features = block_features() if args.feature_weight > 0 else ()
    distill = DistillConfig(
        temperature=args.temperature,
        label_weight=label_weight,
        feature_weight=args.feature_weight,
        features=features,
    )
    teacher = copy.deepcopy(model).eval()
    objective = DistillationObjective(qm.module, teacher, distill, example=example)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        weight_decay=0.0,
        grad_clip=1.0,
        seed=0,
        warmup_steps=10,
        augment=args.augment,
    )
    zp_lr = args.zero_point_lr or None
    groups = parameter_groups(
        objective, weight_decay=0.0, scale_lr=args.lr * args.scale_lr, zero_point_lr=zp_lr
    )
    if args.weight_lr_levels > 0:
        groups = _lr_in_levels(groups, qm.module, args.weight_lr_levels)
    return objective, cfg, groups


def _lr_in_levels(groups: list[dict], module: nn.Module, levels: float) -> list[dict]:
    """Each quantized layer's weights in a group of their own whose learning rate is
    ``levels`` times the layer's mean weight scale: Adam moves a weight by about its
    learning rate per step, so every layer moves by about ``levels`` quantization steps
    per step, whatever its bits (4-bit steps are ~16x the 8-bit ones)."""
    layers = [m for m in module.modules() if isinstance(m, _WeightQuantMixin) and m.quantized]
    own = {id(m.weight) for m in layers}
    out = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in own]
        if rest:
            out.append({**g, "params": rest})
    decay = next(g for g in groups if any(id(p) in own for p in g["params"]))
    for m in layers:
        lr = levels * float(m.weight_scale.detach().mean())
        out.append({**decay, "params": [m.weight], "lr": lr})
    return out


def _qat(model, xt, yt, xv, yv, ref, bits, args, log) -> dict:
    calib = [xt[i : i + 32] for i in range(0, CALIB, 32)]
    t0 = time.perf_counter()
    learn_zp = args.zero_point_lr > 0
    qm = edgeq.prepare_qat(model, calib, _configs(bits), learn_zero_points=learn_zp)
    objective, cfg, groups = distill_training(model, qm, xt[:2], args, label_weight=args.ce)
    curve = []

    def evaluate() -> dict[str, float]:
        edgeq.convert(qm)
        s = _score(_logits(qm.module, xv), yv, ref)
        to_training(qm.module, learn_zero_points=learn_zp)
        curve.append(s)
        log(f"  W{bits}A8 epoch {len(curve)}: top1 {s['top1']:.4f} agreement {s['agreement']:.4f}")
        return s

    run_dir = Path(tempfile.mkdtemp(prefix=f"qat-w{bits}-"))
    result = fit(
        objective,
        TrainData(xt, yt),
        cfg,
        run_dir=run_dir,
        evaluate=evaluate,
        parameters=groups,
        progress=False,
        log=log,
    )
    edgeq.convert(qm)
    qm.module.eval()  # dropout off: the deployed model
    final = _score(_logits(qm.module, xv), yv, ref)
    return {
        "bits": bits,
        "config": cfg.to_dict(),
        "distill": objective.config.to_dict(),
        "history": result.history,
        "final": final,
        "seconds": time.perf_counter() - t0,
        "qmodel": qm,
    }


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The QAT settings `distill_training` reads (shared with qat_holdout_sweep.py)."""
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--scale-lr", type=float, default=0.01, help="scales' lr / lr")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--feature-weight",
        type=float,
        default=0.0,
        help="weight of the block-output feature MSE (0: logits only)",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="random resized crops and flips (off: on 1000 images they did not help)",
    )
    parser.add_argument(
        "--weight-lr-levels",
        type=float,
        default=0.0,
        help="per-layer weight lr = this x the layer's mean weight scale (0: --lr for all)",
    )
    parser.add_argument(
        "--zero-point-lr", type=float, default=0.0, help="LSQ+ zero points' lr (0: fixed)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("train", type=Path)
    parser.add_argument("eval", type=Path)
    add_training_arguments(parser)
    parser.add_argument("--ce", type=float, default=0.0, help="weight of the label CE")
    parser.add_argument("--bits", default="4,8")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    model = edgeq.load_model("torchvision:mobilenet_v2", weights=mobilenet_v2_weights_path())
    xt, yt = load_labeled_images(args.train).tensors()
    xv, yv = load_labeled_images(args.eval).tensors()
    yt, yv = torch.as_tensor(yt), torch.as_tensor(yv)
    ref = _logits(model, xv)
    results: dict = {"machine": machine_info(), "fp32": _score(ref, yv, ref), "args": vars(args)}
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    log(f"FP32 top1 {results['fp32']['top1']:.4f}")
    calib = [xt[i : i + 32] for i in range(0, CALIB, 32)]
    ptq: dict = {}
    for name, cfg in {
        "w8a8": _configs(8),
        "w4a8": _configs(4),
        "w4_weight_only": edgeq.PTQConfig(
            mode="weight_only",
            rounding="nearest",
            weight=edgeq.PTQConfig().weight.__class__(bits=4, granularity="per_channel", axis=0),
        ),
    }.items():
        qm = edgeq.quantize(model, calib, cfg)
        ptq[name] = _score(_logits(qm.module, xv), yv, ref)
        log(f"PTQ {name}: {ptq[name]}")
    results["ptq"] = ptq

    # cost: a QAT step against a plain FP32 step, same batch, same run
    fp32_train = copy.deepcopy(model)
    qm_cost = edgeq.prepare_qat(model, calib[:2], _configs(4))
    results["images_per_s"] = {
        "fp32_train_step": _images_per_s(fp32_train, xt),
        "qat_train_step": _images_per_s(qm_cost.module, xt),
    }
    log(f"train step images/s: {results['images_per_s']}")

    results["qat"] = {}
    for bits in [int(b) for b in args.bits.split(",")]:
        r = _qat(model, xt, yt, xv, yv, ref, bits, args, log)
        qm = r.pop("qmodel")
        if bits == 4:
            with tempfile.TemporaryDirectory() as tmp:
                path = edgeq.export_onnx(qm, Path(tmp) / "q.onnx", xv[:1])
                sess = ort_session(path)
                name = sess.get_inputs()[0].name
                ort = np.concatenate(
                    [
                        sess.run(None, {name: xv[i : i + 50].numpy()})[0]
                        for i in range(0, len(xv), 50)
                    ]
                )
                sim = _logits(qm.module, xv).numpy()
                r["ort_vs_simulation"] = {
                    "max_abs_logit_diff": float(np.abs(ort - sim).max()),
                    "top1_agreement": float((ort.argmax(1) == sim.argmax(1)).mean()),
                }
        log(f"QAT W{bits}A8: {r['final']} in {r['seconds']:.0f} s")
        results["qat"][f"w{bits}a8"] = r
    results["seconds"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qat_mobilenet_v2.json").write_text(json.dumps(results, indent=2) + "\n")
    _render(results, args.out)


def _render(r: dict, out: Path) -> None:
    fp = r["fp32"]["top1"]
    rows = [("FP32", r["fp32"], None)]
    rows += [(f"PTQ {k}", v, None) for k, v in r["ptq"].items()]
    rows += [(f"QAT {k} (distilled)", v["final"], v["seconds"]) for k, v in r["qat"].items()]
    lines = [
        "# QAT of MobileNetV2 (real weights), imagenet-val-dev (298 images)",
        "",
        f"Machine: {r['machine'].get('cpu', r['machine'])}; whole run {r['seconds']:.0f} s.",
        "",
        "| model | top-1 | drop vs FP32 (pt) | agreement with FP32 | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, s, sec in rows:
        drop = 100 * (fp - s["top1"])
        secs = f"{sec:.0f}" if sec else ""
        lines.append(f"| {name} | {s['top1']:.4f} | {drop:+.2f} | {s['agreement']:.4f} | {secs} |")
    for k, v in r["qat"].items():
        lines.append("")
        lines.append(
            f"QAT {k} per epoch (imagenet-val-dev): "
            + ", ".join(
                f"{i + 1}: top-1 {h['top1']:.4f} / agreement {h['agreement']:.4f}"
                for i, h in enumerate(v["history"])
            )
        )
    ips = r["images_per_s"]
    lines += [
        "",
        f"Training step (batch 32): FP32 {ips['fp32_train_step']:.1f} images/s, QAT "
        f"{ips['qat_train_step']:.1f} images/s "
        f"({ips['fp32_train_step'] / ips['qat_train_step']:.2f}x slower).",
    ]
    w4 = r["qat"].get("w4a8", {})
    if "ort_vs_simulation" in w4:
        o = w4["ort_vs_simulation"]
        lines.append(
            f"W4A8 QAT in ONNX Runtime vs the simulation: max |logit diff| "
            f"{o['max_abs_logit_diff']:.3g}, top-1 agreement {o['top1_agreement']:.4f}."
        )
    (out / "qat_mobilenet_v2.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
