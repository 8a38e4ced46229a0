"""Export a captured (quantized or float) GraphModule to ONNX, node by node.

Why our own emitter rather than torch.onnx.export: the Q/DQ placement, int8 weight
initializers, int32 biases with scale ``s_in * s_w`` and dropped ReLUs must be exactly
what the simulation computes and what ONNX Runtime's QDQ fusion expects; emitting
from the fx graph makes that explicit and deterministic (same model, same bytes).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from edgeq.atomic import write_atomic
from edgeq.export import aten_ops, shape_ops, tensor_ops
from edgeq.export.aten_ops import arithmetic, batch_dims, is_size
from edgeq.export.dtypes import onnx_dtype
from edgeq.export.dynamic_axes import (
    BATCH,
    DynamicAxesError,
    input_axes,
    mark_dynamic_dims,
    value_shape,
)
from edgeq.export.errors import ExportError
from edgeq.export.external_data import needs_external_data, save_with_external_data
from edgeq.export.float_ops import translator_for
from edgeq.export.signature import (
    OUTPUTS_META,
    flatten_outputs,
    free_names,
    input_names,
    output_leaves,
    spec_json,
)
from edgeq.graph.insert import _is_identity_in_eval, _relu_kind, node_kind
from edgeq.graph.qlstm import QuantLSTM
from edgeq.graph.qmodules import ActivationQuantizer, QuantConv2d, QuantLinear
from edgeq.graph.states import require_converted
from edgeq.ptq.config import Mode
from edgeq.ptq.static import QuantizedModel
from edgeq.quant import Granularity, QuantSpec, pack_bits
from edgeq.quant.saturation import NO_PAD

OPSET = 17
INTEGER_DTYPES = (torch.int64, torch.int32, torch.bool)
aten_ops.register()
tensor_ops.register()
shape_ops.register()


class _Emitter:
    def __init__(self, gm: fx.GraphModule, quantized: bool) -> None:
        self.gm = gm
        self.quantized = quantized
        self.modules = dict(gm.named_modules())
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[fx.Node, str] = {}
        self.qparams: dict[fx.Node, tuple[str, str]] = {}  # node -> (scale, zp) init names
        self.min_opset = OPSET  # raised to 21 by int4 / blocked weights
        self.domains: set[str] = set()  # com.microsoft for DynamicQuantizeLSTM
        # one input keeps the name "input"; several keep the model's argument names
        self.input_names = input_names(gm)

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def add(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def qdq(self, x: str, scale: str, zp: str, base: str, pad_in: tuple[int, int] = NO_PAD) -> str:
        """QuantizeLinear -> DequantizeLinear; with ``pad_in = (before, after)`` zero
        channels, a Pad of the quantized levels between them."""
        q = self.add("QuantizeLinear", [x, scale, zp], f"{base}_q")
        if any(pad_in):
            # padded with the zero point (the level of 0.0): exact, and the pad moves
            # bytes, not floats (measured faster than a float Pad)
            before, after = pad_in
            pads = self.init(f"{base}_pads", np.array([0, before, 0, 0, 0, after, 0, 0], np.int64))
            q = self.add("Pad", [q, pads, zp], f"{base}_pad")
        return self.add("DequantizeLinear", [q, scale, zp], f"{base}_dq")

    def node(self, node: fx.Node) -> str:
        kind = node_kind(node, self.modules)
        name = node.name
        src = node.args[0] if node.args else None
        x = self.names.get(src) if isinstance(src, fx.Node) else None
        if kind == "input":
            return self.input_names[node]
        if node.op == "call_module" and isinstance(self.modules[node.target], nn.LSTM | QuantLSTM):
            return self.lstm(node, x)
        if node.target is operator.getitem and isinstance(self.names.get(src), tuple):
            return self.names[src][node.args[1]]  # (output, (h_n, c_n)) of an LSTM
        if kind == "quantizer":
            m = self.modules[node.target]
            if not self.quantized:
                return x
            scale = self.init(f"{name}_scale", m.scale.numpy().astype(np.float32))
            dtype = np.uint8 if not m.spec.signed else np.int8
            zp = self.init(f"{name}_zp", m.zero_point.numpy().astype(dtype))
            self.qparams[node] = (scale, zp)
            return self.qdq(x, scale, zp, name, self._input_channel_pad(node))
        if kind == "layer":
            return self.layer(node, x)
        if kind == "add" and not all(
            isinstance(a, fx.Node) and not is_size(a) for a in node.args[:2]
        ):
            out = arithmetic("Add", self, node)  # a constant or size operand
            if out is None:
                raise ExportError(f"node {node.name}: cannot add {node.args[:2]}")
            return out
        if kind == "add":
            y = self.names[node.args[1]]
            m = self.modules.get(node.target) if node.op == "call_module" else None
            if getattr(m, "activation", None) == "relu":
                out = self.add("Add", [x, y], name + "_add")
                if self.quantized and self._followed_by_nonnegative_quantizer(node):
                    return out  # QLinearAdd's clamp at zero point 0 is the ReLU
                return self.add("Relu", [out], name)
            return self.add("Add", [x, y], name)
        if kind == "cat":
            tensors = [self.names[t] for t in node.args[0]]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            return self.add("Concat", tensors, name, axis=dim)
        if kind == "gap":
            return self.add("GlobalAveragePool", [x], name)
        if kind == "pass":
            return self.passthrough(node, x)
        if kind == "relu":
            if _relu_kind(node, self.modules) == "relu6":
                return self.clip6(x, name)
            return self.add("Relu", [x], name)
        if kind == "output":
            return x
        if kind == "attr":  # a parameter or buffer used directly (layer scale, LN weight)
            value: object = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part, None)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return self.init(name, value.detach().float().numpy())
            if isinstance(value, torch.Tensor) and value.dtype in INTEGER_DTYPES:
                return self.init(name, value.detach().numpy())  # position ids, masks
        translate = translator_for(node, self.modules)
        if translate is not None:
            args = [*node.args, *node.kwargs.values()]
            ins = [self.names[a] for a in args if isinstance(a, fx.Node)]
            out = translate(self, node, ins)
            if out is not None:
                return out
        raise ExportError(f"node {node.name} ({_describe(node)}) has no ONNX translation")

    def _input_channel_pad(self, quantizer: fx.Node) -> tuple[int, int]:
        """Zero channels (before, after) the convs after this quantizer add to their
        input (`graph.insert` rule 5 pads all of them, or none)."""
        pads = {
            m.pad_in()
            for u in quantizer.users
            if isinstance(m := self.modules.get(str(u.target)), QuantConv2d)
        }
        if len(pads) > 1:
            raise ExportError(f"{quantizer.name}: its convs pad their input differently {pads}")
        return pads.pop() if pads else NO_PAD

    def passthrough(self, node: fx.Node, x: str) -> str:
        m = self.modules.get(node.target) if node.op == "call_module" else None
        if (
            isinstance(m, nn.Dropout | nn.Identity)
            or node.target is torch.nn.functional.dropout
            or _is_identity_in_eval(node, self.modules)
        ):
            out = x
        elif isinstance(m, nn.MaxPool2d) or node.target is torch.nn.functional.max_pool2d:
            if isinstance(m, nn.MaxPool2d):
                kernel, stride, pad, dil, ceil = (
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.dilation,
                    m.ceil_mode,
                )
            else:
                names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"]
                a = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
                kernel = a["kernel_size"]
                stride = a.get("stride") or kernel
                pad, dil, ceil = (
                    a.get("padding", 0),
                    a.get("dilation", 1),
                    a.get("ceil_mode", False),
                )
            if _pair(dil) != [1, 1]:
                raise ExportError(f"node {node.name}: dilated max pooling is not supported")
            p = _pair(pad)
            out = self.add(
                "MaxPool",
                [x],
                node.name,
                kernel_shape=_pair(kernel),
                strides=_pair(stride),
                pads=p + p,
                ceil_mode=int(bool(ceil)),
            )
        elif node.op == "call_method" and node.target in ("view", "reshape"):
            out = shape_ops.reshape(self, node, x)
        else:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 1)
            if isinstance(m, nn.Flatten):
                start = m.start_dim
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if isinstance(m, nn.Flatten):
                end = m.end_dim
            shape = _input_shape(node)
            rank = len(shape) if shape is not None else None
            if start == 1 and (end == -1 or (rank is not None and end == rank - 1)):
                out = self.add("Flatten", [x], node.name, axis=1)
            elif rank is not None and 0 < start % rank <= end % rank:
                # 0 copies a leading (batch) dimension; the trailing ones are static
                target = [0] * (start % rank) + [-1] + list(shape[end % rank + 1 :])
                to = self.init(f"{node.name}_to", np.array(target, np.int64))
                out = self.add("Reshape", [x, to], node.name)
            else:
                raise ExportError(f"node {node.name}: flatten from dim {start} is not supported")
        src = node.args[0]
        if self.quantized and src in self.qparams and out != x:
            # repeat the input's Q/DQ so the next integer op sees DQ directly
            self.qparams[node] = self.qparams[src]
            return self.qdq(out, *self.qparams[src], node.name + "_requant")
        if src in self.qparams:
            self.qparams[node] = self.qparams[src]
        return out

    def layer(self, node: fx.Node, x: str) -> str:
        """A conv or linear layer. A linear layer on an N-d input (channels last:
        ConvNeXt, transformer MLPs) runs as a 2-d Gemm between two Reshapes; each
        Reshape repeats the Q/DQ of the tensor it reshapes, so ONNX Runtime still
        sees DQ -> Gemm -> Q (QGemm) and the values are those of the simulation."""
        m = self.modules[node.target]
        src = node.args[0]
        meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
        if not isinstance(m, QuantLinear | nn.Linear) or meta is None or len(meta.shape) == 2:
            return self._layer(node, x)
        shape = list(meta.shape)
        flat = self.init(f"{node.name}_flat", np.array([-1, shape[-1]], np.int64))
        x2 = self.add("Reshape", [x, flat], f"{node.name}_in2d")
        quantized = self.quantized and isinstance(m, QuantLinear) and m.input_spec is not None
        if quantized:
            x2 = self.qdq(
                x2,
                *self._qparams(m.input_scale, m.input_zero_point, m.input_spec, f"{node.name}_in"),
                f"{node.name}_in2d",
            )
        y = self._layer(node, x2)
        if quantized and m.output_spec is not None:
            y = self.qdq(
                y,
                *self._qparams(
                    m.output_scale, m.output_zero_point, m.output_spec, f"{node.name}_out"
                ),
                f"{node.name}_out2d",
            )
        return self.add("Reshape", [y, self._unflat_shape(node, x, shape)], f"{node.name}_nd")

    def _unflat_shape(self, node: fx.Node, x: str, shape: list[int]) -> str:
        """The N-d output shape of a linear layer on an N-d input: constant but for the
        batch, or read from the input where an inner dimension is dynamic too (the
        sequence of a text encoder)."""
        out = int(self.modules[node.target].weight.shape[0])
        if not any(0 < d < len(shape) - 1 for d in batch_dims(node.args[0])):
            return self.init(f"{node.name}_unflat", np.array([-1, *shape[1:-1], out], np.int64))
        lead = self.add("Shape", [x], f"{node.name}_in_shape", start=0, end=len(shape) - 1)
        last = self.init(f"{node.name}_out_features", np.array([out], np.int64))
        return self.add("Concat", [lead, last], f"{node.name}_unflat", axis=0)

    def _qparams(
        self, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec, base: str
    ) -> tuple[str, str]:
        s = self.init(f"{base}_scale", scale.numpy().astype(np.float32))
        z = self.init(f"{base}_zp", zero_point.numpy().astype(np.int8 if spec.signed else np.uint8))
        return s, z

    def _layer(self, node: fx.Node, x: str) -> str:
        m = self.modules[node.target]
        name = node.name
        if self.quantized and isinstance(m, QuantLinear) and m.dynamic:
            return self.dynamic_linear(node, m, x)
        if self.quantized and isinstance(m, QuantConv2d | QuantLinear) and m.weight_only:
            inputs = [x, self.weight_only_weight(m, name)]
            if m.bias is not None:
                inputs.append(self.init(f"{name}_b", m.bias.detach().numpy().astype(np.float32)))
        elif self.quantized and isinstance(m, QuantConv2d | QuantLinear):
            w_levels = m.weight_levels().numpy().astype(np.int8)
            if isinstance(m, QuantConv2d) and any(m.pad_in()):  # zero weights there
                w_levels = np.pad(w_levels, [(0, 0), m.pad_in(), (0, 0), (0, 0)])
            axis_scale = self.init(f"{name}_w_scale", m.weight_scale.numpy().astype(np.float32))
            w_q = self.init(f"{name}_w_q", w_levels)
            w_inputs = [w_q, axis_scale]
            if isinstance(m, QuantLinear):  # ORT's QGemm fusion wants the weight's zero point
                w_inputs.append(self.init(f"{name}_w_zp", np.zeros(w_levels.shape[0], np.int8)))
            # otherwise the optional zero points (all 0) are left out: smaller files
            w = self.add("DequantizeLinear", w_inputs, f"{name}_w", axis=0)
            inputs = [x, w]
            b_levels = m.bias_levels()
            if b_levels is not None:
                b_scale = (m.input_scale * m.weight_scale).numpy().astype(np.float32)
                bq = self.init(f"{name}_b_q", b_levels.numpy().astype(np.int32))
                bs = self.init(f"{name}_b_scale", b_scale)
                inputs.append(self.add("DequantizeLinear", [bq, bs], f"{name}_b", axis=0))
        else:
            inputs = [x, self.init(f"{name}_w", m.weight.detach().numpy().astype(np.float32))]
            if m.bias is not None:
                inputs.append(self.init(f"{name}_b", m.bias.detach().numpy().astype(np.float32)))
        activation = getattr(m, "activation", None)
        if isinstance(m, QuantConv2d | nn.Conv2d):
            k = list(m.weight.shape[2:])
            p = _pair(m.padding)
            y = self.add(
                "Conv",
                inputs,
                name + ("_conv" if activation else ""),
                kernel_shape=k,
                strides=_pair(m.stride),
                pads=p + p,
                dilations=_pair(m.dilation),
                group=m.groups,
            )
        else:
            assert isinstance(m, QuantLinear | nn.Linear)
            y = self.add("Gemm", inputs, name + ("_gemm" if activation else ""), transB=1)
        if activation is None:
            return y
        users = list(node.users)
        followed_by_quantizer = self.quantized and all(
            u.op == "call_module"
            and isinstance(self.modules[u.target], ActivationQuantizer)
            and self.modules[u.target].nonnegative
            for u in users
        )
        if followed_by_quantizer and m.activation == "relu":
            return y  # the quantizer's clamp at zero point 0 is the ReLU
        if (
            followed_by_quantizer
            and m.activation == "relu6"
            and all(
                float(self.modules[u.target].scale)
                * (self.modules[u.target].spec.qmax - int(self.modules[u.target].zero_point))
                <= 6.0
                for u in users
            )
        ):
            return y  # quantized range lies inside [0, 6]: the Clip is the quantizer's clamp
        if m.activation == "relu":
            return self.add("Relu", [y], name)
        return self.clip6(y, name)

    def _followed_by_nonnegative_quantizer(self, node: fx.Node) -> bool:
        return bool(node.users) and all(
            u.op == "call_module"
            and isinstance(self.modules[u.target], ActivationQuantizer)
            and self.modules[u.target].nonnegative
            for u in node.users
        )

    def dynamic_linear(self, node: fx.Node, m: QuantLinear, x: str) -> str:
        """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add (-> Relu)."""
        name = node.name
        w_t = m.weight_levels().numpy().astype(np.int8).T.copy()  # [in, out] for MatMul
        w_q = self.init(f"{name}_w_q", w_t)
        w_zp = self.init(f"{name}_w_zp", np.zeros(w_t.shape[1], np.int8))
        xq, xs, xz = (f"{name}_xq", f"{name}_xs", f"{name}_xz")
        self.nodes.append(
            helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=f"{name}_dq")
        )
        acc = self.add("MatMulInteger", [xq, w_q, xz, w_zp], f"{name}_acc")
        acc_f = self.add("Cast", [acc], f"{name}_accf", to=TensorProto.FLOAT)
        ws = self.init(f"{name}_w_scale", m.weight_scale.numpy().astype(np.float32))
        scale = self.add("Mul", [xs, ws], f"{name}_scale")
        y = self.add("Mul", [acc_f, scale], f"{name}_y")
        if m.bias is not None:
            b = self.init(f"{name}_b", m.bias.detach().numpy().astype(np.float32))
            y = self.add("Add", [y, b], f"{name}_yb")
        if m.activation == "relu":
            return self.add("Relu", [y], name)
        if m.activation == "relu6":
            return self.clip6(y, name)
        return self.add("Identity", [y], name)

    def weight_only_weight(self, m: QuantConv2d | QuantLinear, name: str) -> str:
        """DequantizeLinear of int8 or packed int4 weights, per channel (axis 0) or per
        group of input channels (axis 1, ``block_size``): opset 21."""
        spec = m.weight_spec
        levels = m.weight_levels()
        if spec.bits == 8:
            self.inits.append(
                numpy_helper.from_array(levels.numpy().astype(np.int8), f"{name}_w_q")
            )
        elif spec.bits == 4:
            packed = pack_bits(levels.flatten(), 4, signed=True).numpy().tobytes()
            self.inits.append(
                helper.make_tensor(
                    f"{name}_w_q", TensorProto.INT4, list(levels.shape), packed, raw=True
                )
            )
        else:
            raise ExportError(
                f"{m.layer_name}: weight-only ONNX export takes 4 or 8 bits, not {spec.bits}"
            )
        self.min_opset = 21
        scale = self.init(f"{name}_w_scale", m.weight_scale.numpy().astype(np.float32))
        attrs: dict[str, int] = {"axis": 0}
        if spec.granularity is Granularity.PER_GROUP:
            assert spec.group_size is not None
            attrs = {"axis": 1, "block_size": spec.group_size}
        return self.add("DequantizeLinear", [f"{name}_w_q", scale], f"{name}_w", **attrs)

    def lstm(self, node: fx.Node, x: str) -> tuple[str, tuple[str, str]]:
        """One ONNX LSTM per layer (com.microsoft DynamicQuantizeLSTM when quantized);
        returns the names of ``(output, (h_n, c_n))`` laid out as PyTorch's."""
        m = self.modules[node.target]
        name = node.name
        quantized = self.quantized and isinstance(m, QuantLSTM) and m.l0_ih.quantized
        directions = (
            2 if (m.directions == 2 if isinstance(m, QuantLSTM) else m.bidirectional) else 1
        )
        state = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
        if x is not None and m.batch_first:
            x = self.add("Transpose", [x], f"{name}_tm", perm=[1, 0, 2])
        h_parts, c_parts = [], []
        for layer in range(m.num_layers):
            base = f"{name}_l{layer}"
            inputs = [x, *self._lstm_weights(m, layer, directions, quantized, base)]
            inputs += ["", "", "", ""]  # sequence_lens, initial_h, initial_c, peepholes
            if state is not None:
                rows = (
                    self.init(f"{base}_rows0", np.array([layer * directions], np.int64)),
                    self.init(f"{base}_rows1", np.array([(layer + 1) * directions], np.int64)),
                )
                for k, src in ((5, state[0]), (6, state[1])):
                    inputs[k] = self.add(
                        "Slice", [self.names[src], *rows], f"{base}_{'hc'[k - 5]}0"
                    )
            if quantized:
                inputs = inputs[:8] + self._lstm_scales(m, layer, directions, base)
            outs = [f"{base}_y", f"{base}_h", f"{base}_c"]
            self.nodes.append(
                helper.make_node(
                    "DynamicQuantizeLSTM" if quantized else "LSTM",
                    inputs,
                    outs,
                    name=base,
                    hidden_size=m.hidden_size,
                    direction="bidirectional" if directions == 2 else "forward",
                    **({"domain": "com.microsoft"} if quantized else {}),
                )
            )
            if quantized:
                self.domains.add("com.microsoft")
            y = self.add("Transpose", [outs[0]], f"{base}_ybt", perm=[0, 2, 1, 3])
            shape = self.init(f"{base}_yshape", np.array([0, 0, -1], np.int64))
            x = self.add("Reshape", [y, shape], f"{base}_out")
            h_parts.append(outs[1])
            c_parts.append(outs[2])
        out = self.add("Transpose", [x], f"{name}_out", perm=[1, 0, 2]) if m.batch_first else x
        h_n = self.add("Concat", h_parts, f"{name}_h_n", axis=0)
        c_n = self.add("Concat", c_parts, f"{name}_c_n", axis=0)
        return out, (h_n, c_n)

    @staticmethod
    def _iofc(rows: torch.Tensor) -> torch.Tensor:
        """PyTorch's gate order (i, f, g, o) along dim 0 to ONNX's (i, o, f, c)."""
        i, f, g, o = rows.chunk(4, dim=0)
        return torch.cat([i, o, f, g])

    def _lstm_weights(
        self, m: nn.Module, layer: int, directions: int, quantized: bool, base: str
    ) -> list[str]:
        ws: dict[str, list[np.ndarray]] = {"W": [], "R": [], "B": []}
        for d in range(directions):
            suffix = "_reverse" if d else ""
            if isinstance(m, QuantLSTM):
                ih, hh = m.products(layer, reverse=d == 1)
                pairs = [(ih, "W"), (hh, "R")]
                biases = [ih.bias, hh.bias]
            else:
                pairs = [
                    (getattr(m, f"weight_ih_l{layer}{suffix}"), "W"),
                    (getattr(m, f"weight_hh_l{layer}{suffix}"), "R"),
                ]
                biases = [getattr(m, f"bias_{k}_l{layer}{suffix}", None) for k in ("ih", "hh")]
            for source, key in pairs:
                if quantized:  # int8 levels, transposed to [input, 4 * hidden]
                    levels = self._iofc(source.weight_levels()).to(torch.int8)
                    ws[key].append(levels.T.contiguous().numpy())
                else:
                    w = source.weight if isinstance(source, QuantLinear) else source
                    ws[key].append(self._iofc(w.detach()).float().numpy())
            hidden4 = ws["W"][-1].shape[-1 if quantized else 0]
            b = [
                self._iofc(t.detach()).float() if t is not None else torch.zeros(hidden4)
                for t in biases
            ]
            ws["B"].append(torch.cat(b).numpy())
        return [self.init(f"{base}_{k}", np.stack(v)) for k, v in ws.items()]

    def _lstm_scales(self, m: QuantLSTM, layer: int, directions: int, base: str) -> list[str]:
        names = []
        for k, which in (("W", 0), ("R", 1)):
            scales = [
                self._iofc(m.products(layer, d == 1)[which].weight_scale).numpy()
                for d in range(directions)
            ]
            s = np.stack(scales).astype(np.float32)
            names.append(self.init(f"{base}_{k}_scale", s))
            names.append(self.init(f"{base}_{k}_zp", np.zeros(s.shape, np.int8)))
        return names

    def clip6(self, x: str, name: str) -> str:
        lo = self.init(f"{name}_clip_lo", np.array(0.0, np.float32))
        hi = self.init(f"{name}_clip_hi", np.array(6.0, np.float32))
        return self.add("Clip", [x, lo, hi], name)


