"""The re-ID encoder (the shared model), the cross-domain training network and the exemplar memory."""

from reid_accel.modeling.encoder import BNNeck, ReIDEncoder, set_last_stride_one
from reid_accel.modeling.memory import ExemplarMemory
from reid_accel.modeling.network import CrossDomainNetwork

__all__ = ["BNNeck", "CrossDomainNetwork", "ExemplarMemory", "ReIDEncoder", "set_last_stride_one"]
