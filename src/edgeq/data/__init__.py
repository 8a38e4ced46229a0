"""Calibration and evaluation data sources."""

from edgeq.data.errors import DataError
from edgeq.data.images import LabeledImages, load_labeled_images
from edgeq.data.preprocess import Preprocess, PreprocessError
from edgeq.data.sampling import describe_sample, sample_indices

__all__ = [
    "DataError",
    "LabeledImages",
    "Preprocess",
    "PreprocessError",
    "describe_sample",
    "load_labeled_images",
    "sample_indices",
]
