"""Tensor dtypes in the ONNX graph: inputs, constants and casts keep PyTorch's dtype.

Token ids and attention masks are int64, masks turn into bool through comparisons,
and a constant added to an int64 tensor must itself be int64 (ONNX does not
promote types the way PyTorch does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from onnx import helper


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (bfloat16 has none: not exported)."""
    return torch.empty((), dtype=dtype).numpy().dtype


def onnx_dtype(dtype: torch.dtype) -> int:
    """The ONNX TensorProto element type of a torch dtype."""
    return int(helper.np_dtype_to_tensor_dtype(numpy_dtype(dtype)))


def node_dtype(node: Any) -> torch.dtype | None:
    """The dtype ShapeProp recorded for ``node``'s tensor value (None: not a tensor)."""
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return getattr(meta, "dtype", None)


def result_dtype(node: Any) -> torch.dtype:
    """The dtype of ``node``'s result; float32 where ShapeProp recorded none."""
    return node_dtype(node) or torch.float32


def cast_to(em: Any, name: str, src: Any, dtype: torch.dtype, base: str) -> str:
    """``name`` (the ONNX value of fx node ``src``) cast to ``dtype`` where PyTorch's
    type promotion changed it (int64 mask * 0.5 is float32); unchanged otherwise."""
    if node_dtype(src) in (None, dtype):
        return name
    return str(em.add("Cast", [name], base, to=onnx_dtype(dtype)))
