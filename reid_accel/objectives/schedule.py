"""Training schedules as pure functions of the 1-based epoch.

A term that "starts at epoch s" is on once `epoch > s`: in the published recipe the intra-camera term runs from
epoch 11, the inter-camera term from epoch 31 and mixup from epoch 2 (METHOD.md, "Total loss and schedule"). The
published values live in `reid_accel.config` only; here every setting is a required argument.
"""

from collections.abc import Sequence


def _check_epoch(epoch: int) -> None:
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got epoch={epoch}")


def target_loss_weights(
    epoch: int,
    *,
    neighbor_mode: int,
    intra_start_epoch: int,
    intra_weight: float,
    inter_start_epoch: int,
    inter_weight: float,
    agnostic_weight: float,
) -> dict[str, float]:
    """Weights of the target losses in `epoch`; 0 before a term starts (the branch still runs to fill the memory).

    Args:
        epoch: 1-based epoch.
        neighbor_mode: 1 for the camera-aware losses, 0 for the camera-agnostic ablation.
        intra_start_epoch: the intra-camera term (and, in mode 0, the camera-agnostic term) is on once epoch > this.
        intra_weight: weight of the intra-camera term once on.
        inter_start_epoch: the inter-camera term is on once epoch > this.
        inter_weight: weight of the inter-camera term once on.
        agnostic_weight: weight of the camera-agnostic term once on.

    Returns:
        `{"intra": w, "inter": w}` in mode 1, `{"agnostic": w}` in mode 0.
    """
    _check_epoch(epoch)
    if neighbor_mode == 1:
        return {
            "intra": intra_weight if epoch > intra_start_epoch else 0.0,
            "inter": inter_weight if epoch > inter_start_epoch else 0.0,
        }
    if neighbor_mode == 0:
        return {"agnostic": agnostic_weight if epoch > intra_start_epoch else 0.0}
    raise ValueError(f"neighbor_mode must be 0 (camera-agnostic) or 1 (camera-aware), got {neighbor_mode}")


def memory_momentum(epoch: int, *, momentum: float) -> float:
    """Memory update momentum: 0 in epoch 1, so every slot is simply overwritten by its first feature."""
    _check_epoch(epoch)
    return 0.0 if epoch == 1 else momentum


def mixup_active(epoch: int, *, enabled: bool, start_epoch: int) -> bool:
    """Whether cross-domain mixup replaces plain source cross-entropy in `epoch`."""
    _check_epoch(epoch)
    return enabled and epoch > start_epoch


def learning_rate_factor(epoch: int, *, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base learning rates: `gamma` per milestone passed (epochs 61-70 at 0.1x as published)."""
    _check_epoch(epoch)
    return gamma ** sum(epoch > m for m in milestones)
