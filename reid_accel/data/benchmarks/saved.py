"""A re-ID dataset already in `datasets`' form: a folder written by `DatasetDict.save_to_disk`.

Such a folder holds splits train, query and gallery with columns image, pid, camid (0-based) and path, as
`load_benchmark` returns them, usually with the images embedded: a benchmark loaded here and saved, or a dataset
pulled from the Hub and saved (`load_dataset("USER/NAME").save_to_disk(FOLDER)`). Pixels are read from the stored
image bytes, so the original image folder need not exist any more. Nothing is parsed or cached: the folder is
memory-mapped as it is.

Official statistics: none.
"""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from reid_accel.data.records import NO_CAMERA, SPLIT_NAMES, Benchmark


def has_cameras(root: str | os.PathLike) -> bool:
    """Whether the saved train split records camera ids, read from its `camid` column alone (memory-mapped Arrow
    files, no image decoded). True where the folder cannot tell: loading it names what is wrong."""
    split, rows = Path(root) / SPLIT_NAMES[0], 0  # train
    try:
        for entry in json.loads((split / "state.json").read_text())["_data_files"]:
            with pa.memory_map(str(split / entry["filename"])) as source:
                cameras = pa.ipc.open_stream(source).read_all().column("camid")
                rows += len(cameras)
                if len(cameras) and pc.max(cameras).as_py() != NO_CAMERA:
                    return True
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return True
    return rows == 0


BENCHMARK = Benchmark(title="saved re-ID dataset", parse=None, has_cameras=has_cameras)  # read as it is, never parsed
