"""Fold BatchNorm into the convolution or linear layer before it."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn


def fold_bn_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | nn.BatchNorm1d
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``.

    Pure: returns new tensors (float64 math, float32 result).
    """
    assert bn.running_mean is not None
    assert bn.running_var is not None
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    factor = gamma / torch.sqrt(var + bn.eps)
    b = bias.double() if bias is not None else torch.zeros_like(var)
    shape = [-1] + [1] * (weight.ndim - 1)
    new_w = weight.double() * factor.reshape(shape)
    new_b = (b - bn.running_mean.double()) * factor + beta
    return new_w.float(), new_b.float()


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BatchNorm that directly follows a Conv2d/Linear used only by it.

    Returns a new GraphModule; the input is not modified.
    """
    gm = copy.deepcopy(gm)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(
            modules[node.target], nn.BatchNorm1d | nn.BatchNorm2d
        ):
            continue
        prev = node.args[0]
        if not (
            isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and isinstance(modules[prev.target], nn.Conv2d | nn.Linear)
            and len(prev.users) == 1
        ):
            continue
        layer = modules[prev.target]
        w, b = fold_bn_weights(layer.weight.detach(), layer.bias, modules[node.target])
        layer.weight = nn.Parameter(w)
        layer.bias = nn.Parameter(b)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
