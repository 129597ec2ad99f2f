"""Training schedules as pure functions of the 1-based epoch.

A term that "starts at epoch s" is on once `epoch > s`: in the published recipe the intra-camera term runs from
epoch 11, the inter-camera term from epoch 31 and mixup from epoch 2 (METHOD.md, "Total loss and schedule"). The
published values live in `reid_accel.config` only; here every setting is a required argument.
"""

from collections.abc import Sequence
from dataclasses import dataclass


def _check_epoch(epoch: int) -> None:
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got epoch={epoch}")


@dataclass(frozen=True)
class TargetLossSchedule:
    """When, and how strongly, the target losses count: the five schedule values of the method, held once.

    Attributes:
        intra_start_epoch: the intra-camera term (and the camera-agnostic one) is on once epoch > this.
        intra_weight: weight of the intra-camera term once on.
        inter_start_epoch: the inter-camera term is on once epoch > this.
        inter_weight: weight of the inter-camera term once on.
        agnostic_weight: weight of the camera-agnostic term once on.
    """

    intra_start_epoch: int
    intra_weight: float
    inter_start_epoch: int
    inter_weight: float
    agnostic_weight: float

    def weights(self, epoch: int, *, camera_aware: bool) -> dict[str, float]:
        """Weights of the target losses in the 1-based `epoch`; 0 before a term starts (the branch still runs to
        fill the memory).

        Returns:
            `{"intra": w, "inter": w}` camera-aware, `{"agnostic": w}` camera-agnostic.
        """
        _check_epoch(epoch)
        if camera_aware:
            return {
                "intra": self.intra_weight if epoch > self.intra_start_epoch else 0.0,
                "inter": self.inter_weight if epoch > self.inter_start_epoch else 0.0,
            }
        return {"agnostic": self.agnostic_weight if epoch > self.intra_start_epoch else 0.0}


def memory_momentum(epoch: int, *, momentum: float) -> float:
    """Memory update momentum: 0 in epoch 1, so every slot is simply overwritten by its first feature."""
    _check_epoch(epoch)
    return 0.0 if epoch == 1 else momentum


def mixup_active(epoch: int, *, enabled: bool, start_epoch: int) -> bool:
    """Whether cross-domain mixup replaces plain source cross-entropy in `epoch`."""
    _check_epoch(epoch)
    return enabled and epoch > start_epoch


def learning_rate_factor(
    epoch: int, *, milestones: Sequence[int], gamma: float, warmup_epochs: int = 0, warmup_factor: float = 1.0
) -> float:
    """Multiplier of the base learning rates: `gamma` per milestone passed (epochs 61-70 at 0.1x as published),
    times a linear warm-up from `warmup_factor` over the first `warmup_epochs` epochs (O2CAP: 0.01 over 10, i.e.
    `0.01 + 0.99 (epoch - 1) / 10` in epochs 1-10)."""
    _check_epoch(epoch)
    warmup = warmup_factor + (1.0 - warmup_factor) * (epoch - 1) / warmup_epochs if epoch <= warmup_epochs else 1.0
    return warmup * gamma ** sum(epoch > m for m in milestones)
