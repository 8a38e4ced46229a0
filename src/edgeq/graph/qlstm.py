"""LSTM with dynamically quantized matrix products (edgeq's `Mode.DYNAMIC`).

Each weight matrix (input-to-hidden and hidden-to-hidden, per layer and direction) is
a `QuantLinear` in dynamic mode: int8 weights per gate row, chosen ahead; the operand
is quantized to uint8 when the product runs, from its own range. As in ONNX
Runtime's DynamicQuantizeLSTM, the input projection quantizes the whole sequence at
once and the recurrent projection quantizes the hidden state at every step; the
gates, the cell state and the nonlinearities stay float.

ONNX Runtime splits a batch across its threads for the recurrent product, each block
quantized with its own range; the simulation does the same for
`PTQConfig.runtime_threads`. What still differs: its sigmoid and tanh are MLAS
approximations and it adds the two biases in another order, so outputs agree to
about 1e-7, not to the bit (tests/ptq/test_dynamic_lstm.py).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeq.graph.qmodules import QuantLinear, register_quant_module
from edgeq.quant import QuantSpec


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def ort_row_block(batch: int, hidden: int, threads: int) -> int:
    """Rows of the batch that ONNX Runtime's LSTM steps (and quantizes) together: it
    partitions the batch over its threads when ``batch > 4`` or ``batch >= 2`` with
    ``hidden <= 256`` (UniDirectionalLstm::SetNumThreads), ceil(batch / threads) rows
    per block."""
    if batch > 4 or (batch >= 2 and hidden <= 256):
        return -(-batch // threads)
    return batch


@register_quant_module(nn.LSTM)
class QuantLSTM(nn.Module):
    """An ``nn.LSTM`` (no projection) whose matrix products are `QuantLinear` layers
    named ``l{layer}_ih``, ``l{layer}_hh`` (``..._reverse`` for the backward
    direction). Returns ``(output, (h_n, c_n))`` like ``nn.LSTM``."""

    dynamic_only = True  # static W8A8 has no integer LSTM kernel to target

    def __init__(
        self,
        lstm: nn.LSTM,
        weight_spec: QuantSpec,
        *,
        activation: str | None = None,
        limit_pairs: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        if lstm.proj_size:
            raise ValueError(f"{name}: LSTM with proj_size is not supported")
        self.layer_name = name
        self.input_size, self.hidden_size = lstm.input_size, lstm.hidden_size
        self.num_layers, self.batch_first = lstm.num_layers, lstm.batch_first
        self.directions = 2 if lstm.bidirectional else 1
        self.has_bias = lstm.bias
        self.runtime_threads = 1  # see `PTQConfig.runtime_threads`
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                for kind in ("ih", "hh"):
                    w = getattr(lstm, f"weight_{kind}_l{layer}{suffix}").detach()
                    b = getattr(lstm, f"bias_{kind}_l{layer}{suffix}", None)
                    b = b.detach() if b is not None else None
                    label = f"l{layer}_{kind}{suffix}"
                    self.add_module(
                        label,
                        QuantLinear(
                            _linear(w, b),
                            weight_spec,
                            limit_pairs=limit_pairs,
                            name=f"{name}.{label}",
                        ),
                    )

    def products(self, layer: int, reverse: bool) -> tuple[QuantLinear, QuantLinear]:
        suffix = "_reverse" if reverse else ""
        ih, hh = getattr(self, f"l{layer}_ih{suffix}"), getattr(self, f"l{layer}_hh{suffix}")
        assert isinstance(ih, QuantLinear)
        assert isinstance(hh, QuantLinear)
        return ih, hh

    def freeze_weights(self) -> None:
        for m in self.children():
            assert isinstance(m, QuantLinear)
            m.freeze_weight()

    def _direction(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, layer: int, reverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ih, hh = self.products(layer, reverse)
        steps, batch = x.shape[:2]
        if reverse:
            x = x.flip(0)
        gates_x = ih(x.reshape(steps * batch, -1)).reshape(steps, batch, -1)
        outputs = []
        rows = ort_row_block(batch, self.hidden_size, self.runtime_threads)
        for t in range(steps):
            gates_h = torch.cat([hh(h[r : r + rows]) for r in range(0, batch, rows)])
            i, f, g, o = (gates_x[t] + gates_h).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        y = torch.stack(outputs)
        return (y.flip(0) if reverse else y), h, c

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() != 3:
            raise ValueError(f"{self.layer_name}: expected a batched 3-d input, got {x.dim()}-d")
        if self.batch_first:
            x = x.transpose(0, 1)
        batch = x.shape[1]
        rows = self.num_layers * self.directions
        if state is None:
            zeros = x.new_zeros(rows, batch, self.hidden_size)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = state
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.directions):
                row = layer * self.directions + d
                y, h, c = self._direction(x, h0[row], c0[row], layer, reverse=d == 1)
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, dim=-1)
        out = x.transpose(0, 1) if self.batch_first else x
        return out, (torch.stack(h_n), torch.stack(c_n))

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bidirectional={self.directions == 2}, batch_first={self.batch_first}"
        )
