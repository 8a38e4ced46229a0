"""Loading user models: torchvision architectures with local weights, factories, files."""

from edgeq.models.loaders import (
    ModelLoadError,
    build_from_source,
    load_model,
    load_state_dict_file,
)
from edgeq.models.pretrained import PretrainedWeightsMissing, mobilenet_v2_weights_path

__all__ = [
    "ModelLoadError",
    "PretrainedWeightsMissing",
    "build_from_source",
    "load_model",
    "load_state_dict_file",
    "mobilenet_v2_weights_path",
]
