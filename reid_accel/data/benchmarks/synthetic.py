"""Synthetic re-ID worlds drawn by `reid_accel.generators.synthetic.generate_world`, in Market-1501's layout.

`root` is the world's folder. When it is missing (or an empty folder), `prepare` generates the world there
from `domain`, `seed` and `num_ids`; an existing world is parsed as it is (its `world.json` records the
parameters it was drawn with). Names read `0001_c1s1_000001_00.png`; pid 0 marks the gallery's distractors.

Official statistics: none (the size is a parameter of the generator).
"""

import os
from pathlib import Path

from reid_accel.data.benchmarks import market_style
from reid_accel.data.records import Benchmark, Split
from reid_accel.generators.synthetic import generate_world


def prepare(root: str | os.PathLike, *, domain: str = "a", seed: int = 0, num_ids: int | None = None) -> None:
    """Generate the world into `root` unless a folder with content is already there.

    Args:
        root: the world's folder.
        domain: "a" or "b", the two domains of the synthetic adaptation pair.
        seed: seeds people, cameras and images.
        num_ids: training identities; the generator's default when None.
    """
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        return
    size = {} if num_ids is None else {"num_ids": num_ids}
    generate_world(root, domain=domain, seed=seed, **size)


def parse(root: str | os.PathLike) -> Split:
    """Parse a generated world (any Market-style folder)."""
    return market_style.parse(root)


BENCHMARK = Benchmark(title="reid-accel synthetic world", parse=parse, prepare=prepare)