_LIBRARY_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).resolve().parents[1]))


def _describe(node: fx.Node) -> str:
    """The node's op and target, and the model's source line where the capture kept
    one (torch.export does; `edgeq.graph.capture` records them under torch.fx): the
    innermost frame outside torch and edgeq, and its line of code."""
    target = getattr(node.target, "__name__", None) or str(node.target)
    trace = [line.strip() for line in (node.meta.get("stack_trace") or "").splitlines()]
    for i in reversed(range(len(trace))):
        match = re.match(r'File "([^"]+)", line (\d+)', trace[i])
        if match and not str(Path(match[1]).resolve()).startswith(_LIBRARY_DIRS):
            code = trace[i + 1] if i + 1 < len(trace) else ""
            return f"{node.op} {target} at {match[1]}:{match[2]}: {code}"
    return f"{node.op} {target}"


def _input_shape(node: fx.Node) -> list[int] | None:
    src = node.args[0]
    meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
    return list(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def _store_float16(model: onnx.ModelProto) -> None:
    """Float32 initializers become float16 (exact: their values were rounded to
    float16 when quantizing) followed by a Cast back to float32."""
    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 16:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            raise ExportError(f"initializer {init.name} is not float16-representable")
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}_fp16"))
        casts.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + nodes)


def build_onnx(
    gm: fx.GraphModule,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    quantized: bool,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> onnx.ModelProto:
    examples = example_input if isinstance(example_input, tuple) else (example_input,)
    em = _Emitter(gm, quantized)
    if len(em.input_names) != len(examples):
        raise ExportError(
            f"the model takes {len(em.input_names)} inputs; example_input gives {len(examples)}"
        )
    names = list(em.input_names.values())
    spec, leaves = output_leaves(gm)  # None and constants: refused before any run
    # input shapes of every node (fixed-size pooling needs them), and which of their
    # dimensions follow an input's dynamic size (those stay dynamic in the ONNX model)
    try:
        axes = input_axes(list(em.input_names), names, examples, dynamic_axes)
        mark_dynamic_dims(gm, examples, names, axes)
    except DynamicAxesError as e:
        raise ExportError(str(e)) from e
    except Exception as e:
        raise ExportError(f"cannot run the model on the example input: {e}") from e
    for node in gm.graph.nodes:
        try:
            em.names[node] = em.node(node)
        except ExportError:
            raise
        except Exception as e:  # a translator meeting arguments it does not expect
            raise ExportError(
                f"node {node.name} ({_describe(node)}): {type(e).__name__}: {e}"
            ) from e
    inputs = [
        helper.make_tensor_value_info(
            name, onnx_dtype(x.dtype), value_shape(list(x.shape), axes[name])
        )
        for name, x in zip(names, examples, strict=True)
    ]
    with torch.no_grad():
        values = flatten_outputs(spec, gm(*examples))
    renamed = free_names(
        em.nodes, em.inits, {leaf.name for leaf in leaves}, inputs=em.input_names.values()
    )
    outputs = []
    for leaf, value in zip(leaves, values, strict=True):
        src = em.names[leaf.node]
        if not isinstance(value, torch.Tensor) or not isinstance(src, str):
            raise ExportError(
                f"{leaf.label} is {type(value).__name__}, not a tensor (node "
                f"{leaf.node.name}); the ONNX export writes tensors only: return the "
                "tensors it holds"
            )
        # an Identity per output: an input returned as is, a buffer, or one tensor
        # returned twice each gets a value of its own name
        em.add("Identity", [renamed.get(src, src)], leaf.name)
        dims = leaf.node.meta.get("dynamic_dims", {0: BATCH})
        outputs.append(
            helper.make_tensor_value_info(
                leaf.name, onnx_dtype(value.dtype), value_shape(list(value.shape), dims)
            )
        )
    graph = helper.make_graph(em.nodes, "edgeq", inputs, outputs, initializer=em.inits)
    opsets = [helper.make_opsetid("", em.min_opset)]
    opsets += [helper.make_opsetid(domain, 1) for domain in sorted(em.domains)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgeq")
    model.ir_version = 8 if em.min_opset <= 17 else 10
    if not isinstance(spec, str):  # rebuilt by `signature.unflatten_outputs`
        model.metadata_props.append(
            onnx.StringStringEntryProto(key=OUTPUTS_META, value=spec_json(spec))
        )
    if not needs_external_data(model):  # larger models are checked from their files
        onnx.checker.check_model(model)
    return model


def export_onnx(
    model: fx.GraphModule | QuantizedModel,
    path: str | Path,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    quantized: bool = True,
    metadata: dict[str, str] | None = None,
    external_data: bool | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Write a quantized model (or a captured GraphModule) as ONNX, atomically.

    ``quantized=False`` writes the float graph without Q/DQ (with a `QuantizedModel`,
    its ``float_module``: the FP32 baseline with BatchNorm folded).
    ``external_data``: keep the weights in a file beside the model
    (``NAME.onnx.<digest>.data``, which ONNX Runtime reads on its own); None (the
    default) does so only when the model would pass protobuf's 2 GB limit (FP32
    ViT-H/14, RegNetY-128GF). `onnx_bytes` counts both files.
    ``dynamic_axes``: the input dimensions that stay dynamic, by input name, in
    torch.onnx's format (``{"input_ids": {0: "batch", 1: "sequence"}}``); None: those
    the capture recorded (``capture="export"``), else dimension 0 of every input
    (``"batch"``). Inputs keep their dtype (int64 token ids stay int64).

    Outputs: one tensor is ``"output"``; a tuple, list or dict of tensors (nested too)
    becomes one ONNX output per tensor, named ``output_0``, ``output_1``, ... or by the
    dict's keys, with dimension 0 dynamic wherever it follows the batch
    (`edgeq.export.signature`; `unflatten_outputs` rebuilds the structure from ONNX
    Runtime's list).

    Raises:
        ExportError: a node has no ONNX translation (names it and its source line),
            the model does not run with a dynamic axis grown, or an output is not a
            tensor (None, a number: names the output).
        StateError: the model is in the training state (`edgeq.convert` it first).
    """
    float16 = False
    if isinstance(model, QuantizedModel) and model.config.mode is Mode.FLOAT16:
        float16, quantized = quantized, False
        model = model.module if float16 else model.float_module  # type: ignore[assignment]
        if model is None:
            raise ExportError("this model was loaded from an artifact: it has no float graph")
    if isinstance(model, QuantizedModel):
        gm = model.module if quantized else model.float_module
        if gm is None:
            raise ExportError("this model was loaded from an artifact: it has no float graph")
    else:
        gm = model
    if quantized:
        require_converted(gm, "ONNX export")  # training fake-quantizes: not what deploys
    onnx_model = build_onnx(gm, example_input, quantized=quantized, dynamic_axes=dynamic_axes)
    if float16:
        _store_float16(onnx_model)
    for k, v in (metadata or {}).items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    if external_data or (external_data is None and needs_external_data(onnx_model)):
        return save_with_external_data(onnx_model, Path(path))
    return write_atomic(path, lambda tmp: onnx.save(onnx_model, tmp))
