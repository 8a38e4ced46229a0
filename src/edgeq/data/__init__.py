"""Calibration and evaluation data sources."""

from edgeq.data.images import DataError, LabeledImages, imagenet_transform, load_labeled_images

__all__ = ["DataError", "LabeledImages", "imagenet_transform", "load_labeled_images"]
