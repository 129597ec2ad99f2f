"""What a training method declares, and what the engine does with it.

The engine (`reid_accel.engine.train`) owns everything common to every method: the Accelerator, the batch
layout, seeding, the encoder, the evaluation loaders, the optimizer, `prepare`, resume, micro-batching, BatchNorm
groups, logging, checkpoints and the exported model. A method owns what makes it that method:

- which training domains it reads, and whether its batches are [source | target] halves (`domains`,
  `two_domains`, known from the config alone, so they are checked before any work);
- its training set, its rank-aware batch sampler, the network the engine trains and its state, whose buffers
  (memories, pseudo-labels) travel with every checkpoint (`build` -> `MethodParts`);
- a hook before each epoch (`before_epoch`), which may return diagnostics for the epoch's record;
- the forward inputs and the loss of one BatchNorm group from the network's outputs (`group_inputs`,
  `group_loss`);
- the update of its state after the optimizer step, from every group of the step (`after_step`);
- log lines describing an epoch's diagnostics (`describe`); diagnostics are named `<group>/<measure>`, losses
  plain names.

Everything a method draws at random is keyed by (seed, epoch, step, ...), never by process, and its state is
updated from gathered tensors, so the same recipe gives the same run on any number of processes.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

from reid_accel.config import DomainConfig, ExperimentConfig
from reid_accel.layout import BatchLayout
from reid_accel.modeling import ReIDEncoder

Embed = Callable[[Dataset], Tensor]
"""Embeds a dataset of test-transformed images on every process (each a shard, gathered): (N, D) unit rows."""


@dataclass
class MethodParts:
    """What `Method.build` gives the engine.

    Attributes:
        dataset: the training set; its items are dicts with at least `pixel_values` (uint8 at the training size).
        sampler: a rank-aware batch sampler with `set_epoch(epoch, start_step=)`, `steps_per_epoch(epoch)` and
            `steady_steps_per_epoch` (the engine does not pass the train loader through `accelerator.prepare`).
        network: the module the engine trains; it holds the encoder as `network.encoder`.
        state: a module whose buffers are the method's state, saved with every checkpoint and restored on
            resume (None: the method keeps no state).
    """

    dataset: Dataset
    sampler: Sampler
    network: nn.Module
    state: nn.Module | None


@dataclass(frozen=True)
class BuildInputs:
    """What the engine hands `Method.build`.

    Attributes:
        train_splits: each training domain's train split (`datasets.Dataset`), by the keys of `Method.domains`.
        layout: the step's arithmetic.
        encoder: the encoder to train (built after the seed).
        rank: this process's index.
        load_transform: PIL image -> uint8 tensor at the training size (augmented per batch on the device).
        test_transform: PIL image -> normalised tensor, as evaluation embeds.
    """

    train_splits: dict[str, Any]
    layout: BatchLayout
    encoder: ReIDEncoder
    rank: int
    load_transform: Callable
    test_transform: Callable


@dataclass
class GroupLoss:
    """The loss of one BatchNorm group: what to backpropagate, its parts (detached scalars, for the logs) and
    what the method keeps for `after_step` (`carry`, e.g. the group's features)."""

    loss: Tensor
    components: dict[str, Tensor]
    carry: Any = None


class Method(ABC):
    """A training method the engine drives; one subclass per file in `reid_accel.methods`, one registry line.

    Built from the config alone (cheap, nothing loaded), then `build` once the engine has loaded the data.
    """

    name: ClassVar[str]

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    @property
    @abstractmethod
    def domains(self) -> dict[str, DomainConfig]:
        """The training domains by config key (e.g. `{"data.source": ..., "data.target": ...}`)."""

    @property
    @abstractmethod
    def two_domains(self) -> bool:
        """Whether each BatchNorm group is [source | target] halves."""

    def camera_setting(self, key: str) -> str | None:
        """The setting that needs camera ids in the training domain `key`, named when data without them is refused
        before any work; None where the method trains on camera-free data."""
        return None

    @abstractmethod
    def build(self, inputs: BuildInputs) -> MethodParts:
        """Training set, sampler, network and state, from what the engine has built and loaded."""

    @abstractmethod
    def to(self, device: torch.device) -> None:
        """Move the state, and whatever else the method keeps in tensors, to the training device."""

    def before_epoch(self, epoch: int, *, start_step: int, embed: Embed) -> dict[str, float]:
        """Prepare `epoch` (1-based), which starts after `start_step` steps already done (resume).

        Returns:
            Diagnostics of the epoch (recorded with its losses and logged by `describe`).
        """
        return {}

    def group_inputs(
        self, pixel_values: Tensor, batch: dict[str, Tensor], *, epoch: int, step: int, group: int
    ) -> tuple[Tensor, dict[str, Any]]:
        """The images and keyword arguments of one BatchNorm group's forward (the augmented images as they are)."""
        return pixel_values, {}

    @abstractmethod
    def group_loss(self, outputs: Any, batch: dict[str, Tensor], *, epoch: int, step: int, group: int) -> GroupLoss:
        """The loss of one BatchNorm group from the network's outputs, against the state as it was before the
        step. `components` must hold `total`."""

    @abstractmethod
    def after_step(self, carries: Sequence[Any], batch: dict[str, Tensor], *, epoch: int, step: int) -> None:
        """Update the state after the optimizer step, from every group of this process (`carries` in group
        order; `batch` the process's whole share); gather across processes so every copy stays identical."""

    def describe(self, epoch: int, averages: dict[str, float]) -> list[str]:
        """Log lines of the epoch's diagnostics, from its recorded averages."""
        return []


def is_diagnostic(name: str) -> bool:
    """Components and epoch records named `<group>/<measure>` are diagnostics, the others losses."""
    return "/" in name
