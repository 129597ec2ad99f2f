"""Look-alike benchmark folders: each release's exact layout and file-name conventions, with tiny images.

They let the parsers, the cache and a whole training run be checked without the real downloads: tests use small
ones, `scripts/bench_data_load.py` an MSMT17-sized one, and `reid-accel data lookalike` writes one for a user.
Passing a benchmark's `official_stats` as `stats` gives a folder with the official image and identity counts.

Identities are dealt round-robin over a split's images and cameras rotate with each pass, so every identity
appears in several cameras; the gallery's identities are the query's followed by gallery-only ones (pid 0
distractors for Market-style folders, further ids for DukeMTMC-reID), and the first gallery image of an
identity comes from another camera than its first query image. Train and test identities are disjoint. Every
image of one identity and camera has the same colours. The same arguments always give the same files, and a
folder is written beside `root` and renamed into place, so it appears complete or not at all.
"""

import contextlib
import functools
import io
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import PIL.Image

from reid_accel.data.benchmarks.market_style import SPLIT_FOLDERS
from reid_accel.data.benchmarks.msmt17 import IMAGE_FOLDERS
from reid_accel.data.records import SplitStats
from reid_accel.errors import DatasetLayoutError
from reid_accel.fileio import atomic_directory

IMAGE_SIZE = (16, 8)  # (height, width) of every look-alike image
_PALETTE = [(200, 40, 40), (40, 160, 60), (40, 70, 200), (220, 200, 40), (150, 60, 180), (40, 190, 190)]


def _small(train: int, query: int, gallery: tuple[int, int], cameras: int) -> dict[str, SplitStats]:
    """Small default counts: `train` ids x 4 images, `query` ids x 2, gallery (images, ids)."""
    return {
        "train": SplitStats(images=4 * train, identities=train, cameras=cameras),
        "query": SplitStats(images=2 * query, identities=query, cameras=cameras),
        "gallery": SplitStats(images=gallery[0], identities=gallery[1], cameras=cameras),
    }


SMALL_STATS = {
    "market1501": _small(6, 4, (20, 5), 6),
    "dukemtmc": _small(6, 4, (20, 6), 8),
    "cuhk03": {"labeled": _small(6, 4, (16, 4), 2), "detected": _small(6, 4, (17, 4), 2)},
    "msmt17": _small(7, 4, (20, 4), 15),
    "market_style": _small(6, 4, (20, 5), 3),
}


