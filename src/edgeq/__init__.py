"""edgeq: compress PyTorch models for edge deployment, measured in the runtime.

import edgeq
model = edgeq.load_model("torchvision:mobilenet_v2", weights="mobilenet_v2.pth")
qmodel = edgeq.quantize(model, calib_batches)            # static W8A8 PTQ
edgeq.export_onnx(qmodel, "model.int8.onnx", example)    # QDQ ONNX, integer kernels
edgeq.save(qmodel, "model.edgeq")                        # packed artifact
qmodel = edgeq.load("model.edgeq")                       # same simulation, bit-exact

qmodel = edgeq.prepare_qat(model, calib_batches, config) # QAT: PTQ, then trainable
... train qmodel.module (edgeq.train.fit) ...
edgeq.convert(qmodel)                                    # integer-exact again
"""

__version__ = "0.1.0"

from edgeq.artifact import load, save
from edgeq.export import export_onnx
from edgeq.graph.lift import export_and_lift
from edgeq.models import load_model
from edgeq.ptq import PTQConfig, QuantizedModel, quantize
from edgeq.train.qat import convert, prepare_qat

__all__ = [
    "PTQConfig",
    "QuantizedModel",
    "__version__",
    "convert",
    "export_and_lift",
    "export_onnx",
    "load",
    "load_model",
    "prepare_qat",
    "quantize",
    "save",
]
