"""MSMT17 (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person Re-Identification", CVPR 2018).

URL: https://www.pkuvmc.com/dataset.html. `root` is the extracted `MSMT17_V1/` folder (images in `train/` and
`test/`) or `MSMT17_V2/` (images in `mask_train_v2/` and `mask_test_v2/`), beside the official split files
`list_train.txt`, `list_val.txt`, `list_query.txt` and `list_gallery.txt`. Each line of a list is
`<path relative to the image folder> <pid>`; the file name reads `<pid>_<index>_<camera>_<date><time>_...jpg`
with cameras numbered 1-15. As in the common toolkits, `train` is the train list followed by the val list
(30,248 + 2,373 images). Train and test ids are numbered separately, each from 0.

Official statistics, 15 cameras:

| split   | images | identities |
|---------|-------:|-----------:|
| train   | 32,621 | 1,041      |
| query   | 11,659 | 3,060      |
| gallery | 82,161 | 3,060      |
"""

import os
import re
from pathlib import Path

from reid_accel.data.records import Benchmark, ImageRecord, Split, SplitStats
from reid_accel.errors import DatasetLayoutError

IMAGE_FOLDERS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
LISTS = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",), "gallery": ("list_gallery.txt",)}
NAME_PATTERN = re.compile(r"\d+_\d+_(?P<cam>\d+)_[^/]*\.jpg")
NAME_EXAMPLE = "<pid>_<index>_<camera>_<date><time>_<frame>_<n>.jpg, e.g. 0000_000_01_0303morning_0015_0.jpg"


def _image_folders(root: Path) -> tuple[Path, Path]:
    """(train, test) image folders of whichever release `root` is."""
    for train, test in IMAGE_FOLDERS.values():
        if (root / train).is_dir() and (root / test).is_dir():
            return root / train, root / test
    expected = " or ".join(f"{train}/ and {test}/" for train, test in IMAGE_FOLDERS.values())
    raise DatasetLayoutError(f"{root}: expected the extracted MSMT17_V1 or MSMT17_V2 folder holding {expected}")


def _relative_files(folder: Path) -> set[str]:
    """Every file below `folder`, as POSIX paths relative to it (one listing instead of a stat per list line)."""
    found = set()
    stack = [(folder, "")]
    while stack:
        path, prefix = stack.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append((Path(entry.path), f"{prefix}{entry.name}/"))
                else:
                    found.add(f"{prefix}{entry.name}")
    return found


def _read_list(list_file: Path, folder: Path, existing: set[str]) -> list[ImageRecord]:
    """Records named by one split file, each checked against the listing of its image folder."""
    if not list_file.is_file():
        raise DatasetLayoutError(f"{list_file}: split file not found; expected lines '<relative path> <pid>'")
    records = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetLayoutError(f"{list_file}:{lineno}: {line!r} is not '<relative path> <pid>'")
        relative, pid = fields[0], int(fields[1])
        match = NAME_PATTERN.fullmatch(relative.rsplit("/", 1)[-1])
        if match is None:
            raise DatasetLayoutError(f"{list_file}:{lineno}: {relative} does not follow the convention {NAME_EXAMPLE}")
        if relative not in existing:
            raise DatasetLayoutError(f"{list_file}:{lineno}: names {folder / relative}, which does not exist")
        camera = int(match["cam"])
        if camera < 1:
            raise DatasetLayoutError(f"{list_file}:{lineno}: camera number {camera}; cameras are numbered from 1")
        records.append(ImageRecord(path=str(folder / relative), pid=pid, camid=camera - 1))
    if not records:
        raise DatasetLayoutError(f"{list_file}: the split file lists no image")
    return records


def parse(root: str | os.PathLike) -> Split:
    """Parse the extracted MSMT17 folder (V1 or V2) from its official split files."""
    root = Path(root).resolve()
    train_folder, test_folder = _image_folders(root)
    listings = {folder: _relative_files(folder) for folder in (train_folder, test_folder)}
    split = {}
    for name, list_names in LISTS.items():
        folder = train_folder if name == "train" else test_folder
        split[name] = [
            record for list_name in list_names for record in _read_list(root / list_name, folder, listings[folder])
        ]
    return Split(**split)


BENCHMARK = Benchmark(
    title="MSMT17",
    parse=parse,
    official_stats={
        "train": SplitStats(images=32_621, identities=1_041, cameras=15),
        "query": SplitStats(images=11_659, identities=3_060, cameras=15),
        "gallery": SplitStats(images=82_161, identities=3_060, cameras=15),
    },
)
