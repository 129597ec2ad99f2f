"""Benchmarks as `datasets.DatasetDict`s, parsed once and then read from the `datasets` cache.

Each split is an Arrow table with columns `image` (a `datasets.Image` holding the path only: images are decoded
lazily, their bytes are never copied into Arrow), `pid`, `camid` (0-based) and `path`, rows sorted by path so the
row index of `train` is the exemplar-memory slot of that image.

Parsing MSMT17 means reading 126k names, so the tables are cached under a fingerprint of what the parser reads:
the resolved root, the parser's options, a digest of the file listing below the root (one `os.scandir` walk:
image names, and the names, sizes and modification times of the other files such as split lists) and
`PARSER_VERSION` (bump it whenever a parser's output changes). A changed folder gets a new fingerprint and is
parsed again; an unchanged one is memory-mapped from the cache. A cache entry is written to a hidden sibling
folder and renamed into place, so processes starting together never read a half-written entry (the training
engine additionally builds it on the main process first). Entries of superseded listings are not deleted: a
cache folder can be removed at any time. This is the only module of the data layer that imports `datasets`
(the other is the shipped `evaluate` metric module, `metrics/reid_ranking`).
"""

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Image, NamedSplit, Value, load_from_disk
from datasets import config as datasets_config
from datasets.arrow_writer import ArrowWriter

from reid_accel.data.benchmarks import check_root, get_benchmark, split_options
from reid_accel.data.benchmarks.market_style import IMAGE_SUFFIXES
from reid_accel.data.records import NO_CAMERA, SPLIT_NAMES, ImageRecord, Split, SplitStats
from reid_accel.errors import DatasetLayoutError
from reid_accel.fileio import atomic_directory

logger = logging.getLogger(__name__)

PARSER_VERSION = 1
FEATURES = Features(
    {"image": Image(mode="RGB"), "pid": Value("int64"), "camid": Value("int64"), "path": Value("string")}
)
CACHE_SUBFOLDER = "reid_accel"


def default_cache_dir() -> Path:
    """`datasets`' own cache (`HF_DATASETS_CACHE`), in a `reid_accel` subfolder."""
    return Path(datasets_config.HF_DATASETS_CACHE) / CACHE_SUBFOLDER


def listing_digest(root: Path) -> str:
    """Digest of what a parser can read below `root`, without opening a file.

    Images enter by relative name only: parsers read nothing but their names, and a stat per image would cost
    more than the rest of a cached load. Every other file (split lists) enters with its size and modification
    time. Names are hashed per folder, sorted, so the digest does not depend on the listing order.
    """
    folders = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        images, others = [], []
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.lower().endswith(IMAGE_SUFFIXES) and not entry.is_dir():
                    images.append(name)
                elif entry.is_dir():
                    stack.append((Path(entry.path), f"{prefix}{name}/"))
                else:
                    stat = entry.stat()
                    others.append(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}")
        folders.append((prefix, sorted(images), sorted(others)))
    digest = hashlib.blake2b(digest_size=16)
    for prefix, images, others in sorted(folders):
        digest.update(f"\0{prefix}\0{len(images)}\0{len(others)}\0".encode())
        digest.update("\n".join(images + others).encode())
    return digest.hexdigest()


def fingerprint(benchmark: str, root: Path, parse_options: dict[str, Any]) -> str:
    """Cache key of a parse: benchmark, parser options, resolved root, file listing and `PARSER_VERSION`."""
    key = "\n".join(
        [f"version={PARSER_VERSION}", benchmark, repr(sorted(parse_options.items())), str(root), listing_digest(root)]
    )
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _split_table(records: tuple[ImageRecord, ...]) -> pa.Table:
    columns = {
        "image": [record.path for record in records],
        "pid": [record.pid for record in records],
        "camid": [record.camid for record in records],
        "path": [record.path for record in records],
    }
    return pa.Table.from_pydict(FEATURES.encode_batch(columns), schema=FEATURES.arrow_schema)


def _write_cache(entry: Path, split: Split, key: str) -> None:
    """Write the three tables into a hidden sibling of `entry` and rename it into place (atomic)."""
    try:
        with atomic_directory(entry) as staging:
            for name, records in split.items():
                arrow = str(staging / f"{name}.arrow")
                with ArrowWriter(features=FEATURES, path=arrow, fingerprint=f"{key}-{name}") as w:
                    w.write_table(_split_table(records))
                    w.finalize()
    except FileExistsError:
        if not entry.is_dir():
            raise
        logger.info("Another process cached %s first; using its tables", entry)


def _read_cache(entry: Path, benchmark: str) -> DatasetDict:
    """Memory-map the three tables of a cache entry."""
    info = DatasetInfo(dataset_name=benchmark, features=FEATURES)
    return DatasetDict(
        {
            name: Dataset.from_file(str(entry / f"{name}.arrow"), info=info, split=NamedSplit(name))
            for name in SPLIT_NAMES
        }
    )


