"""Generic Market-1501-style folders, and the folder reader the Market-style benchmarks share.

Layout: `bounding_box_train/` (train), `query/` and `bounding_box_test/` (gallery), flat folders of images named
`<pid>_c<camera>...` with a `.jpg`, `.jpeg` or `.png` suffix. Cameras are numbered from 1 in the name and from 0
in the records. Images of pid -1 (junk) are dropped from every split; pid 0 (distractors) stays. Files that are
not images (`Thumbs.db`, `world.json`) and hidden files are ignored; an image whose name breaks the convention is
an error rather than a silent skip, so a wrong folder is noticed. Market-1501, DukeMTMC-reID, CUHK03-NP and the
synthetic worlds all use this layout with their own stricter name patterns.

Official statistics: none (any folder in this layout).
"""

import os
import re
from pathlib import Path

from reid_accel.data.records import Benchmark, ImageRecord, Split
from reid_accel.errors import DatasetLayoutError

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JUNK_PID = -1
NAME_PATTERN = re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:\D.*)?\.(?:jpg|jpeg|png)", re.IGNORECASE)
NAME_EXAMPLE = "<pid>_c<camera>....jpg (or .jpeg, .png), e.g. 0002_c1_0001.jpg"


def read_split_folder(folder: Path, *, pattern: re.Pattern, example: str) -> list[ImageRecord]:
    """Records of the images in one flat split folder, junk (pid -1) left out.

    Args:
        folder: an absolute split folder such as `<root>/bounding_box_train`.
        pattern: full-match pattern of an image name with groups `pid` and `cam` (1-based camera).
        example: the naming convention, quoted in error messages.

    Raises:
        DatasetLayoutError: the folder is missing, an image name breaks the pattern, or no image is left.
    """
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder}: split folder not found; expected a folder of images named {example}")
    records = []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES) or not entry.is_file():
                continue
            match = pattern.fullmatch(name)
            if match is None:
                raise DatasetLayoutError(f"{folder / name}: file name does not follow the convention {example}")
            pid, camera = int(match["pid"]), int(match["cam"])
            if camera < 1:
                raise DatasetLayoutError(f"{folder / name}: camera number {camera}; cameras are numbered from 1")
            if pid != JUNK_PID:
                records.append(ImageRecord(path=str(folder / name), pid=pid, camid=camera - 1))
    if not records:
        raise DatasetLayoutError(f"{folder}: no images named {example} (junk pid -1 aside)")
    return records


def parse_folders(root: str | os.PathLike, *, pattern: re.Pattern, example: str, release: str) -> Split:
    """Parse a folder holding the three Market-style split folders.

    Args:
        root: the folder holding `bounding_box_train/`, `query/` and `bounding_box_test/`.
        pattern: full-match pattern of an image name, with groups `pid` and `cam`.
        example: the naming convention, quoted in error messages.
        release: what `root` should be (e.g. "the extracted Market-1501-v15.09.15 folder"), for error messages.
    """
    root = Path(root).resolve()
    if not (root / SPLIT_FOLDERS["train"]).is_dir():
        folders = ", ".join(f"{name}/" for name in SPLIT_FOLDERS.values())
        raise DatasetLayoutError(f"{root}: expected {release} holding {folders}")
    split = {
        name: read_split_folder(root / folder, pattern=pattern, example=example)
        for name, folder in SPLIT_FOLDERS.items()
    }
    return Split(**split)


def parse(root: str | os.PathLike) -> Split:
    """Parse any folder in Market-1501's layout (names `<pid>_c<camera>...`, jpg/jpeg/png)."""
    return parse_folders(root, pattern=NAME_PATTERN, example=NAME_EXAMPLE, release="a Market-style folder")


BENCHMARK = Benchmark(title="Market-style folder", parse=parse)
