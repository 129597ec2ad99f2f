"""Losses and schedules of camera-aware invariance learning + cross-domain mixup: tensors and numbers in, tensors out."""

from reid_accel.objectives.cail import NEIGHBOUR_PREFIX, CAILObjective
from reid_accel.objectives.mixup import mix_pixels, mixup_virtual_class_loss, sample_mixup_lambda
from reid_accel.objectives.neighbourhood import (
    camera_agnostic_neighborhood_loss,
    camera_aware_neighborhood_loss,
    neighbour_statistics,
)
from reid_accel.objectives.schedule import learning_rate_factor, memory_momentum, mixup_active, target_loss_weights

__all__ = [
    "CAILObjective",
    "NEIGHBOUR_PREFIX",
    "camera_agnostic_neighborhood_loss",
    "camera_aware_neighborhood_loss",
    "learning_rate_factor",
    "memory_momentum",
    "mix_pixels",
    "mixup_active",
    "mixup_virtual_class_loss",
    "neighbour_statistics",
    "sample_mixup_lambda",
    "target_loss_weights",
]
