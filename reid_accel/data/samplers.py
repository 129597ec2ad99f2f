"""The batch layout of the method: every per-process batch is [B/2 source | B/2 target] (METHOD.md, "Batches").

Who shards: this sampler. It is rank-aware: every process builds the same global order from a generator seeded
by (seed, epoch) and takes its own slice of each global step, so ranks draw disjoint, equally long shares and
every rank's batch keeps its two halves. The engine must therefore NOT pass the train loader through
`accelerator.prepare`: accelerate's `split_batches` would hand rank 0 only source images and `even_batches`
would pad the last batch from the epoch's start, breaking the halves; a prepared loader would also never
forward `set_epoch` to a custom batch sampler. The engine calls `set_epoch` itself, before every epoch.

An epoch walks the larger of the two sets once in a random order; the smaller set is repeated (whole random
permutations, then random indices) so that both halves stay full. Epoch 1 keeps its last, partial global step,
completed with random indices, so every target image (every memory slot) is visited at least once; from epoch 2
the partial step is dropped. Duplicates within a step are possible; the memory update handles them.
"""

import hashlib
import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from reid_accel.errors import ConfigError


def seeded_generator(*keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded by a stable hash of `keys` (unlike `hash()`, the same in every process)."""
    digest = hashlib.blake2b(":".join(map(str, keys)).encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


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
    """Batches of indices into `CrossDomainDataset`: B/2 source indices, then B/2 target indices (offset by
    `num_source`). With `num_target=0` (single-domain training) a batch is B source indices.

    Args:
        num_source: images in the source train split.
        num_target: images in the target train split (0 for source-only training).
        batch_size: the per-process batch B; must be even when there is a target.
        num_replicas: number of processes.
        rank: this process's index.
        seed: with the epoch, seeds the global order; equal on every process.
    """

    def __init__(
        self,
        num_source: int,
        num_target: int,
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if num_source < 1 or num_target < 0:
            raise ConfigError(
                f"training sets of {num_source} source and {num_target} target images: need source images"
            )
        if batch_size < 1 or (num_target and batch_size % 2):
            raise ConfigError(
                f"per-process batch size {batch_size} must be a positive even number (half source, half target)"
            )
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_source = num_source
        self.num_target = num_target
        self.half = batch_size // 2 if num_target else batch_size  # images per domain in one process's batch
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.global_half = self.half * num_replicas  # images per domain in one global step
        larger = max(num_source, num_target)
        if larger < self.global_half:
            raise ConfigError(
                f"{num_replicas} process(es) x {self.half} images per domain exceed the larger training set "
                f"({larger} images); no full step would remain after epoch 1"
            )
        self.epoch = 1
        self.start_step = 0

    def steps_per_epoch(self, epoch: int) -> int:
        """Steps in a whole epoch: epoch 1 keeps the last partial global step, later epochs drop it."""
        larger = max(self.num_source, self.num_target)
        return math.ceil(larger / self.global_half) if epoch == 1 else larger // self.global_half

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
        length = self.steps_per_epoch(self.epoch) * self.global_half
        generator = seeded_generator(self.seed, self.epoch)
        source = _order(self.num_source, length, generator)  # (steps * global_half,)
        target = _order(self.num_target, length, generator) + self.num_source if self.num_target else None
        for step in range(self.start_step, self.steps_per_epoch(self.epoch)):
            start = step * self.global_half + self.rank * self.half
            batch = source[start : start + self.half].tolist()
            if target is not None:
                batch += target[start : start + self.half].tolist()
            yield batch
