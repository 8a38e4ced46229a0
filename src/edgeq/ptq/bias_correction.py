"""Empirical bias correction (Nagel et al., "Data-Free Quantization", 2019, sec. 4.2).

Rounding weights shifts each output channel's mean by ``E[(W - W_q) x]``. Measured on
the calibration data, with the inputs the quantized model really sees, that shift is
added back to the bias (which is then rounded to int32 like any bias). One pass, in
the fake-quantized simulation (the shift is a mean; float rounding does not move it).

On MobileNetV2 (`docs/benchmarks.md`) it raised the logits' SQNR against FP32 by
1.4 dB, on held-out photographs as on the dev images; 64 calibration images in fake
quantization gave the same correction as all 256 in the exact simulation, in 2.5 s
instead of 20 s. Hence `PTQConfig.bias_correction` is on by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import fx

from edgeq.graph.qmodules import QuantConv2d, QuantLinear, fake_quantized
from edgeq.ptq.range_search import Batch, run_batch

BIAS_CORRECTION_IMAGES = 64  # the first calibration images measure the shifts


@torch.no_grad()
def correct_biases(
    gm: fx.GraphModule,
    batches: Iterable[Batch],
    reference: fx.GraphModule | None = None,
) -> int:
    """Add the mean weight-rounding error of every quantized conv/linear to its bias.

    ``reference``: the float graph whose same-named layers hold the weights before
    rounding. Needed after learned rounding (`edgeq.ptq.rounding`), which writes the
    rounded values into the layers' own weights: measured against those, the error
    would be zero. Without it, each layer's own float weight is the reference.

    Returns the number of layers corrected.
    """
    named = {
        n: m
        for n, m in gm.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear) and m.quantized
    }
    layers = list(named.values())
    floats: dict[int, torch.Tensor] = {}
    if reference is not None:
        ref_modules = dict(reference.named_modules())
        for n, m in named.items():
            w = getattr(ref_modules.get(n), "weight", None)
            if isinstance(w, torch.Tensor) and w.shape == m.weight.shape:
                floats[id(m)] = w.detach()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def hook(m: QuantConv2d | QuantLinear, args: tuple, _out: torch.Tensor) -> None:
        x = args[0]
        w_q, _ = m.sim_weight_bias()
        dw = floats.get(id(m), m.weight.detach()) - w_q
        if isinstance(m, QuantConv2d):
            err = F.conv2d(x, dw, None, m.stride, m.padding, m.dilation, m.groups)
            per_channel = err.sum(dim=(0, 2, 3))
            n = err.shape[0] * err.shape[2] * err.shape[3]
        else:
            err = F.linear(x, dw)
            per_channel = err.reshape(-1, err.shape[-1]).sum(0)
            n = err.numel() // err.shape[-1]
        key = id(m)
        sums[key] = sums.get(key, 0) + per_channel.double()
        counts[key] = counts.get(key, 0) + n

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with fake_quantized(gm):
            for x in batches:
                run_batch(gm, x)
    finally:
        for h in handles:
            h.remove()
    for m in layers:
        if id(m) not in sums:
            continue
        shift = (sums[id(m)] / counts[id(m)]).float()
        if m.bias is None:
            m.bias = torch.nn.Parameter(shift)
        else:
            m.bias.add_(shift)
    return len(sums)
