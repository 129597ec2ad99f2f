"""Rank-aware batch samplers laid out by a `BatchLayout`: CAIL's [source | target] batches (METHOD.md, "Batches")
and the P proxies x K images batches of clustering methods (`ProxyBatchSampler`, at the end).

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
from abc import ABC, abstractmethod
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


class _EpochSampler(Sampler[list[int]], ABC):
    """Epoch and resume bookkeeping shared by the rank-aware batch samplers; subclasses define `steps_per_epoch`."""

    epoch: int = 1
    start_step: int = 0

    @abstractmethod
    def steps_per_epoch(self, epoch: int) -> int:
        """Optimizer steps in the (1-based) epoch."""

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


class CrossDomainBatchSampler(_EpochSampler):
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

    def steps_per_epoch(self, epoch: int) -> int:
        """Steps in a whole epoch: epoch 1 keeps the last partial global step, later epochs drop it."""
        larger = max(self.num_source, self.num_target)
        step = self.layout.domain_batch
        return math.ceil(larger / step) if epoch == 1 else larger // step

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


class ProxyBatchSampler(_EpochSampler):
    """P proxies x K images per global step, for clustering methods (O2CAP's `ClassUniformlySampler`, cluster
    contrast's `RandomMultipleGallerySampler`), rank-aware like `CrossDomainBatchSampler`.

    An epoch is a fixed number of steps (400 in O2CAP) whatever the number of proxies. Its proxies come from
    back-to-back passes, each pass every proxy once in a random order, K images each: a random K of its images, or
    all of them in random order and then repeats when it has fewer than K. A step takes the next P proxies, so it
    may straddle two passes. With ``cross_camera=True`` (plain cluster contrast, one proxy per cluster) a proxy
    gives one random anchor and K - 1 images from cameras other than the anchor's, from its other images when
    none exists, and the anchor again for a one-image cluster. The global order is drawn from (seed, epoch)
    alone; every process takes its positions of each step from the layout (so the engine must not pass this
    sampler through `accelerator.prepare`), and the proxies may change every epoch (`set_proxies`).

    Args:
        layout: one-domain layout; its global batch is P x K.
        images_per_proxy: K.
        steps_per_epoch: optimizer steps per epoch.
        camids: (N,) camera of each training image; needed with ``cross_camera``.
        cross_camera: draw each proxy's other images from other cameras than its anchor's.
        rank: this process's index.
        seed: with the epoch, seeds the global order; equal on every process.
    """

    def __init__(
        self,
        layout: BatchLayout,
        *,
        images_per_proxy: int = 4,
        steps_per_epoch: int = 400,
        camids: torch.Tensor | None = None,
        cross_camera: bool = False,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if layout.two_domains:
            raise ConfigError("proxy batches hold one domain; the layout has two")
        if images_per_proxy < 1 or layout.global_batch % images_per_proxy:
            raise ConfigError(
                f"data.batch_size={layout.global_batch} is not a whole number of proxies of {images_per_proxy} images"
            )
        if steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch={steps_per_epoch}; expected at least 1")
        if not 0 <= rank < layout.world_size:
            raise ConfigError(f"rank {rank} is not in [0, {layout.world_size})")
        if cross_camera and camids is None:
            raise ValueError("cross_camera draws need the camera of every image (camids)")
        self.layout = layout
        self.images_per_proxy = images_per_proxy
        self.proxies_per_step = layout.global_batch // images_per_proxy
        self.num_steps = steps_per_epoch
        self.camids = None if camids is None else torch.as_tensor(camids, dtype=torch.long).cpu()
        self.cross_camera = cross_camera
        self.offsets = layout.domain_offsets(rank)
        self.seed = seed
        self.members: list[torch.Tensor] = []

    def set_proxies(self, proxy_of_image: torch.Tensor) -> None:
        """This epoch's proxies: (N,) proxy of each training image, -1 for images left out."""
        proxy_of_image = torch.as_tensor(proxy_of_image, dtype=torch.long).cpu()
        if self.camids is not None and proxy_of_image.shape != self.camids.shape:
            raise ValueError(
                f"proxy_of_image has shape {tuple(proxy_of_image.shape)}; expected {tuple(self.camids.shape)}"
            )
        clustered = (proxy_of_image >= 0).nonzero().flatten()
        order = clustered[torch.argsort(proxy_of_image[clustered], stable=True)]  # images grouped by proxy
        counts = torch.bincount(proxy_of_image[clustered])
        if (counts == 0).any():
            raise ValueError("proxy ids must be 0 .. M-1, each with at least one image")
        if len(counts) < self.proxies_per_step:
            raise ConfigError(
                f"the clustering gave {len(counts)} proxies, fewer than the {self.proxies_per_step} a step draws "
                f"(data.batch_size={self.layout.global_batch} / {self.images_per_proxy} images per proxy); "
                "lower data.batch_size or loosen the clustering (a larger eps)"
            )
        self.members = list(torch.split(order, counts.tolist()))

    def steps_per_epoch(self, epoch: int) -> int:
        """The same fixed number of steps in every epoch."""
        return self.num_steps

    def __iter__(self) -> Iterator[list[int]]:
        if not self.members:
            raise RuntimeError("set_proxies must be called before iterating a ProxyBatchSampler")
        order = self._global_order()  # (steps * B,)
        step_size, share = self.layout.global_batch, self.layout.domain_share
        for step in range(self.start_step, self.num_steps):
            start = step * step_size
            yield [i for offset in self.offsets for i in order[start + offset : start + offset + share].tolist()]

    def _global_order(self) -> torch.Tensor:
        """The epoch's images, proxy after proxy: (steps * P * K,) image indices."""
        generator = seeded_generator(self.seed, self.epoch)
        num_slots = self.num_steps * self.proxies_per_step
        passes = -(-num_slots // len(self.members))
        slots = torch.cat([torch.randperm(len(self.members), generator=generator) for _ in range(passes)])
        draw = self._cross_camera_draw if self.cross_camera else self._draw
        return torch.cat([draw(self.members[p], generator) for p in slots[:num_slots].tolist()])

    def _draw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """K of the proxy's images: a random K, or whole random permutations then random repeats."""
        return images[_order(len(images), self.images_per_proxy, generator)]

    def _cross_camera_draw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random anchor, then K - 1 images from the other cameras (else the other images, else the anchor)."""
        anchor = int(torch.randint(len(images), (1,), generator=generator))
        others = images[self.camids[images] != self.camids[images[anchor]]]
        if not len(others):
            others = torch.cat([images[:anchor], images[anchor + 1 :]])
        if not len(others):
            others = images[anchor : anchor + 1]
        rest = others[_order(len(others), self.images_per_proxy - 1, generator)]
        return torch.cat([images[anchor : anchor + 1], rest])
