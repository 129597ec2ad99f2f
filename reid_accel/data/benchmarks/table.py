"""A user's own crops listed in a table, as labelling tools export them: CSV or Parquet.

`root` is the folder of the images and holds the table (option `table`, default `labels.csv`; `.csv`, `.parquet`
or `.pq`). Columns, by name, in any order:

| column   | required | what                                                                         |
|----------|----------|------------------------------------------------------------------------------|
| `path`   | yes      | the image, relative to `root` (or absolute, inside `root`)                   |
| `person` | yes      | the person's name or number                                                  |
| `camera` | no       | the camera's name or number; without the column the data has no cameras      |
| `split`  | no       | `train`, `query`, `gallery`, or `test` (made into query and gallery)         |

Other columns are ignored. Ids are assigned in sorted order of the names and missing splits are made as `own_data`
describes (options `test_fraction`, `split_seed`). Without cameras every image gets camera id -1: camera-agnostic
training and evaluation work (evaluation then counts same-camera matches), camera-aware training refuses to start.
Errors name the table's row (`labels.csv:12`, the header being line 1).

Official statistics: none.
"""

import csv
import os
from pathlib import Path

from reid_accel.data.benchmarks.own_data import LabelledImage, build_split, check_split_options
from reid_accel.data.records import Benchmark, Split
from reid_accel.errors import DatasetLayoutError

DEFAULT_TABLE = "labels.csv"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
REQUIRED_COLUMNS = ("path", "person")
CAMERA_COLUMN, SPLIT_COLUMN = "camera", "split"


def _table_path(root: Path, table: str) -> Path:
    path = root / table
    if Path(table).is_absolute() or ".." in Path(table).parts:
        raise DatasetLayoutError(f"option table={table!r}: give the table's name inside the root folder {root}")
    if path.suffix.lower() not in FORMATS:
        raise DatasetLayoutError(f"{path}: expected a table ending in {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: table not found")
    return path


def _columns(path: Path) -> list[str]:
    """The table's column names, read from its header (CSV) or schema (Parquet), without reading the rows."""
    if FORMATS[path.suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with path.open(newline="", encoding="utf-8-sig") as file:
        return next(csv.reader(file), [])


def _rows(path: Path) -> list[dict[str, str | None]]:
    """Every row as strings (None for an empty cell), in file order."""
    if FORMATS[path.suffix.lower()] == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [{k: None if v is None or str(v) == "" else str(v) for k, v in row.items()} for row in rows]
    with path.open(newline="", encoding="utf-8-sig") as file:
        return [{k: v if v != "" else None for k, v in row.items()} for row in csv.DictReader(file)]


def has_cameras(
    root: str | os.PathLike, *, table: str = DEFAULT_TABLE, test_fraction: float | None = None, split_seed: int = 0
) -> bool:
    """Whether the table has a `camera` column (its header is read, no row)."""
    return CAMERA_COLUMN in _columns(_table_path(Path(root).resolve(), table))


def parse(
    root: str | os.PathLike, *, table: str = DEFAULT_TABLE, test_fraction: float | None = None, split_seed: int = 0
) -> Split:
    """Parse a labelling tool's table of crops (module docstring).

    Args:
        root: the folder of the images, holding the table.
        table: the table's file name inside `root`.
        test_fraction: share of the people held out for query and gallery when the table has no split column;
            None: query and gallery are made from everyone.
        split_seed: seeds the held-out people and the query draws.
    """
    check_split_options(test_fraction, split_seed)
    root = Path(root).resolve()
    path = _table_path(root, table)
    columns = _columns(path)
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise DatasetLayoutError(f"{path}: no column {', '.join(missing)} (it has {', '.join(columns) or 'none'})")
    images = []
    for line, row in enumerate(_rows(path), start=2):
        where = f"{path}:{line}"
        for name in REQUIRED_COLUMNS:
            if row.get(name) is None:
                raise DatasetLayoutError(f"{where}: empty {name}")
        image = (root / row["path"]).resolve()
        if not image.is_relative_to(root):
            raise DatasetLayoutError(f"{where}: {row['path']} lies outside the root folder {root}")
        if not image.is_file():
            raise DatasetLayoutError(f"{where}: {image} does not exist")
        images.append(
            LabelledImage(
                path=image,
                person=row["person"],
                camera=row.get(CAMERA_COLUMN) if CAMERA_COLUMN in columns else None,
                split=row.get(SPLIT_COLUMN),
                where=where,
            )
        )
    if CAMERA_COLUMN in columns and all(image.camera is None for image in images):
        raise DatasetLayoutError(f"{path}: the column {CAMERA_COLUMN} is empty; fill it or drop it")
    return build_split(images, source=path, test_fraction=test_fraction, split_seed=split_seed)


BENCHMARK = Benchmark(title="table of labelled crops", parse=parse, has_cameras=has_cameras)
