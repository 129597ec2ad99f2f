"""The [source | target] batches of the method (METHOD.md, "Batches"), laid out by a `BatchLayout`.

Who shards: this sampler. It is rank-aware: every process builds the same global order from a generator seeded
by (seed, epoch) and takes its own positions of each global step (`BatchLayout.domain_offsets`), so ranks draw
disjoint, equally long shares, each micro-batch keeps its two halves, and the images of a step do not depend on
the number of processes. The engine must therefore NOT pass the train loader through `accelerator.prepare`:
accelerate's `split_batches` would hand rank 0 only source images and `even_batches` would pad the last batch from
the epoch's start, breaking the halves; a prepared loader would also never forward `set_epoch` to a custom batch
sampler. The engine calls `set_epoch` itself, before every epoch.

An epoch walks the larger of the two sets once in a random order; the smaller set is repeated (whole random
permutations, then random indices) so that both halves stay full. Epoch 1 keeps its last, partial global step,
completed with random indices, so every target image (every memory slot) is visited at least once; from epoch 2
the partial step is dropped. Duplicates within a step are possible; the memory update handles them.
"""

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from reid_accel.errors import ConfigError
from reid_accel.layout import BatchLayout
from reid_accel.seeding import seeded_generator


def _order(size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`length` indices into range(size): a truncated permutation if it fits, else whole permutations padded
    with random indices (drawn with replacement)."""
    if length <= size:
        return torch.randperm(size, generator=generator)[:length]
    repeats, rest = divmod(length, size)
    parts = [torch.randperm(size, generator=generator) for _ in range(repeats)]
    parts.append(torch.randint(size, (rest,), generator=generator))
    return torch.cat(parts)


class CrossDomainBatchSampler(Sampler[list[int]]):
    """Per-process batches of indices into `CrossDomainDataset`, micro-batch after micro-batch, each micro-batch
    its source indices then its target indices (offset by `num_source`). Without a target (source-only training)
    a micro-batch holds source indices only.

    Args:
        num_source: images in the source train split.
        num_target: images in the target train split (0 exactly when the layout has one domain).
        layout: the step's arithmetic (global batch, processes, micro-batches).
        rank: this process's index.
        seed: with the epoch, seeds the global order; equal on every process.
    """

    def __init__(self, num_source: int, num_target: int, layout: BatchLayout, *, rank: int = 0, seed: int = 0) -> None:
        if num_source < 1 or num_target < 0 or (num_target > 0) != layout.two_domains:
            raise ConfigError(
                f"training sets of {num_source} source and {num_target} target images do not fit a "
                f"{'two' if layout.two_domains else 'one'}-domain layout"
            )
        if not 0 <= rank < layout.world_size:
            raise ConfigError(f"rank {rank} is not in [0, {layout.world_size})")
        larger = max(num_source, num_target)
        if larger < layout.domain_batch:
            raise ConfigError(
                f"a step of {layout.domain_batch} images per domain (data.batch_size={layout.global_batch}) exceeds "
                f"the larger training set ({larger} images); no full step would remain after epoch 1"
            )
        self.num_source = num_source
        self.num_target = num_target
        self.layout = layout
        self.offsets = layout.domain_offsets(rank)
        self.seed = seed
        self.epoch = 1
        self.start_step = 0

    def steps_per_epoch(self, epoch: int) -> int:
        """Steps in a whole epoch: epoch 1 keeps the last partial global step, later epochs drop it."""
        larger = max(self.num_source, self.num_target)
        step = self.layout.domain_batch
        return math.ceil(larger / step) if epoch == 1 else larger // step

    @property
    def steady_steps_per_epoch(self) -> int:
        """Steps of every epoch after the first: the figure a run reports (the first epoch may take one more)."""
        return self.steps_per_epoch(2)

    def set_epoch(self, epoch: int, *, start_step: int = 0) -> None:
        """Select the (1-based) epoch to iterate, starting after `start_step` steps already done (resume)."""
        if epoch < 1:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        if not 0 <= start_step <= self.steps_per_epoch(epoch):
            raise ValueError(f"start_step {start_step} is not in [0, {self.steps_per_epoch(epoch)}] for epoch {epoch}")
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return self.steps_per_epoch(self.epoch) - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        step_size, share = self.layout.domain_batch, self.layout.domain_share
        length = self.steps_per_epoch(self.epoch) * step_size
        generator = seeded_generator(self.seed, self.epoch)
        source = _order(self.num_source, length, generator)  # (steps * domain_batch,)
        target = _order(self.num_target, length, generator) + self.num_source if self.num_target else None
        for step in range(self.start_step, self.steps_per_epoch(self.epoch)):
            batch = []
            for offset in self.offsets:
                start = step * step_size + offset
                batch += source[start : start + share].tolist()
                if target is not None:
                    batch += target[start : start + share].tolist()
            yield batch
