"""The exemplar memory: one unit feature per target training image, refreshed by momentum after every step."""

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _gather_from_all_processes(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every process in rank order (equal shapes everywhere); itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def occurrences(keys: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The distinct keys and, per element, which one it is and how many equal keys come before it.

    The last output lets a batch be applied in passes that each hold at most one element per key, in batch order:
    deterministic writes without a scatter-add of floats.

    Args:
        keys: (B,) int64.

    Returns:
        (U,) sorted distinct keys, (B,) index of each element's key, (U,) counts, (B,) rank among equal keys.
    """
    unique, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)  # (U,), (B,), (U,)
    order = torch.argsort(inverse, stable=True)
    first = torch.cumsum(counts, 0) - counts  # (U,) position of each key's first element in `order`
    rank = torch.empty_like(keys)
    rank[order] = torch.arange(keys.numel(), device=keys.device) - first[inverse[order]]
    return unique, inverse, counts, rank


class ExemplarMemory(nn.Module):
    """N x D feature bank, slot k for the k-th target training image, with the camera of each slot.

    Rows start as N(0, 0.001^2) noise and become unit vectors once written. `update` runs after the backward pass,
    so a step's losses always see the memory as it was before the step. Under torch.distributed every process
    gathers all processes' features and slots first, so all copies stay identical. Both tensors are buffers:
    `state_dict` / `load_state_dict` carry them, which is how a checkpoint saves and restores the memory.

    Args:
        num_slots: number of target training images N.
        dim: feature dimension D.
        camids: (N,) 0-based camera of each slot.
        generator: optional generator for the initial noise (otherwise torch's global RNG).
    """

    def __init__(
        self, num_slots: int, dim: int, camids: Tensor | Sequence[int], *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        camids = torch.as_tensor(camids, dtype=torch.long)
        if camids.shape != (num_slots,):
            raise ValueError(f"camids must have one entry per slot ({num_slots}), got shape {tuple(camids.shape)}")
        self.register_buffer("features", torch.randn(num_slots, dim, generator=generator).mul_(0.001))
        self.register_buffer("camids", camids)

    @torch.no_grad()
    def update(self, features: Tensor, slots: Tensor, momentum: float) -> None:
        """Write `M[k] = normalize(m * M[k] + (1 - m) * f)` for each (feature, slot) of the global batch, in float32.

        Incoming features are L2-normalised first (a no-op for unit features). A slot that occurs several times in
        the global batch (a padded target half, or copies on several processes) is written once, with the mean of
        its normalised features summed in batch order: the result is deterministic and does not depend on how
        the batch was split across processes.

        Args:
            features: (B_t, D) target features of this process (gradients are ignored).
            slots: (B_t,) their memory slots.
            momentum: m in [0, 1); 0 overwrites the slots (the first epoch).
        """
        features = _gather_from_all_processes(F.normalize(features.detach().float(), dim=1))  # (B, D) global
        slots = _gather_from_all_processes(slots.to(self.camids.device, torch.long))  # (B,)
        unique, inverse, counts, rank = occurrences(slots)
        # Each pass adds one sample per slot, so no two writes in a pass collide (scatter-add of floats is not
        # deterministic on GPUs).
        summed = features.new_zeros(unique.numel(), features.shape[1])  # (U, D)
        for r in range(int(counts.max()) if slots.numel() else 0):  # 1 pass unless a slot repeats
            take = rank == r
            summed[inverse[take]] += features[take]
        mean = summed / counts[:, None]  # (U, D)
        updated = momentum * self.features[unique].float() + (1.0 - momentum) * mean  # (U, D)
        self.features[unique] = F.normalize(updated, dim=1).to(self.features.dtype)
