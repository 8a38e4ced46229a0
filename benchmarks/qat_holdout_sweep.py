"""Choose QAT settings for MobileNetV2 W4A8 on a hold-out of the training-side images.

    .venv/bin/python benchmarks/qat_holdout_sweep.py ../shared/data/imagenet-sample-1k \
        [--epochs 3] [--lr 2e-5] [--scale-lr 0.01] [--feature-weight 10] [--augment]

Trains on the first 800 images of the folder (the first 256 also calibrate the PTQ
start) and scores the converted model after every epoch on the other 200: the KL
divergence of its softmax from the FP32 model's (lower is closer; a far less noisy
figure than top-1 on a few hundred images) and its top-1 agreement with FP32. The
evaluation set (imagenet-val-dev) is not read: settings are chosen here, then
measured once by `qat_mobilenet_v2.py`. Prints one line per epoch and, with
``--out F``, appends the run as a JSON line to F.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import edgeq
from edgeq.data import load_labeled_images
from edgeq.graph.states import to_training
from edgeq.models import mobilenet_v2_weights_path
from edgeq.train.engine import TrainData, fit

sys.path.insert(0, str(Path(__file__).parent))
from qat_mobilenet_v2 import CALIB, _configs, _logits, add_training_arguments, distill_training

TRAIN, HOLDOUT = 800, 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("train", type=Path)
    add_training_arguments(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    model = edgeq.load_model("torchvision:mobilenet_v2", weights=mobilenet_v2_weights_path())
    x, y = load_labeled_images(args.train).tensors()
    if len(x) < TRAIN + HOLDOUT:
        raise SystemExit(f"{args.train}: {len(x)} images, need {TRAIN + HOLDOUT}")
    xt, yt = x[:TRAIN], torch.as_tensor(y[:TRAIN])
    xh = x[TRAIN : TRAIN + HOLDOUT]
    ref = _logits(model, xh)
    qm = edgeq.prepare_qat(model, [xt[i : i + 32] for i in range(0, CALIB, 32)], _configs(4))

    def score() -> dict[str, float]:
        logits = _logits(qm.module, xh)
        kl = F.kl_div(
            logits.log_softmax(1), ref.log_softmax(1), log_target=True, reduction="batchmean"
        )
        agree = (logits.argmax(1) == ref.argmax(1)).float().mean()
        return {"holdout_kl": float(kl), "holdout_agreement": float(agree)}

    def evaluate() -> dict[str, float]:  # the engine calls it in eval mode
        edgeq.convert(qm)
        s = score()
        to_training(qm.module, learn_zero_points=args.zero_point_lr > 0)
        print(f"[{time.perf_counter() - t0:6.0f} s] {s}", flush=True)
        return s

    edgeq.convert(qm)
    qm.module.eval()
    start = score()
    print(f"PTQ start: {start}", flush=True)
    to_training(qm.module, learn_zero_points=args.zero_point_lr > 0)
    objective, cfg, groups = distill_training(model, qm, xt[:2], args)
    result = fit(
        objective,
        TrainData(xt, yt),
        cfg,
        run_dir=Path(tempfile.mkdtemp(prefix="qat-sweep-")),
        evaluate=evaluate,
        parameters=groups,
        progress=False,
        log=lambda _line: None,
    )
    if args.out:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "start": start}
        record["history"] = result.history
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
