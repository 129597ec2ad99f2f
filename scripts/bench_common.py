"""What the benchmark scripts share: interleaved timing, markdown rows, and a training run built from a config.

Timings alternate between the compared variants and report the minimum and the median, so a shared machine's load
affects every variant alike; compare ratios within one run.
"""

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from reid_accel.config import load_config
from reid_accel.engine.train import Run, embed, setup


def interleaved_timings(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per call of each function, calls interleaved round-robin after one warm-up call each.

    The minimum is the call least disturbed by other load on the machine; the median shows the typical call.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def table_rows(label: str, timings: dict[str, tuple[float, float]], baseline: str, unit: float) -> list[str]:
    """Markdown rows: variant, min and median (in `unit` seconds), and both as multiples of the baseline's."""
    base_min, base_median = timings[baseline]
    return [
        f"| {label} | {name} | {t_min / unit:.4g} | {t_median / unit:.4g} | {t_min / base_min:.3f} | "
        f"{t_median / base_median:.3f} |"
        for name, (t_min, t_median) in timings.items()
    ]


def build_run(config: str, overrides: Sequence[str]) -> Run:
    """The training run `reid-accel train config overrides...` would build, writing nothing that lasts."""
    output_dir = tempfile.mkdtemp(prefix="reid-accel-bench-")
    return setup(load_config(config, [*overrides, f"train.output_dir={output_dir}", "train.log_with=none"]))


def every_term_epoch(run: Run) -> int:
    """The first epoch in which every scheduled term of the run's objective is on (mixup, intra, inter)."""
    o = run.cfg.objective
    return max(o.intra_start_epoch, o.inter_start_epoch, o.mixup_start_epoch) + 1


def training_batches(run: Run, count: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of the run's epoch 2 (prepared by the method: a clustering method clusters),
    decoded once, so timed steps measure the step alone."""
    run.method.before_epoch(2, start_step=0, embed=lambda dataset: embed(run, dataset))
    run.sampler.set_epoch(2)
    batches = []
    for batch in run.train_loader:
        batches.append(batch)
        if len(batches) == count:
            return batches
    raise ValueError(f"epoch 2 has only {len(batches)} steps; ask for fewer")
