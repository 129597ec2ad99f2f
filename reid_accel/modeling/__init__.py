"""The re-ID encoder (the shared model), IBN-Net backbones, GeM pooling, the training network and the memories.

Importing this package registers the IBN-Net models with timm (`ibn.py`), so `timm.create_model("resnet50_ibn_a")`
and `reid_accel.hub.from_pretrained` of a saved IBN model work in any process that imports reid_accel.modeling.
"""

from reid_accel.modeling.encoder import BNNeck, ReIDEncoder, set_last_stride_one
from reid_accel.modeling.ibn import IBNResNet, InstanceBatchNorm2d
from reid_accel.modeling.memory import ExemplarMemory
from reid_accel.modeling.network import CrossDomainNetwork, FeatureNetwork
from reid_accel.modeling.pooling import GeM
from reid_accel.modeling.proxy_memory import ProxyMemory

__all__ = [
    "BNNeck",
    "CrossDomainNetwork",
    "ExemplarMemory",
    "FeatureNetwork",
    "GeM",
    "IBNResNet",
    "InstanceBatchNorm2d",
    "ProxyMemory",
    "ReIDEncoder",
    "set_last_stride_one",
]
