"""The proxy memory of clustering methods: one unit feature per proxy (a cluster, or a cluster's images from one
camera), rebuilt from the centroids every epoch and moved towards each training feature after every step."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid_accel.modeling.memory import _gather_from_all_processes, occurrences

UpdateMode = Literal["sequential", "hardest"]
UPDATE_MODES: tuple[str, ...] = ("sequential", "hardest")


class ProxyMemory(nn.Module):
    """M x D bank of unit rows, M changing every epoch (the number of proxies the clustering gave).

    `features` is a buffer, so `state_dict` / `load_state_dict` carry it, which is how a checkpoint saves and
    restores the memory; loading resizes it to the saved number of proxies, so a resumed run restores the epoch's
    proxies as saved rather than recomputing them from features that have drifted since.

    Args:
        num_proxies: initial M (0 until the first `reset`).
        dim: feature dimension D.
    """

    def __init__(self, num_proxies: int = 0, dim: int = 2048) -> None:
        super().__init__()
        self.register_buffer("features", torch.zeros(num_proxies, dim))

    @property
    def num_proxies(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def reset(self, centroids: Tensor) -> None:
        """Replace the bank by (M, D) `centroids` (the epoch's proxy centroids), in float32, on the bank's device."""
        if centroids.ndim != 2 or centroids.shape[1] != self.features.shape[1]:
            raise ValueError(f"centroids have shape {tuple(centroids.shape)}; expected (M, {self.features.shape[1]})")
        self.features = centroids.detach().to(self.features.device, torch.float32).clone()

    @torch.no_grad()
    def update(self, features: Tensor, proxies: Tensor, momentum: float, *, mode: UpdateMode = "sequential") -> None:
        """Move the proxies of the GLOBAL batch towards its features: ``m <- normalise(momentum m + (1 - momentum) x)``.

        `momentum` is the weight of the OLD row: 0.2 in O2CAP (``normalise(0.2 m + 0.8 x)``), 0.1 in cluster
        contrast's recipe. Every process gathers all processes' features and proxy ids in rank order first, so
        the copies stay identical and equal to a one-process run on the whole batch (the official codes update
        from the local batch, and their copies drift apart under DDP). Features are L2-normalised first (a no-op
        for unit features), all in float32.

        - ``"sequential"``: one momentum step per sample, in batch order (the official codes' loop). Steps of
          different proxies commute, so pass r applies the r-th sample of every proxy at once.
        - ``"hardest"``: one step per proxy, from its sample least similar to the row before the update (ties:
          the earliest), cluster contrast's ``--use-hard``.

        Args:
            features: (B, D) this process's training features (gradients are ignored).
            proxies: (B,) their proxy ids in [0, M).
            momentum: in [0, 1).
            mode: ``"sequential"`` or ``"hardest"``.
        """
        if mode not in UPDATE_MODES:
            raise ValueError(f"mode={mode!r}; expected one of {', '.join(UPDATE_MODES)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} is outside [0, 1)")
        device = self.features.device
        features = _gather_from_all_processes(F.normalize(features.detach().to(device, torch.float32), dim=1))
        proxies = _gather_from_all_processes(proxies.to(device, torch.long))  # (B,)
        if proxies.numel() and not 0 <= int(proxies.min()) <= int(proxies.max()) < self.num_proxies:
            raise ValueError(f"proxy ids must lie in [0, {self.num_proxies}), got {proxies.min()}..{proxies.max()}")
        if mode == "hardest":
            features, proxies = _hardest(features, proxies, self.features)
        _, _, counts, rank = occurrences(proxies)
        for r in range(int(counts.max()) if proxies.numel() else 0):  # one pass per position within a proxy
            take = rank == r
            rows = proxies[take]  # distinct within a pass
            moved = momentum * self.features[rows] + (1.0 - momentum) * features[take]  # (b_r, D)
            self.features[rows] = F.normalize(moved, dim=1)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Resize `features` to the saved number of proxies before the default loading copies it in."""
        saved = state_dict.get(prefix + "features")
        if saved is not None and saved.ndim == 2 and saved.shape[1] == self.features.shape[1]:
            self.features = self.features.new_empty(saved.shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _hardest(features: Tensor, proxies: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    """Per proxy of the batch, its sample least similar to the proxy's current row (ties: earliest in the batch).

    Returns:
        (U, D) chosen features and (U,) their proxies, one per distinct proxy.
    """
    similarity = (features * bank[proxies]).sum(1)  # (B,)
    order = torch.argsort(similarity, stable=True)  # by similarity, ties by batch position
    order = order[torch.argsort(proxies[order], stable=True)]  # then grouped by proxy
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = proxies[order][1:] != proxies[order][:-1]
    chosen = order[first]  # (U,)
    return features[chosen], proxies[chosen]
