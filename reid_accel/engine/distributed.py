"""What a run on several processes needs beyond accelerate: SyncBatchNorm groups, one set of BatchNorm buffers,
and a clear report when a process of the run is lost.
"""

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import gather_object
from timm.layers import convert_sync_batchnorm
from torch import nn

from reid_accel.errors import first_line
from reid_accel.layout import BatchLayout

DEATH_GRACE_S = 2.0  # how long a failed collective waits to see a dead process of its machine gone


class LostProcessError(RuntimeError):
    """Another process of the run died or stopped answering; the run resumes from its last checkpoint."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def convert_to_sync_groups(network: nn.Module, layout: BatchLayout, rank: int) -> nn.Module:
    """SyncBatchNorm over the layout's groups of consecutive processes; `network` unchanged when a group is one process.

    timm's converter is used because torch's drops the activation fused into timm's `BatchNormAct2d` (ConvNeXt,
    EfficientNet). Every process creates every group, in the same order, as torch.distributed requires.
    """
    groups = layout.sync_groups()
    if not groups:
        return network
    own = None
    for ranks in groups:
        group = dist.new_group(ranks)
        if rank in ranks:
            own = group
    return convert_sync_batchnorm(network, process_group=own)


@torch.no_grad()
def share_main_process_buffers(module: nn.Module) -> None:
    """Give every process the main process's BatchNorm running statistics.

    Data parallelism broadcasts them at the start of each training forward, then every process updates its own
    copy with its own images, so after a step they differ; evaluation embeds on every process and must use one set.
    """
    if _distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def _alive(pid: int) -> bool:
    """Whether process `pid` on this machine still runs (a zombie, killed but not yet reaped, does not)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ProcessTable:
    """Host and pid of every rank, gathered once at start, to name the process that is gone when a collective fails."""

    rank: int
    hosts: tuple[str, ...]
    pids: tuple[int, ...]

    @classmethod
    def gather(cls, accelerator: Accelerator) -> "ProcessTable":
        rows = gather_object([(socket.gethostname(), os.getpid())])
        return cls(accelerator.process_index, tuple(h for h, _ in rows), tuple(p for _, p in rows))

    def dead_ranks(self, *, wait_s: float = 0.0) -> list[int]:
        """Other ranks on this machine whose process has exited, looking again for up to `wait_s` seconds.

        A killed process closes its sockets before it is gone from the process table, so the collective that
        notices it can fail a moment before the process shows as exited.
        """
        host = self.hosts[self.rank]
        local = [r for r, h in enumerate(self.hosts) if r != self.rank and h == host]
        deadline = time.monotonic() + wait_s
        while True:
            dead = [r for r in local if not _alive(self.pids[r])]
            if dead or time.monotonic() >= deadline:
                return dead
            time.sleep(0.05)

    def remote_ranks(self) -> list[int]:
        """Ranks on other machines, whose processes cannot be checked from here."""
        return [r for r, h in enumerate(self.hosts) if h != self.hosts[self.rank]]


def _collective_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "closed by peer")
    )


@contextmanager
def reporting_lost_processes(table: ProcessTable, *, timeout_s: float) -> Iterator[None]:
    """Turn a collective that failed because a process of the run is gone into one `LostProcessError` naming it.

    Any other error (and any error of a single-process run) passes through unchanged.
    """
    try:
        yield
    except RuntimeError as err:
        if len(table.pids) == 1 or isinstance(err, LostProcessError):
            raise
        world = len(table.pids)
        if dead := table.dead_ranks(wait_s=DEATH_GRACE_S if _collective_failure(err) else 0.0):
            names = ", ".join(f"{r} (pid {table.pids[r]})" for r in dead)
            raise LostProcessError(f"rank {table.rank}: lost rank {names} of {world}: the process exited") from err
        if not _collective_failure(err):
            raise
        if remote := table.remote_ranks():
            names = ", ".join(f"{r} on {table.hosts[r]}" for r in remote)
            lost = f"lost contact with rank(s) {names} (connection closed or no answer within {timeout_s:g} s)"
        else:
            lost = f"a collective operation failed while every process of this machine is alive ({first_line(err)})"
        raise LostProcessError(f"rank {table.rank}: {lost}") from err
