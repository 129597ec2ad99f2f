"""Losses and schedules: camera-aware invariance learning + cross-domain mixup, and the proxy contrast losses of
clustering methods; tensors and numbers in, tensors out."""

from reid_accel.objectives.cail import NEIGHBOUR_PREFIX, CAILObjective
from reid_accel.objectives.mixup import mix_pixels, mixup_virtual_class_loss, sample_mixup_lambda
from reid_accel.objectives.neighbourhood import (
    camera_agnostic_neighbourhood_loss,
    camera_aware_neighbourhood_loss,
    neighbour_statistics,
)
from reid_accel.objectives.proxy_contrast import (
    cluster_contrast_loss,
    offline_association_loss,
    online_association_loss,
)
from reid_accel.objectives.schedule import TargetLossSchedule, learning_rate_factor, memory_momentum, mixup_active

__all__ = [
    "CAILObjective",
    "NEIGHBOUR_PREFIX",
    "TargetLossSchedule",
    "camera_agnostic_neighbourhood_loss",
    "camera_aware_neighbourhood_loss",
    "cluster_contrast_loss",
    "learning_rate_factor",
    "memory_momentum",
    "mix_pixels",
    "mixup_active",
    "mixup_virtual_class_loss",
    "neighbour_statistics",
    "offline_association_loss",
    "online_association_loss",
    "sample_mixup_lambda",
]