@functools.cache
def _image_bytes(colour: int, camera_colour: int, suffix: str) -> bytes:
    """A tiny encoded image: upper half in the identity's colour, lower half in the camera's."""
    height, width = IMAGE_SIZE
    image = PIL.Image.new("RGB", (width, height), _PALETTE[camera_colour])
    image.paste(_PALETTE[colour], (0, 0, width, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if suffix == ".png" else "JPEG", quality=90)
    return buffer.getvalue()


def _write_image(folder: Path, name: str, pid: int, camera: int) -> None:
    # plain `open` on a str path: several times faster than Path.write_bytes over 100k small files
    with open(os.path.join(folder, name), "wb") as file:
        file.write(_image_bytes(pid % len(_PALETTE), camera % len(_PALETTE), os.path.splitext(name)[1]))


def _deal(stats: SplitStats, pids: list[int], *, camera_offset: int) -> list[tuple[int, int, int]]:
    """(pid, 0-based camera, occurrence of that pid) for each image of a split.

    Image k goes to identity k mod n; its camera shifts by one with each pass over the identities, and
    `camera_offset` shifts a whole split (the gallery's first image of an identity is not in its query camera).
    """
    if not 1 <= len(pids) <= stats.images or stats.cameras < 1:
        raise ValueError(f"cannot deal {stats.images} images over {len(pids)} identities and {stats.cameras} cameras")
    n = len(pids)
    return [(pids[k % n], (k % n + k // n + camera_offset) % stats.cameras, k // n) for k in range(stats.images)]


def _test_pids(stats: Mapping[str, SplitStats], first: int, *, distractor_pid0: bool) -> tuple[list[int], list[int]]:
    """Query pids and gallery pids (the query's, then gallery-only ones) numbered from `first`."""
    query, gallery = stats["query"].identities, stats["gallery"].identities
    if gallery < query:
        raise ValueError(f"the gallery needs every query identity: {gallery} < {query} identities")
    query_pids = list(range(first, first + query))
    extra = list(range(first + query, first + gallery))
    if distractor_pid0 and extra:
        extra = [0, *extra[:-1]]
    return query_pids, query_pids + extra


@contextlib.contextmanager
def _new_folder(root: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder that becomes `root` when the block succeeds; `root` must be new or empty."""
    root = Path(root)
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise DatasetLayoutError(f"{root}: already exists and is not empty; look-alike folders go to new folders")
    with atomic_directory(root) as staging:
        yield staging


def _write_market_like(
    root: Path,
    stats: Mapping[str, SplitStats],
    name_of: Callable[[int, int, int, int], str],
    *,
    distractor_pid0: bool,
    junk: int = 0,
) -> None:
    """The three Market-style split folders under `root`; `name_of(pid, camera, occurrence, frame)` names a file."""
    train_pids = list(range(1, stats["train"].identities + 1))
    query_pids, gallery_pids = _test_pids(stats, len(train_pids) + 1, distractor_pid0=distractor_pid0)
    pids = {"train": train_pids, "query": query_pids, "gallery": gallery_pids}
    for split, folder_name in SPLIT_FOLDERS.items():
        folder = root / folder_name
        folder.mkdir(parents=True)
        images = _deal(stats[split], pids[split], camera_offset=int(split == "gallery"))
        for frame, (pid, camera, occurrence) in enumerate(images):
            _write_image(folder, name_of(pid, camera, occurrence, frame), pid, camera)
    gallery = root / SPLIT_FOLDERS["gallery"]
    for k in range(junk):
        camera = k % stats["gallery"].cameras
        _write_image(gallery, name_of(-1, camera, k, stats["gallery"].images + k), -1, camera)


def write_market1501(root: str | os.PathLike, *, stats: Mapping[str, SplitStats] | None = None, junk: int = 3) -> Path:
    """A Market-1501 look-alike: names `0002_c1s1_000451_00.jpg`, pid 0 distractors, `junk` pid -1 gallery images
    and a `Thumbs.db` in each split folder (which the parser must skip).

    Args:
        root: the new `Market-1501-v15.09.15` folder.
        stats: counts per split (default `SMALL_STATS["market1501"]`); the gallery's identities include pid 0.
        junk: pid -1 images added to the gallery folder (the parser drops them).

    Returns:
        `root`.
    """

    def name_of(pid: int, camera: int, occurrence: int, frame: int) -> str:
        return f"{pid if pid < 0 else f'{pid:04d}'}_c{camera + 1}s1_{frame:06d}_00.jpg"

    with _new_folder(root) as folder:
        _write_market_like(folder, stats or SMALL_STATS["market1501"], name_of, distractor_pid0=True, junk=junk)
        for split_folder in SPLIT_FOLDERS.values():
            (folder / split_folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    return Path(root)


def write_dukemtmc(root: str | os.PathLike, *, stats: Mapping[str, SplitStats] | None = None) -> Path:
    """A DukeMTMC-reID look-alike (names `0001_c2_f0000123.jpg`, gallery-only identities); returns `root`.

    `stats` defaults to `SMALL_STATS["dukemtmc"]`.
    """

    def name_of(pid: int, camera: int, occurrence: int, frame: int) -> str:
        return f"{pid:04d}_c{camera + 1}_f{frame:07d}.jpg"

    with _new_folder(root) as folder:
        _write_market_like(folder, stats or SMALL_STATS["dukemtmc"], name_of, distractor_pid0=False)
    return Path(root)


def write_cuhk03_np(root: str | os.PathLike, *, stats: Mapping[str, Mapping[str, SplitStats]] | None = None) -> Path:
    """A CUHK03-NP look-alike (names `0001_c1_1.png`); returns `root`.

    `stats` is keyed by subset like the CUHK03-NP record's `official_stats` (default `SMALL_STATS["cuhk03"]`); one folder is
    written per subset.
    """

    def name_of(pid: int, camera: int, occurrence: int, frame: int) -> str:
        return f"{pid:04d}_c{camera + 1}_{occurrence + 1}.png"

    with _new_folder(root) as folder:
        for subset, subset_stats in (stats or SMALL_STATS["cuhk03"]).items():
            _write_market_like(folder / subset, subset_stats, name_of, distractor_pid0=False)
    return Path(root)


def write_market_style(root: str | os.PathLike, *, stats: Mapping[str, SplitStats] | None = None) -> Path:
    """A generic Market-style folder (names `0001_c1_000000.jpg`, pid 0 distractors); returns `root`.

    `stats` defaults to `SMALL_STATS["market_style"]`.
    """

    def name_of(pid: int, camera: int, occurrence: int, frame: int) -> str:
        return f"{pid:04d}_c{camera + 1}_{frame:06d}.jpg"

    with _new_folder(root) as folder:
        _write_market_like(folder, stats or SMALL_STATS["market_style"], name_of, distractor_pid0=True)
    return Path(root)


def write_msmt17(
    root: str | os.PathLike,
    *,
    stats: Mapping[str, SplitStats] | None = None,
    val_images: int | None = None,
    version: str = "V1",
) -> Path:
    """An MSMT17 look-alike with its four split files.

    Images go to `train/<pid>/` and `test/<pid>/` (V2: `mask_train_v2/`, `mask_test_v2/`), named
    `0000_000_01_0113morning_0000_0.jpg` (pid, occurrence, camera, date and time of day, frame); train and test
    ids are both numbered from 0, as in the release. The train split is divided between `list_train.txt` and
    `list_val.txt`, which receives `val_images` evenly spread images (default: one in fourteen, the release's
    ratio; the official 32,621 train images are 30,248 + 2,373). `stats` defaults to `SMALL_STATS["msmt17"]`.

    Returns:
        `root`.
    """
    if version not in IMAGE_FOLDERS:
        raise ValueError(f"MSMT17 version {version!r} is unknown; expected V1 or V2")
    train_folder, test_folder = IMAGE_FOLDERS[version]
    stats = stats or SMALL_STATS["msmt17"]
    train = stats["train"]
    val_images = train.images // 14 if val_images is None else val_images
    val_rows = {i * train.images // val_images for i in range(val_images)}
    query_pids, gallery_pids = _test_pids(stats, 0, distractor_pid0=False)
    pids = {"train": list(range(train.identities)), "query": query_pids, "gallery": gallery_pids}
    time_of_day = {"train": "morning", "query": "noon", "gallery": "afternoon"}  # keeps query/gallery names apart
    with _new_folder(root) as folder:
        lists: dict[str, list[str]] = {f"list_{name}.txt": [] for name in ("train", "val", "query", "gallery")}
        for split in ("train", "query", "gallery"):
            image_folder = folder / (train_folder if split == "train" else test_folder)
            images = _deal(stats[split], pids[split], camera_offset=int(split == "gallery"))
            for pid in pids[split]:
                (image_folder / f"{pid:04d}").mkdir(parents=True, exist_ok=True)
            for frame, (pid, camera, occurrence) in enumerate(images):
                name = f"{pid:04d}_{occurrence:03d}_{camera + 1:02d}_0113{time_of_day[split]}_{frame:04d}_0.jpg"
                relative = f"{pid:04d}/{name}"
                _write_image(image_folder, relative, pid, camera)
                list_name = f"list_{'val' if split == 'train' and frame in val_rows else split}.txt"
                lists[list_name].append(f"{relative} {pid}\n")
        for list_name, lines in lists.items():
            (folder / list_name).write_text("".join(lines))
    return Path(root)


WRITERS = {
    "market1501": write_market1501,
    "dukemtmc": write_dukemtmc,
    "cuhk03": write_cuhk03_np,
    "msmt17": write_msmt17,
    "market_style": write_market_style,
}
