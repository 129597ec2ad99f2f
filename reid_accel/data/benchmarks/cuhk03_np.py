"""CUHK03 under the new protocol, CUHK03-NP (Li et al., "DeepReID: Deep Filter Pairing Neural Network for
Person Re-identification", CVPR 2014; split of Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017).

URL: https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP. `root` is the extracted `cuhk03-np/`
folder holding `labeled/` (hand-drawn boxes) and `detected/` (DPM boxes); option `subset` picks one (default
`labeled`). `root` may also be a subset folder itself: then that subset is read, and a `subset` naming the other
one is an error. Each subset holds `bounding_box_train/`, `query/` and
`bounding_box_test/` with images named `0001_c1_1.png` (pid, camera 1-2, index).

Official statistics, 2 cameras (the record's `official_stats` is keyed by subset):

| subset   | train images / ids | query images / ids | gallery images / ids |
|----------|-------------------:|-------------------:|---------------------:|
| labeled  | 7,368 / 767        | 1,400 / 700        | 5,328 / 700          |
| detected | 7,365 / 767        | 1,400 / 700        | 5,332 / 700          |
"""

import os
import re
from pathlib import Path

from reid_accel.data.benchmarks.market_style import SPLIT_FOLDERS, parse_folders
from reid_accel.data.records import Benchmark, Split, SplitStats
from reid_accel.errors import DatasetLayoutError

SUBSETS = ("labeled", "detected")
DEFAULT_SUBSET = "labeled"
NAME_PATTERN = re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)_\d+\.png")
NAME_EXAMPLE = "<pid>_c<camera>_<index>.png, e.g. 0001_c1_1.png"


def subset_of(root: str | os.PathLike | None, subset: str | None = None) -> str:
    """The subset a parse of `root` reads: `subset` when given, else the folder's own when `root` is `labeled/` or
    `detected/` itself, else "labeled".

    Raises:
        DatasetLayoutError: an unknown subset, or one that contradicts the subset folder `root` points at.
    """
    if subset is not None and subset not in SUBSETS:
        raise DatasetLayoutError(f"cuhk03 subset {subset!r} is unknown; expected one of {', '.join(SUBSETS)}")
    own = None
    if root is not None:
        root = Path(root).resolve()
        if root.name in SUBSETS and (root / SPLIT_FOLDERS["train"]).is_dir():
            own = root.name
    if own is not None and subset is not None and subset != own:
        raise DatasetLayoutError(
            f"{root}: this is the {own!r} subset folder, but subset={subset!r} was asked; "
            f"pass subset={own!r} or leave it out"
        )
    return subset or own or DEFAULT_SUBSET


def parse(root: str | os.PathLike, *, subset: str | None = None) -> Split:
    """Parse one subset of the extracted CUHK03-NP folder.

    Args:
        root: `cuhk03-np/`, or one of its subset folders.
        subset: "labeled" or "detected"; default: the folder's own subset when `root` is a subset folder, else
            "labeled" (see `subset_of`).
    """
    subset = subset_of(root, subset)
    root = Path(root).resolve()
    folder = root / subset
    if not folder.is_dir() and (root / SPLIT_FOLDERS["train"]).is_dir():
        folder = root
    return parse_folders(
        folder,
        pattern=NAME_PATTERN,
        example=NAME_EXAMPLE,
        release=f"the {subset!r} subset folder of the extracted cuhk03-np folder",
    )


BENCHMARK = Benchmark(
    title="CUHK03-NP",
    parse=parse,
    official_stats={
        "labeled": {
            "train": SplitStats(images=7_368, identities=767, cameras=2),
            "query": SplitStats(images=1_400, identities=700, cameras=2),
            "gallery": SplitStats(images=5_328, identities=700, cameras=2),
        },
        "detected": {
            "train": SplitStats(images=7_365, identities=767, cameras=2),
            "query": SplitStats(images=1_400, identities=700, cameras=2),
            "gallery": SplitStats(images=5_332, identities=700, cameras=2),
        },
    },
    subset_of=subset_of,
)
