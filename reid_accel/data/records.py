"""Plain records: what a benchmark is, what its parser returns, and the per-split counts used to check them.

A parser only maps file names to `ImageRecord`s; decoding, caching and tensors live elsewhere. Rows are kept
sorted by path because the row index of the training split is the exemplar-memory slot of that image, so the
order must not depend on the file system or on the order of a listing.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SPLIT_NAMES = ("train", "query", "gallery")
NO_CAMERA = (
    -1
)  # the camid of every image of a dataset that records no cameras (ranking then keeps same-camera matches)


@dataclass(frozen=True)
class ImageRecord:
    """One image: its absolute path, its person id and its 0-based camera id (`NO_CAMERA` where none is known)."""

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
    """Size of one split: images, distinct person ids and distinct cameras (0 when none is recorded)."""

    images: int
    identities: int
    cameras: int

    @classmethod
    def of(cls, pids: Iterable[int], camids: Iterable[int]) -> "SplitStats":
        """Count a split from its pid and camid columns (two sequences of equal length)."""
        pids, camids = list(pids), list(camids)
        return cls(images=len(pids), identities=len(set(pids)), cameras=len(set(camids) - {NO_CAMERA}))


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


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as reid-accel knows it, declared once in its module as `BENCHMARK` (loader and metadata together).

    Attributes:
        title: the name papers give it ("Market-1501"), for logs and model cards.
        parse: `parse(root, *, <options>) -> Split`, reading file names and split files only (never an image, never
            the network); None for a folder that is already a saved `DatasetDict` (`stored`).
        official_stats: split name -> counts of the official release, keyed first by subset when `parse` has a
            `subset` option; None when there is no official release.
        subset_of: `subset_of(root, subset) -> subset`, the subset a parse of `root` reads (the folder can name it);
            for benchmarks whose `parse` has a `subset` option.
        prepare: `prepare(root, *, <options>)`, run before the folder is read (the synthetic worlds draw themselves).
        notice: a line logged as a warning whenever the benchmark is loaded (a withdrawn dataset's terms).
        has_cameras: `has_cameras(root, *, <parse options>) -> bool`, whether the data records cameras (what a
            parse will give, or a saved folder holds), answered without parsing; None for benchmarks that always do.
    """

    title: str
    parse: Callable[..., Split] | None
    official_stats: Mapping[str, Any] | None = None
    subset_of: Callable[[Any, str | None], str] | None = None
    prepare: Callable[..., None] | None = None
    notice: str | None = None
    has_cameras: Callable[..., bool] | None = None

    @property
    def stored(self) -> bool:
        """The folder is a saved `DatasetDict`, read as it is instead of parsed."""
        return self.parse is None
