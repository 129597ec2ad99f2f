"""Where each image of an optimizer step goes: processes, micro-batches and BatchNorm groups.

The recipe fixes two numbers: the global batch B (images per optimizer step, half source and half target) and the
BatchNorm group G (`data.bn_batch_size`: the images whose statistics one BatchNorm computes; the original ran
2 GPUs x (64 + 64), so G = 128). The hardware only decides how they are executed. With W processes each holds
P = B / W images:

- P == G: one forward per process per step.
- P > G: P / G micro-batches per process, each a whole BN group, gradients accumulated before one step.
- P < G: SyncBatchNorm over G / P consecutive processes, which together hold one BN group.

Every image has a global position in the step: source images 0 .. B/2 - 1, then target images B/2 .. B - 1
(source image p is mixed with target image B/2 + p). BN group g holds source and target positions
[g * G/2, (g + 1) * G/2). Processes hold consecutive groups (or consecutive shares of one group), so the sampler, the
random draws and the memory update all follow positions and the same recipe gives the same step on 1, 2 or 8
processes.
"""

from dataclasses import dataclass

import torch

from reid_accel.errors import ConfigError


def _layout_problem(global_batch: int, world_size: int, bn_batch_size: int, two_domains: bool) -> str | None:
    """Why B images cannot be laid out over W processes in BN groups of G (None when they can)."""
    halves = " in equal source and target halves" if two_domains else ""
    unit = 2 if two_domains else 1
    if global_batch % world_size or (global_batch // world_size) % unit:
        return f"data.batch_size={global_batch} does not split over {world_size} processes{halves}"
    if bn_batch_size < unit or bn_batch_size % unit or global_batch % bn_batch_size:
        return f"data.bn_batch_size={bn_batch_size} does not split data.batch_size={global_batch} into groups{halves}"
    per_process = global_batch // world_size
    if per_process % bn_batch_size and bn_batch_size % per_process:
        return (
            f"{world_size} processes x {per_process} images (data.batch_size={global_batch}) neither hold whole "
            f"BatchNorm groups of data.bn_batch_size={bn_batch_size} nor split them evenly"
        )
    return None


def fitting_process_counts(
    global_batch: int, bn_batch_size: int, *, two_domains: bool, sync_bn: bool, limit: int = 64
) -> list[int]:
    """Process counts up to `limit` that run this recipe (without SyncBatchNorm unless `sync_bn`)."""
    return [
        w
        for w in range(1, limit + 1)
        if _layout_problem(global_batch, w, bn_batch_size, two_domains) is None
        and (sync_bn or global_batch // w >= bn_batch_size)
    ]


def _or_list(values: list[int]) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass(frozen=True)
class BatchLayout:
    """The step's arithmetic, computed once and handed to the sampler, the training step and the run records.

    Build it with `BatchLayout.plan`, which refuses layouts that cannot run.

    Attributes:
        global_batch: B, images per optimizer step over all processes.
        world_size: W, processes.
        bn_batch_size: G, images whose statistics one BatchNorm computes.
        two_domains: batches are [source | target] halves (False: source-only training).
    """

    global_batch: int
    world_size: int
    bn_batch_size: int
    two_domains: bool

    @classmethod
    def plan(
        cls,
        global_batch: int,
        world_size: int,
        *,
        bn_batch_size: int | None = None,
        two_domains: bool = True,
        sync_bn: bool = True,
    ) -> "BatchLayout":
        """The layout of `global_batch` images over `world_size` processes, or a `ConfigError` saying what to change.

        Args:
            global_batch: `data.batch_size`.
            world_size: number of processes.
            bn_batch_size: `data.bn_batch_size`; None means one BN group per process (P), whatever P is.
            two_domains: [source | target] batches.
            sync_bn: whether SyncBatchNorm can run here (it needs GPUs); needed when a BN group spans processes.
        """
        per_process = global_batch // world_size if world_size > 0 else 0
        group = per_process if bn_batch_size is None else bn_batch_size
        problem = _layout_problem(global_batch, world_size, max(group, 1), two_domains)
        if problem is None and per_process < group and not sync_bn:
            problem = (
                f"data.bn_batch_size={group} needs SyncBatchNorm over {group // per_process} processes of "
                f"{per_process} images, which needs GPUs"
            )
        if problem is not None:
            fits = fitting_process_counts(global_batch, group, two_domains=two_domains, sync_bn=sync_bn)
            if fits and bn_batch_size is not None:
                advice = f"launch {_or_list(fits[:6])} process(es) for this recipe"
            else:
                advice = f"set data.batch_size to a multiple of {2 * world_size if two_domains else world_size}"
            raise ConfigError(f"{problem}; {advice}")
        return cls(global_batch, world_size, group, two_domains)

    @property
    def per_process(self) -> int:
        """P: images one process holds per step."""
        return self.global_batch // self.world_size

    @property
    def micro_batch(self) -> int:
        """Images in one forward pass: a whole BN group, or this process's share of one."""
        return min(self.per_process, self.bn_batch_size)

    @property
    def micro_batches(self) -> int:
        """Forward passes per process per step (gradients accumulate over them)."""
        return self.per_process // self.micro_batch

    @property
    def sync_group_size(self) -> int:
        """Processes that share one BN group through SyncBatchNorm (1: none)."""
        return self.bn_batch_size // self.micro_batch

    @property
    def num_groups(self) -> int:
        """BN groups per step; the step's loss is the mean of their losses."""
        return self.global_batch // self.bn_batch_size

    @property
    def domain_share(self) -> int:
        """Images of one domain in one micro-batch (the whole micro-batch in source-only training)."""
        return self.micro_batch // 2 if self.two_domains else self.micro_batch

    @property
    def domain_batch(self) -> int:
        """Images of one domain in one global step."""
        return self.global_batch // 2 if self.two_domains else self.global_batch

    def domain_offsets(self, rank: int) -> list[int]:
        """Start of each of `rank`'s micro-batches within a domain's half of the step (source and target alike)."""
        first = rank * self.micro_batches * self.domain_share
        return [first + j * self.domain_share for j in range(self.micro_batches)]

    def positions(self, rank: int) -> torch.Tensor:
        """(P,) global positions of `rank`'s images in the order the sampler yields them."""
        parts = []
        for offset in self.domain_offsets(rank):
            source = torch.arange(offset, offset + self.domain_share)
            parts += [source, source + self.domain_batch] if self.two_domains else [source]
        return torch.cat(parts)

    def group_index(self, rank: int, micro_batch: int) -> int:
        """The BN group of `rank`'s `micro_batch`-th micro-batch."""
        group_share = self.bn_batch_size // 2 if self.two_domains else self.bn_batch_size  # per domain
        return self.domain_offsets(rank)[micro_batch] // group_share

    def sync_groups(self) -> list[list[int]]:
        """Ranks of each SyncBatchNorm group, consecutive; empty when no BN group spans processes."""
        if self.sync_group_size == 1:
            return []
        size = self.sync_group_size
        return [list(range(start, start + size)) for start in range(0, self.world_size, size)]

    def describe(self, steps_per_epoch: int) -> str:
        """One log line of the arithmetic, e.g. `256 images per step = 2 processes x 1 x (64 source + 64 target)`."""
        share = (
            f"({self.domain_share} source + {self.domain_share} target)" if self.two_domains else f"{self.micro_batch}"
        )
        how = f"{self.world_size} processes x {self.micro_batches} micro-batch(es) of {share}"
        if self.sync_group_size > 1:
            how += f", SyncBatchNorm over groups of {self.sync_group_size} processes"
        return (
            f"batch: {self.global_batch} images per step = {how}; each BatchNorm sees {self.bn_batch_size}; "
            f"{steps_per_epoch} steps/epoch"
        )

    def record(self) -> dict[str, int | bool]:
        """The layout with its derived numbers, as recorded in metrics.json."""
        return {
            "global_batch": self.global_batch,
            "world_size": self.world_size,
            "bn_batch_size": self.bn_batch_size,
            "two_domains": self.two_domains,
            "per_process_batch": self.per_process,
            "micro_batches": self.micro_batches,
            "sync_group_size": self.sync_group_size,
            "micro_batch_source": self.domain_share,
            "micro_batch_target": self.domain_share if self.two_domains else 0,
        }
