"""Loading user models: torchvision architectures with local weights, factories, files."""

from edgeq.models.pretrained import PretrainedWeightsMissing, mobilenet_v2_weights_path

__all__ = ["PretrainedWeightsMissing", "mobilenet_v2_weights_path"]
