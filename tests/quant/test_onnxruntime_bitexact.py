"""Our quantize/dequantize against ONNX Runtime's QuantizeLinear/DequantizeLinear, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.quant import QuantSpec, choose_qparams, dequantize, estimate_range, quantize

ONNX_TYPE = {
    (8, True): TensorProto.INT8,
    (8, False): TensorProto.UINT8,
    (4, True): TensorProto.INT4,
    (4, False): TensorProto.UINT4,
    (16, True): TensorProto.INT16,
    (16, False): TensorProto.UINT16,
}
NP_TYPE = {(8, True): np.int8, (8, False): np.uint8, (16, True): np.int16, (16, False): np.uint16}


def _run_qdq(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, spec: QuantSpec, axis: int | None):
    """Run QuantizeLinear (-> q, when numpy can hold it) and Q->DQ (-> x_hat) in ORT."""
    qtype = ONNX_TYPE[(spec.bits, spec.signed)]
    attrs = {}
    if axis is not None:
        attrs["axis"] = axis
    if spec.group_size is not None:
        attrs["block_size"] = spec.group_size
    zp_tensor = helper.make_tensor("zp", qtype, zp.shape, zp.flatten().tolist())
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["x_hat"], **attrs),
    ]
    outputs = [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, x.shape)]
    if (spec.bits, spec.signed) in NP_TYPE:
        outputs.insert(0, helper.make_tensor_value_info("q", qtype, x.shape))
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        outputs,
        initializer=[numpy_helper.from_array(scale.astype(np.float32), "scale"), zp_tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        out = sess.run(None, {"x": x})
    except Exception as e:  # an ORT build without this type or block support
        pytest.skip(f"installed onnxruntime {ort.__version__} cannot run this case: {e}")
    return (out[0], out[1]) if len(out) == 2 else (None, out[0])


def _random_input(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3.0
    # exact ties at half steps, values beyond the range, and zeros
    x.view(-1)[:8] = torch.tensor([0.0, 0.5, 1.5, 2.5, -0.5, -2.5, 1e6, -1e6])
    return x


CASES = [
    pytest.param(QuantSpec(bits=8, signed=True), id="int8-tensor"),
    pytest.param(QuantSpec(bits=8, signed=False, symmetric=False), id="uint8-tensor"),
    pytest.param(
        QuantSpec(bits=8, signed=True, granularity="per_channel", axis=0), id="int8-channel"
    ),
    pytest.param(
        QuantSpec(bits=8, signed=False, symmetric=False, granularity="per_channel", axis=1),
        id="uint8-channel-axis1",
    ),
    pytest.param(QuantSpec(bits=16, signed=True), id="int16-tensor"),
    pytest.param(QuantSpec(bits=4, signed=True), id="int4-tensor"),
    pytest.param(
        QuantSpec(bits=4, signed=False, symmetric=False, granularity="per_channel", axis=0),
        id="uint4-channel",
    ),
    pytest.param(
        QuantSpec(bits=4, signed=True, granularity="per_group", axis=1, group_size=16),
        id="int4-blocked",
    ),
    pytest.param(
        QuantSpec(bits=8, signed=True, granularity="per_group", axis=1, group_size=8),
        id="int8-blocked",
    ),
]


@pytest.mark.parametrize("spec", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_dequantize_match_onnxruntime_bit_for_bit(spec, seed):
    x = _random_input(seed, (16, 40))
    # ranges from the data but clipped, so saturation is exercised too
    lo, hi = estimate_range(x.clamp(-4, 4), spec)
    scale, zp = choose_qparams(lo, hi, spec)
    q = quantize(x, scale, zp, spec)
    x_hat = dequantize(q, scale, zp, spec)
    ort_q, ort_x_hat = _run_qdq(x.numpy(), scale.numpy(), zp.numpy(), spec, spec.axis)
    if ort_q is not None:
        np.testing.assert_array_equal(q.numpy(), ort_q.astype(np.int32))
    # bitwise equality of the float32 results
    np.testing.assert_array_equal(x_hat.numpy().view(np.int32), ort_x_hat.view(np.int32))
