"""Plain records a benchmark parser returns, and the per-split counts used to check them.

A parser only maps file names to `ImageRecord`s; decoding, caching and tensors live elsewhere. Rows are kept
sorted by path because the row index of the training split is the exemplar-memory slot of that image, so the
order must not depend on the file system or on the order of a listing.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SPLIT_NAMES = ("train", "query", "gallery")


@dataclass(frozen=True)
class ImageRecord:
    """One image: its absolute path, the person id written in its name and its 0-based camera id."""

    path: str
    pid: int
    camid: int


@dataclass(frozen=True)
class Split:
    """The three splits of a benchmark, each a tuple of records sorted by path (sorted here, whatever the input)."""

    train: tuple[ImageRecord, ...]
    query: tuple[ImageRecord, ...]
    gallery: tuple[ImageRecord, ...]

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            object.__setattr__(self, name, tuple(sorted(getattr(self, name), key=lambda record: record.path)))

    def items(self) -> tuple[tuple[str, tuple[ImageRecord, ...]], ...]:
        """(split name, records) pairs in the order train, query, gallery."""
        return tuple((name, getattr(self, name)) for name in SPLIT_NAMES)


@dataclass(frozen=True)
class SplitStats:
    """Size of one split: images, distinct person ids and distinct cameras."""

    images: int
    identities: int
    cameras: int

    @classmethod
    def of(cls, pids: Iterable[int], camids: Iterable[int]) -> "SplitStats":
        """Count a split from its pid and camid columns (two sequences of equal length)."""
        pids, camids = list(pids), list(camids)
        return cls(images=len(pids), identities=len(set(pids)), cameras=len(set(camids)))


def compare_stats(measured: Mapping[str, SplitStats], official: Mapping[str, SplitStats]) -> list[str]:
    """Differences between measured and official counts, one readable line each (empty when they agree).

    Only the certain figures are compared: the image count of every split and the identity count of the
    training split. Query and gallery identity counts are left out because the toolkits disagree on whether
    distractor ids (pid 0) count as an identity.
    """
    problems = []
    for name, expected in official.items():
        got = measured[name]
        if got.images != expected.images:
            problems.append(f"{name}: {got.images} images, the official release has {expected.images}")
        if name == "train" and got.identities != expected.identities:
            problems.append(f"{name}: {got.identities} identities, the official release has {expected.identities}")
    return problems
