"""Cross-domain mixup: source images blended with target images, and a virtual class for the target share.

A mixed image is `lam` source identity and `1 - lam` someone from the target domain, who belongs to none of the
source classes. The classifier therefore gets one extra, virtual class whose logit is the mixed feature's similarity
to the paired target image's memory slot, scaled to the size of the true class's weight; the target is the mixture
`lam * y + (1 - lam) * virtual` (METHOD.md, "Cross-domain mixup").
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def mix_pixels(pixel_values: Tensor, *, num_source: int, lam: float) -> Tensor:
    """Replace the source half of a [source | target] batch by `lam * x_s[i] + (1 - lam) * x_t[i]`.

    Args:
        pixel_values: (B, 3, H, W) with the B/2 source images first; the target half is left as it is.
        num_source: number of source images; must be exactly half the batch (image i is mixed with target i).
        lam: mixing weight of the source image.

    Returns:
        A new (B, 3, H, W) tensor in the input's memory format.
    """
    if 2 * num_source != pixel_values.shape[0]:
        raise ValueError(
            f"mixup needs equal source and target halves, got num_source={num_source} in a batch of "
            f"{pixel_values.shape[0]}"
        )
    source, target = pixel_values[:num_source], pixel_values[num_source:]
    return torch.cat([lam * source + (1.0 - lam) * target, target])  # (B, 3, H, W)


def sample_mixup_lambda(alpha: float, *, generator: torch.Generator | None = None) -> float:
    """Draw one mixing weight from Beta(alpha, alpha).

    torch's Beta sampler cannot take a generator, so the generator (or torch's global RNG, which `set_seed` seeds)
    supplies a 63-bit seed for numpy's exact Beta sampler: equal generators give equal draws on every process.

    Args:
        alpha: concentration of the symmetric Beta distribution (0.6 in the published configs); must be > 0.
        generator: optional torch CPU generator to draw from.

    Returns:
        lam in [0, 1].
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup_virtual_class_loss(
    features: Tensor, classifier_weight: Tensor, memory_rows: Tensor, labels: Tensor, lam: float
) -> Tensor:
    """Cross-entropy of mixed features against `lam * y + (1 - lam) * virtual class`.

    The logits are `features @ W.T` over the C source classes plus a virtual class with logit
    `(features[i] . memory_rows[i]) * ||W[labels[i]]||`, the norm taken without gradient. Computed in float32 with
    autocast disabled (float64 inputs stay float64).

    Args:
        features: (B_s, D) BNNeck features of the mixed images (batch statistics, not L2-normalised).
        classifier_weight: (C, D) source classifier weight W.
        memory_rows: (B_s, D) memory rows of the paired target images, read before this step's update (no grad).
        labels: (B_s,) source class of each mixed image.
        lam: mixing weight of the source image.

    Returns:
        The scalar loss `lam * CE([z, v], y) + (1 - lam) * CE([z, v], C)`.
    """
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32  # float64 kept for gradient checks
    with torch.autocast(device_type=features.device.type, enabled=False):
        features, weight = features.to(dtype), classifier_weight.to(dtype)
        memory_rows = memory_rows.detach().to(dtype)
        class_logits = features @ weight.T  # (B_s, C)
        label_norm = weight.detach()[labels].norm(dim=1)  # (B_s,)
        virtual_logit = (features * memory_rows).sum(1) * label_norm  # (B_s,)
        logits = torch.cat([class_logits, virtual_logit[:, None]], dim=1)  # (B_s, C + 1)
        virtual = torch.full_like(labels, weight.shape[0])
        return lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(logits, virtual)
