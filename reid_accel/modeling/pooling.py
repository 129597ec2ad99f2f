"""Generalised-mean (GeM) pooling (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human Annotation",
TPAMI 2019), as cluster contrast pools its ResNet-50 maps: a learnable exponent p starting at 3.

``(mean over H x W of max(x, eps)^p)^(1/p)``: p = 1 is average pooling, large p tends to max pooling, so the
network learns how much the strongest responses (a bag, a logo) dominate the descriptor. Cluster contrast reports
83.6 mAP on Market with it against 73.6 with average pooling (its issue #22).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GeM(nn.Module):
    """(B, C, H, W) feature map -> (B, C) generalised mean over the spatial positions.

    Args:
        p: initial exponent (3 in cluster contrast).
        trainable: learn p (a one-element parameter, optimised with the rest); else a fixed buffer.
        eps: floor of the activations before the power (ReLU maps hold exact zeros; 0^p has no gradient in p).
    """

    def __init__(self, p: float = 3.0, trainable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"GeM exponent p={p}; expected > 0")
        exponent = torch.full((1,), float(p))
        if trainable:
            self.p = nn.Parameter(exponent)
        else:
            self.register_buffer("p", exponent)
        self.eps = eps

    def forward(self, fmap: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(fmap.clamp(min=self.eps).pow(self.p), 1)  # (B, C, 1, 1)
        return pooled.pow(1.0 / self.p).flatten(1)  # (B, C)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, trainable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"