def load_benchmark(
    name: str, root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, **options: Any
) -> DatasetDict:
    """Load a benchmark as a `DatasetDict` with splits train, query and gallery, parsing it only when needed.

    Args:
        name: a key of `reid_accel.data.benchmarks.BENCHMARKS` or an alias (market, duke, cuhk, msmt).
        root: the benchmark folder as extracted (see the benchmark's module).
        cache_dir: where parsed tables are kept; default `datasets`' cache, subfolder `reid_accel`.
        **options: the benchmark's own options (e.g. `subset` for cuhk03, `domain`/`seed` for synthetic);
            any other key raises.

    Returns:
        Splits with columns image, pid, camid, path, rows sorted by path.

    Raises:
        DatasetLayoutError: unknown benchmark or option, missing folder, or a layout the parser rejects.
    """
    canonical, benchmark = get_benchmark(name)
    root = Path(root).expanduser().resolve()
    prepare_options, parse_options = split_options(canonical, options, root=root)
    if benchmark.notice is not None:
        logger.warning(benchmark.notice)
    if benchmark.prepare is not None:
        benchmark.prepare(root, **prepare_options)
    check_root(canonical, root)
    if benchmark.stored:
        return _warned_if_camera_free(load_saved(root), canonical, root)
    key = fingerprint(canonical, root, parse_options)
    entry = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{canonical}-{key}"
    if not entry.is_dir():
        start = time.perf_counter()
        split = benchmark.parse(root, **parse_options)
        _write_cache(entry, split, key)
        sizes = ", ".join(f"{name} {len(records)}" for name, records in split.items())
        logger.info("Parsed %s at %s (%s) in %.1f s", canonical, root, sizes, time.perf_counter() - start)
    else:
        logger.info("Loaded %s at %s from the cache %s", canonical, root, entry)
    return _warned_if_camera_free(_read_cache(entry, canonical), canonical, root)


def _warned_if_camera_free(dataset: DatasetDict, name: str, root: Path) -> DatasetDict:
    """`dataset`, after a warning when it records no cameras."""
    if pc.max(dataset["query"].data.column("camid")).as_py() == NO_CAMERA:
        logger.warning(
            "%s at %s records no cameras: evaluation counts same-camera matches, camera-aware training is off",
            name,
            root,
        )
    return dataset


def load_saved(root: Path) -> DatasetDict:
    """A re-ID `DatasetDict` written by `save_to_disk`, checked for the splits and columns training reads.

    Raises:
        DatasetLayoutError: the folder is not a saved `DatasetDict`, or lacks a split or a column.
    """
    try:
        dataset = load_from_disk(str(root))
    except FileNotFoundError:
        raise DatasetLayoutError(f"{root}: not a dataset folder written by save_to_disk") from None
    if not isinstance(dataset, DatasetDict):
        raise DatasetLayoutError(f"{root}: holds one split; expected splits {', '.join(SPLIT_NAMES)}")
    missing = [name for name in SPLIT_NAMES if name not in dataset]
    if missing:
        raise DatasetLayoutError(f"{root}: no split {', '.join(missing)} (it has {', '.join(dataset)})")
    for name in SPLIT_NAMES:
        absent = [column for column in FEATURES if column not in dataset[name].column_names]
        if absent:
            raise DatasetLayoutError(f"{root}: split {name} has no column {', '.join(absent)}")
    logger.info("Loaded the saved dataset %s (%s)", root, ", ".join(f"{n} {len(dataset[n])}" for n in SPLIT_NAMES))
    return DatasetDict({name: dataset[name] for name in SPLIT_NAMES})


def column_values(split: Dataset, column: str) -> list:
    """One column as a Python list, read through Arrow (iterating a `datasets` Column is far slower)."""
    return split.with_format("arrow")[column].to_pylist()


def dataset_stats(dataset: DatasetDict) -> dict[str, SplitStats]:
    """Images, identities and cameras of each split."""
    return {
        name: SplitStats.of(column_values(split, "pid"), column_values(split, "camid"))
        for name, split in dataset.items()
    }


def decode_image(path: str, *, data: bytes | None = None) -> PIL.Image.Image:
    """Decode one image as RGB with the `datasets.Image` decoder, naming the file when it cannot be read.

    Args:
        path: the image file, read when `data` is None; otherwise only named in errors.
        data: the encoded image (PNG, JPEG, ...), as a split with embedded images stores it.
    """
    try:
        return FEATURES["image"].decode_example({"path": path, "bytes": data})
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        message = " ".join(str(err).split())
        raise DatasetLayoutError(f"{path}: unreadable image ({type(err).__name__}: {message})") from None


def verify_images(split: Dataset) -> int:
    """Decode every image of a split; returns how many were read.

    Raises:
        DatasetLayoutError: at the first image that cannot be decoded, naming its path.
    """
    paths = column_values(split, "path")
    for path in paths:
        decode_image(path)
    return len(paths)


def stores_image_bytes(split: Dataset) -> bool:
    """Whether the `image` column holds encoded images rather than paths only.

    The cached benchmark tables hold paths only. A split saved with `save_to_disk` or pushed to the Hub and loaded
    back holds the bytes, and its `path` column names files that need not exist any more: read pixels from it.
    """
    return any(chunk.field("bytes").null_count < len(chunk) for chunk in split.data.column("image").chunks)


def decode_stored_image(rows: Dataset, index: int) -> PIL.Image.Image:
    """Decode row `index`'s image from the bytes stored in its `image` cell (from its path where it has none).

    Args:
        rows: the split in Arrow format, `split.with_format("arrow")`, made once: formatting costs ~1 ms a call.
        index: the row.
    """
    cell = rows[index].column("image")[0].as_py()  # {"bytes": b"..." or None, "path": "0001_c1s1_000001_00.jpg"}
    return decode_image(cell["path"] or f"row {index}", data=cell["bytes"])
