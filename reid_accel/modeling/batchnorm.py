"""BatchNorm without touching its running statistics: batch statistics only, buffers left as they were.

Two parts of training need it. The source half passes the BNNeck with its own batch statistics, so the running
statistics that serve at test time come from target images only (METHOD.md, "Network"). And when one process runs
several BatchNorm groups as micro-batches, only the first updates the running statistics, as data parallelism
keeps the first process's buffers (`reid_accel.layout`). Putting each BatchNorm in training mode with
`track_running_stats` off does both for every BatchNorm flavour at once (torch's, timm's BatchNormAct2d, and
SyncBatchNorm, which then still syncs its batch statistics across its process group).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Inside the block, every BatchNorm in `module` normalises with batch statistics and updates no buffer."""
    norms = [(m, m.training, m.track_running_stats) for m in module.modules() if isinstance(m, _BatchNorm)]
    for norm, _, _ in norms:
        norm.training, norm.track_running_stats = True, False
    try:
        yield
    finally:
        for norm, training, track in norms:
            norm.training, norm.track_running_stats = training, track
