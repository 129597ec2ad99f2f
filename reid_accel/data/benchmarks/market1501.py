"""Market-1501 (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015).

URL: https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html. `root` is the extracted
`Market-1501-v15.09.15/` folder holding `bounding_box_train/`, `query/` and `bounding_box_test/`, images named
`0002_c1s1_000451_03.jpg` (pid, camera 1-6, sequence, frame, box). Junk images (pid -1) are dropped from every
split; distractors (pid 0) stay in the gallery. Non-image files such as `Thumbs.db` are ignored.

Official statistics (junk removed), 6 cameras:

| split   | images | identities            |
|---------|-------:|-----------------------|
| train   | 12,936 | 751                   |
| query   |  3,368 | 750                   |
| gallery | 15,913 | 751 (750 + pid 0)     |
"""

import os
import re

from reid_accel.data.benchmarks.market_style import parse_folders
from reid_accel.data.records import Benchmark, Split, SplitStats

NAME_PATTERN = re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d)s\d+_\d+_\d+\.jpg")
NAME_EXAMPLE = "<pid>_c<camera>s<sequence>_<frame>_<box>.jpg, e.g. 0002_c1s1_000451_03.jpg"


def parse(root: str | os.PathLike) -> Split:
    """Parse the extracted Market-1501 folder."""
    return parse_folders(
        root, pattern=NAME_PATTERN, example=NAME_EXAMPLE, release="the extracted Market-1501-v15.09.15 folder"
    )


BENCHMARK = Benchmark(
    title="Market-1501",
    parse=parse,
    official_stats={
        "train": SplitStats(images=12_936, identities=751, cameras=6),
        "query": SplitStats(images=3_368, identities=750, cameras=6),
        "gallery": SplitStats(images=15_913, identities=751, cameras=6),
    },
)
