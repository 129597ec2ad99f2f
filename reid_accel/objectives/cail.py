"""The whole training objective of one step: source (or mixup) loss plus the scheduled target losses.

`CAILObjective` holds numbers only. The engine passes the network outputs and the memory tensors in, backpropagates
the returned total, and updates the memory afterwards, so the target losses always see the memory as it was before
this step. The single-domain baseline is the same objective with `target_branch=False`.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from reid_accel.objectives.mixup import mixup_virtual_class_loss
from reid_accel.objectives.neighbourhood import (
    camera_agnostic_neighbourhood_loss,
    camera_aware_neighbourhood_loss,
    neighbour_statistics,
)
from reid_accel.objectives.schedule import TargetLossSchedule, mixup_active

NEIGHBOUR_PREFIX = "neighbours/"
"""Components whose name starts with this are neighbour-set diagnostics, not losses."""


class CAILObjective:
    """Camera-aware invariance learning + cross-domain mixup (METHOD.md), configured by its schedule.

    Every argument is required: the published values are the defaults of `reid_accel.config.ObjectiveConfig`.

    Args:
        target_branch: compute the target losses (False: the single-domain baseline, source cross-entropy only).
        camera_aware: the camera-aware intra/inter losses (False: the camera-agnostic ablation).
        scale: inverse softmax temperature of the neighbourhood losses.
        eps: neighbour ratio of the neighbourhood losses, in [0, 1].
        schedule: when and how strongly the target losses count.
        mixup: whether cross-domain mixup may replace the source cross-entropy.
        mixup_start_epoch: mixup is allowed once epoch > this.
    """

    def __init__(
        self,
        *,
        target_branch: bool,
        camera_aware: bool,
        scale: float,
        eps: float,
        schedule: TargetLossSchedule,
        mixup: bool,
        mixup_start_epoch: int,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1], got {eps}")
        self.target_branch = target_branch
        self.camera_aware = camera_aware
        self.scale = scale
        self.eps = eps
        self.schedule = schedule
        self.mixup = mixup
        self.mixup_start_epoch = mixup_start_epoch

    def mixup_active(self, epoch: int) -> bool:
        """Whether this epoch's batches should be mixed (and `lam` passed to `__call__`)."""
        return self.target_branch and mixup_active(epoch, enabled=self.mixup, start_epoch=self.mixup_start_epoch)

    def target_weights(self, epoch: int) -> dict[str, float]:
        """Weights of the target losses in `epoch` (empty without a target branch)."""
        if not self.target_branch:
            return {}
        return self.schedule.weights(epoch, camera_aware=self.camera_aware)

    def __call__(
        self,
        *,
        epoch: int,
        source_features: Tensor,
        source_logits: Tensor,
        source_labels: Tensor,
        classifier_weight: Tensor,
        target_features: Tensor | None = None,
        target_camids: Tensor | None = None,
        target_slots: Tensor | None = None,
        memory_features: Tensor | None = None,
        memory_camids: Tensor | None = None,
        memory_pids: Tensor | None = None,
        lam: float | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of one step and its parts.

        A target loss whose weight is 0 this epoch is still computed, for logging, but without a graph, so it adds
        nothing to the gradient. Everything is computed in float32 with autocast disabled. Target inputs are ignored
        when `target_branch` is off.

        Args:
            epoch: 1-based epoch.
            source_features: (B_s, D) BNNeck features of the source half (batch statistics).
            source_logits: (B_s, C) classifier logits of `source_features`.
            source_labels: (B_s,) source class ids.
            classifier_weight: (C, D) classifier weight (for the mixup virtual class).
            target_features: (B_t, D) BNNeck features of the target half (not normalised).
            target_camids: (B_t,) camera of each target image.
            target_slots: (B_t,) memory slot of each target image.
            memory_features: (N, D) exemplar memory, before this step's update.
            memory_camids: (N,) camera of each memory slot.
            memory_pids: (N,) true identity of each memory slot, when known: adds the `neighbour_statistics` of the
                step's neighbour sets as `neighbours/<name>` (diagnostics; identities never enter a loss).
            lam: mixing weight when the source half was mixed (`mix_pixels`); None for plain cross-entropy.

        Returns:
            `(total, components)`: the scalar loss to backpropagate, and detached scalars `source_ce` or `mixup`,
            the unweighted target losses `intra` and `inter` (or `agnostic`), `total`, `source_accuracy`, and with
            `memory_pids` the `neighbours/...` diagnostics (`all_...` in the camera-agnostic mode).
        """
        components: dict[str, Tensor] = {}
        with torch.autocast(device_type=source_logits.device.type, enabled=False):
            if lam is None:
                total = components["source_ce"] = F.cross_entropy(source_logits.float(), source_labels)
            else:
                if not self.mixup_active(epoch):
                    raise ValueError(f"lam={lam} given, but mixup is off in epoch {epoch}")
                if target_slots is None or memory_features is None:
                    raise ValueError("mixup needs target_slots and memory_features (the paired target memory rows)")
                memory_rows = memory_features[target_slots]  # (B_s, D), pairs source i with target i
                total = components["mixup"] = mixup_virtual_class_loss(
                    source_features, classifier_weight, memory_rows, source_labels, lam
                )
            if self.target_branch:
                target = {
                    "target_features": target_features,
                    "target_camids": target_camids,
                    "target_slots": target_slots,
                    "memory_features": memory_features,
                    "memory_camids": memory_camids,
                }
                missing = [name for name, value in target.items() if value is None]
                if missing:
                    raise ValueError(f"the target branch needs {', '.join(missing)}")
                weights = self.target_weights(epoch)
                with (
                    torch.set_grad_enabled(torch.is_grad_enabled() and any(w != 0 for w in weights.values())),
                    record_function("reid_accel.target_branch"),
                ):
                    losses, diagnostics = self._target_losses(**target, memory_pids=memory_pids)
                components.update(diagnostics)
                for name, loss in losses.items():
                    components[name] = loss
                    if weights[name] != 0:
                        total = total + weights[name] * loss
            components["total"] = total
            components["source_accuracy"] = (source_logits.argmax(1) == source_labels).float().mean()
        return total, {name: value.detach() for name, value in components.items()}

    def _target_losses(
        self,
        *,
        target_features: Tensor,
        target_camids: Tensor,
        target_slots: Tensor,
        memory_features: Tensor,
        memory_camids: Tensor,
        memory_pids: Tensor | None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Unweighted target losses against the memory (no gradient into the memory), and neighbour diagnostics."""
        features = F.normalize(target_features.float(), dim=1)  # (B_t, D)
        sim = features @ memory_features.detach().float().T  # (B_t, N)
        if not self.camera_aware:  # the camera-agnostic ablation: one group holding every slot
            target_camids, memory_camids = torch.zeros_like(target_camids), torch.zeros_like(memory_camids)
        diagnostics = {}
        if memory_pids is not None:
            with record_function("reid_accel.neighbour_diagnostics"):
                stats = neighbour_statistics(
                    sim, target_camids, memory_camids, target_slots, memory_pids, eps=self.eps
                )
            if not self.camera_aware:
                stats = {name.replace("intra_", "all_"): v for name, v in stats.items() if name.startswith("intra_")}
            diagnostics = {f"{NEIGHBOUR_PREFIX}{name}": value for name, value in stats.items()}
        if self.camera_aware:
            intra, inter = camera_aware_neighbourhood_loss(
                sim, target_camids, memory_camids, target_slots, scale=self.scale, eps=self.eps
            )
            return {"intra": intra, "inter": inter}, diagnostics
        agnostic = camera_agnostic_neighbourhood_loss(sim, target_slots, scale=self.scale, eps=self.eps)
        return {"agnostic": agnostic}, diagnostics
