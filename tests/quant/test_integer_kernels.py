"""`edgeq.quant.kernels` against ONNX Runtime's QLinearAdd and QLinearGlobalAveragePool,
level for level, including inputs built to land on rounding ties (where "dequantize,
add, quantize" and the kernel disagree)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.quant.kernels import fma_f32, qlinear_add, qlinear_global_average_pool

F32 = np.float32


def _session(node: helper.NodeProto, inputs: dict[str, np.ndarray], inits: dict) -> list:
    graph = helper.make_graph(
        [node],
        "k",
        [
            helper.make_tensor_value_info(k, TensorProto.UINT8, list(v.shape))
            for k, v in inputs.items()
        ],
        [helper.make_tensor_value_info(node.output[0], TensorProto.UINT8, None)],
        initializer=[numpy_helper.from_array(np.array(v, dt), k) for k, (v, dt) in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def _ort_add(a, b, sa, za, sb, zb, sc, zc) -> np.ndarray:
    node = helper.make_node(
        "QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"], domain="com.microsoft"
    )
    inits = {
        "sa": (sa, F32),
        "za": (za, np.uint8),
        "sb": (sb, F32),
        "zb": (zb, np.uint8),
        "sc": (sc, F32),
        "zc": (zc, np.uint8),
    }
    return _session(node, {"a": a, "b": b}, inits)[0]


def _our_add(a, b, sa, za, sb, zb, sc, zc) -> np.ndarray:
    t = torch.tensor
    out = qlinear_add(
        torch.from_numpy(a.astype(np.float32)),
        torch.from_numpy(b.astype(np.float32)),
        (t(sa), t(za)),
        (t(sb), t(zb)),
        (t(sc), t(zc)),
        0,
        255,
    )
    return out.numpy().astype(np.uint8)


def _naive_add(a, b, sa, za, sb, zb, sc, zc) -> np.ndarray:
    x = (a.astype(F32) - za) * F32(sa) + (b.astype(F32) - zb) * F32(sb)
    return np.clip(np.rint(x / F32(sc)) + zc, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(4))
def test_qlinear_add_matches_onnxruntime_on_random_scales(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(1, 300))  # odd lengths exercise the kernel's tail path
        a = rng.integers(0, 256, n, dtype=np.uint8)
        b = rng.integers(0, 256, n, dtype=np.uint8)
        sa, sb, sc = (F32(10 ** rng.uniform(-3, -0.5)) for _ in range(3))
        za, zb, zc = (int(v) for v in rng.integers(0, 256, 3))
        args = (a, b, sa, za, sb, zb, sc, zc)
        np.testing.assert_array_equal(_our_add(*args), _ort_add(*args))


def test_qlinear_add_matches_onnxruntime_on_ties_where_float_add_does_not():
    rng = np.random.default_rng(7)
    naive_wrong = 0
    for _ in range(60):
        a = rng.integers(0, 256, 256, dtype=np.uint8)
        b = rng.integers(0, 256, 256, dtype=np.uint8)
        sc = F32(2.0 ** -int(rng.integers(3, 8)))
        sa = F32(sc * 2.0 ** int(rng.integers(-3, 2)))
        sb = F32(sc * 2.0 ** int(rng.integers(-3, 2)))
        za, zb, zc = (int(v) for v in rng.integers(0, 256, 3))
        args = (a, b, sa, za, sb, zb, sc, zc)
        ref = _ort_add(*args)
        np.testing.assert_array_equal(_our_add(*args), ref)
        naive_wrong += int((_naive_add(*args) != ref).sum())
    # the data really contains ties: the naive formula gets some of them wrong
    assert naive_wrong > 100


def test_qlinear_add_broadcasts_like_the_graph():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    b = np.full((2, 3, 4), 200, np.uint8)
    args = (a, b, F32(0.05), 10, F32(0.02), 128, F32(0.07), 100)
    np.testing.assert_array_equal(_our_add(*args), _ort_add(*args))


@pytest.mark.parametrize("seed", range(3))
def test_qlinear_global_average_pool_matches_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        hw = int(rng.integers(1, 10))
        x = rng.integers(0, 256, (2, int(rng.integers(1, 40)), hw, hw), dtype=np.uint8)
        si, so = F32(10 ** rng.uniform(-3, -1)), F32(10 ** rng.uniform(-3, -1))
        zi, zo = (int(v) for v in rng.integers(0, 256, 2))
        node = helper.make_node(
            "QLinearGlobalAveragePool",
            ["x", "si", "zi", "so", "zo"],
            ["y"],
            domain="com.microsoft",
            channels_last=0,
        )
        inits = {"si": (si, F32), "zi": (zi, np.uint8), "so": (so, F32), "zo": (zo, np.uint8)}
        ref = _session(node, {"x": x}, inits)[0]
        t = torch.tensor
        ours = qlinear_global_average_pool(
            torch.from_numpy(x.astype(np.float32)), (t(si), t(zi)), (t(so), t(zo)), 0, 255
        )
        np.testing.assert_array_equal(ours.numpy().astype(np.uint8), ref)


def test_fma_rounds_once():
    # 1 + 2**-24 is not a float32; (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 rounds to
    # 1 + 2**-11 when done in one step, and c = -(1 + 2**-11) leaves exactly 2**-24.
    x = torch.tensor([1 + 2**-12], dtype=torch.float32)
    c = torch.tensor([-(1 + 2**-11)], dtype=torch.float32)
    assert fma_f32(x, x, c).item() == 2**-24
    assert (x * x + c).item() == 0.0


def test_qlinear_add_matches_onnxruntime_on_every_input_pair():
    """All 65536 (a, b) level pairs for random scales: some land within float32
    rounding of a tie, where only the kernel's exact FMA sequence agrees."""
    rng = np.random.default_rng(3)
    a = np.repeat(np.arange(256, dtype=np.uint8), 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256)
    for _ in range(40):
        sa, sb, sc = (F32(10 ** rng.uniform(-2, -1)) for _ in range(3))
        za, zb, zc = (int(v) for v in rng.integers(0, 256, 3))
        args = (a, b, sa, za, sb, zb, sc, zc)
        np.testing.assert_array_equal(_our_add(*args), _ort_add(*args))
