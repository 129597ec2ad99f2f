"""Camera-aware invariance learning + cross-domain mixup (ECCV 2020, METHOD.md), and its single-domain baseline.

Batches are [source | target] halves from `CrossDomainBatchSampler`; the network is the encoder plus the source
classifier, one backbone forward over both halves; the state is the exemplar memory, one slot per target training
image, written after the optimizer step from the target features of every group of every process. With
`objective.target_branch: false` (or no target) the method is the supervised source-only baseline.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reid_accel.config import DomainConfig, ExperimentConfig, ObjectiveConfig
from reid_accel.data import CrossDomainBatchSampler, CrossDomainDataset
from reid_accel.layout import BatchLayout
from reid_accel.methods.base import BuildInputs, GroupLoss, Method, MethodParts
from reid_accel.modeling import CrossDomainNetwork, ExemplarMemory
from reid_accel.objectives import (
    NEIGHBOUR_PREFIX,
    CAILObjective,
    TargetLossSchedule,
    memory_momentum,
    mix_pixels,
    sample_mixup_lambda,
)
from reid_accel.seeding import seeded_generator


def target_loss_schedule(objective: ObjectiveConfig) -> TargetLossSchedule:
    """The schedule's values, read from the config section that holds them under the same names."""
    return TargetLossSchedule(**{name: getattr(objective, name) for name in TargetLossSchedule.__dataclass_fields__})


def build_objective(cfg: ExperimentConfig, *, two_domains: bool) -> CAILObjective:
    """The objective of `cfg.objective`; without `two_domains`, the source cross-entropy alone."""
    o = cfg.objective
    return CAILObjective(
        target_branch=two_domains,
        camera_aware=o.neighbour_mode == "camera_aware",
        scale=o.scale,
        eps=o.neighbour_eps,
        schedule=target_loss_schedule(o),
        mixup=o.mixup,
        mixup_start_epoch=o.mixup_start_epoch,
    )


class CAIL(Method):
    """The method of METHOD.md on the engine: [source | target] batches, exemplar memory, mixup."""

    name = "cail"

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.objective = build_objective(cfg, two_domains=self.two_domains)
        self.layout: BatchLayout | None = None
        self.network: CrossDomainNetwork | None = None
        self.memory: ExemplarMemory | None = None
        self.memory_pids: Tensor | None = None  # (N,) true identities of the slots, for diagnostics only

    @property
    def two_domains(self) -> bool:
        return self.cfg.data.target is not None and self.cfg.objective.target_branch

    @property
    def domains(self) -> dict[str, DomainConfig]:
        domains = {"data.source": self.cfg.data.source}
        if self.two_domains:
            domains["data.target"] = self.cfg.data.target
        return domains

    def camera_setting(self, key: str) -> str | None:
        if key == "data.target" and self.cfg.objective.neighbour_mode == "camera_aware":
            return "objective.neighbour_mode=camera_aware (camera_agnostic trains without them)"
        return None

    def build(self, inputs: BuildInputs) -> MethodParts:
        layout, encoder = inputs.layout, inputs.encoder
        target = inputs.train_splits.get("data.target")
        dataset = CrossDomainDataset(
            inputs.train_splits["data.source"], target, inputs.load_transform, preload=self.cfg.data.preload
        )
        sampler = CrossDomainBatchSampler(
            len(dataset.source),
            len(dataset.target) if target is not None else 0,
            layout,
            rank=inputs.rank,
            seed=self.cfg.train.seed,
        )
        self.layout = layout
        self.network = CrossDomainNetwork(encoder, dataset.num_source_classes)
        if self.two_domains:
            self.memory = ExemplarMemory(len(dataset.target), encoder.feature_dim, dataset.target_camids)
            if self.cfg.train.neighbour_diagnostics:
                self.memory_pids = dataset.target_pids
        return MethodParts(dataset, sampler, self.network, self.memory)

    def to(self, device: torch.device) -> None:
        if self.memory is not None:
            self.memory.to(device)
        if self.memory_pids is not None:
            self.memory_pids = self.memory_pids.to(device)

    def mixup_lambda(self, *, epoch: int, step: int, group: int) -> float | None:
        """The mixup weight of one BN group, or None when mixup is off this epoch.

        Drawn from a stream keyed by (seed, epoch, step), plus the group with `mixup_lambda_per: group`, so every
        process agrees without communication, whatever the number of processes, and a resumed run draws the same.
        """
        if not self.objective.mixup_active(epoch):
            return None
        keys = ("mixup", self.cfg.train.seed, epoch, step)
        if self.cfg.objective.mixup_lambda_per == "group":
            keys += ("group", group)
        return sample_mixup_lambda(self.cfg.objective.mixup_alpha, generator=seeded_generator(*keys))

    def group_inputs(
        self, pixel_values: Tensor, batch: dict[str, Tensor], *, epoch: int, step: int, group: int
    ) -> tuple[Tensor, dict[str, Any]]:
        num_source = self.layout.domain_share
        lam = self.mixup_lambda(epoch=epoch, step=step, group=group)
        if lam is not None:
            pixel_values = mix_pixels(pixel_values, num_source=num_source, lam=lam)
        return pixel_values, {"num_source": num_source, "source_neck": "batch" if self.two_domains else "train"}

    def group_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor], *, epoch: int, step: int, group: int
    ) -> GroupLoss:
        num_source = self.layout.domain_share
        target = {}
        if self.two_domains:
            target = {
                "target_features": outputs["target_features"],
                "target_camids": batch["camid"][num_source:],
                "target_slots": batch["index"][num_source:],
                "memory_features": self.memory.features,
                "memory_camids": self.memory.camids,
                "memory_pids": self.memory_pids,
            }
        loss, components = self.objective(
            epoch=epoch,
            source_features=outputs["source_features"],
            source_logits=outputs["source_logits"],
            source_labels=batch["pid"][:num_source],
            classifier_weight=self.network.classifier.weight,
            lam=self.mixup_lambda(epoch=epoch, step=step, group=group),
            **target,
        )
        return GroupLoss(loss, components, outputs["target_features"].detach())

    def describe(self, epoch: int, averages: dict[str, float]) -> list[str]:
        """The neighbour sets' quality, e.g. `neighbours: intra: precision 0.62, recall 0.35, 2.1 per row, 8 % of
        rows without; inter: ...` (nothing when the run records no neighbour diagnostics)."""
        groups = dict.fromkeys(
            k[len(NEIGHBOUR_PREFIX) :].split("_")[0] for k in averages if k.startswith(NEIGHBOUR_PREFIX)
        )
        parts = []
        for group in groups:
            value = {k.split("_", 1)[1]: v for k, v in averages.items() if k.startswith(f"{NEIGHBOUR_PREFIX}{group}_")}
            parts.append(
                f"{group}: precision {value['precision']:.2f}, recall {value['recall']:.2f}, "
                f"{value['neighbours']:.1f} per row, {100 * value['empty']:.0f} % of rows without"
            )
        return [f"neighbours: {'; '.join(parts)}"] if parts else []

    def after_step(self, carries: Sequence[Tensor], batch: dict[str, Tensor], *, epoch: int, step: int) -> None:
        """Write the target features of every group of every process into the memory (METHOD.md)."""
        if not self.two_domains:
            return
        count, size = self.layout.micro_batches, self.layout.micro_batch
        slots = batch["index"].view(count, size)[:, self.layout.domain_share :].reshape(-1)  # (P/2,) position order
        momentum = memory_momentum(epoch, momentum=self.cfg.objective.memory_momentum)
        self.memory.update(torch.cat(list(carries)), slots, momentum)
