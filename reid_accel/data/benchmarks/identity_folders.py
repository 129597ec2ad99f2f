"""A user's own crops sorted into one folder per person, as most cropping and labelling tools leave them.

Layouts, `root` being the folder given:

- `root/<person>/<image>`: no cameras, unless `camera_pattern` (a regular expression searched in each file name,
  its group `camera` or its first group naming the camera, e.g. `_c(\\d+)_` for `0001_c3_17.jpg`) finds one;
- `root/<person>/<camera>/<image>` with `camera_level=2`;
- `root/<camera>/<person>/<image>` with `camera_level=1` (one export per camera).

Images are `.jpg`, `.jpeg`, `.png`, `.bmp` or `.webp`; hidden files and other files are ignored. Folder names are
the people's and cameras' names; ids are assigned in sorted order, splits are made as `own_data` describes
(options `test_fraction`, `split_seed`). Without cameras every image gets camera id -1: camera-agnostic training
and evaluation work (evaluation then counts same-camera matches), camera-aware training refuses to start.

Official statistics: none.
"""

import os
import re
from pathlib import Path

from reid_accel.data.benchmarks.own_data import LabelledImage, build_split, check_split_options
from reid_accel.data.records import Benchmark, Split
from reid_accel.errors import DatasetLayoutError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CAMERA_LEVELS = (1, 2)


def _camera_regex(camera_level: int | None, camera_pattern: str | None) -> re.Pattern | None:
    """Check the camera options; the compiled pattern when one is given."""
    if camera_level is not None and camera_level not in CAMERA_LEVELS:
        raise DatasetLayoutError(
            f"option camera_level={camera_level!r}: expected 1 (root/<camera>/<person>/) or 2 (root/<person>/<camera>/)"
        )
    if camera_pattern is None:
        return None
    if camera_level is not None:
        raise DatasetLayoutError("options camera_level and camera_pattern exclude each other; give one")
    try:
        regex = re.compile(camera_pattern)
    except (re.error, TypeError) as err:
        raise DatasetLayoutError(
            f"option camera_pattern={camera_pattern!r}: not a regular expression ({err})"
        ) from None
    if regex.groups == 0:
        raise DatasetLayoutError(f"option camera_pattern={camera_pattern!r}: needs a group that captures the camera")
    return regex


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(subfolders, image files) of one folder, sorted; hidden entries and other files left out."""
    folders, images = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(Path(entry.path))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                images.append(Path(entry.path))
    return sorted(folders), sorted(images)


def _leaf_images(folder: Path, *, what: str) -> list[Path]:
    """The images of a folder that must hold images only (a person's, or a person's view from one camera)."""
    subfolders, images = _entries(folder)
    if subfolders:
        hint = "; is camera_level=2 meant?" if what == "person" else ""
        raise DatasetLayoutError(f"{subfolders[0]}: a folder inside a {what} folder{hint}")
    if not images:
        raise DatasetLayoutError(f"{folder}: empty {what} folder (no {', '.join(IMAGE_SUFFIXES)} images)")
    return images


def _read(root: Path, camera_level: int | None, regex: re.Pattern | None) -> list[LabelledImage]:
    top, stray = _entries(root)
    if stray:
        raise DatasetLayoutError(f"{stray[0]}: an image directly in the root; expected root/<person>/<image>")
    if not top:
        raise DatasetLayoutError(f"{root}: no person folders; expected root/<person>/<image>")
    found = []
    for outer in top:
        if camera_level is None:
            found += [(outer.name, None, path) for path in _leaf_images(outer, what="person")]
            continue
        inner, stray = _entries(outer)
        if stray:
            raise DatasetLayoutError(f"{stray[0]}: an image outside a camera folder (camera_level={camera_level})")
        if not inner:
            raise DatasetLayoutError(f"{outer}: empty {'camera' if camera_level == 1 else 'person'} folder")
        for folder in inner:
            person, camera = (folder.name, outer.name) if camera_level == 1 else (outer.name, folder.name)
            found += [(person, camera, path) for path in _leaf_images(folder, what="person and camera")]
    images = []
    for person, camera, path in found:
        if regex is not None:
            match = regex.search(path.name)
            if match is None:
                raise DatasetLayoutError(f"{path}: camera_pattern {regex.pattern!r} finds no camera in this name")
            camera = match["camera"] if "camera" in regex.groupindex else match[1]
        images.append(LabelledImage(path=path, person=person, camera=camera, where=str(path)))
    return images


def has_cameras(
    root: str | os.PathLike,
    *,
    camera_level: int | None = None,
    camera_pattern: str | None = None,
    test_fraction: float | None = None,
    split_seed: int = 0,
) -> bool:
    """Whether a parse with these options records cameras (it does when either camera option is given)."""
    return camera_level is not None or camera_pattern is not None


def parse(
    root: str | os.PathLike,
    *,
    camera_level: int | None = None,
    camera_pattern: str | None = None,
    test_fraction: float | None = None,
    split_seed: int = 0,
) -> Split:
    """Parse a folder of identities (module docstring).

    Args:
        root: the folder holding one folder per person (or per camera, with `camera_level=1`).
        camera_level: 1 or 2, the folder level that names the camera; None: no camera folders.
        camera_pattern: a regular expression finding the camera in each file name; None: none.
        test_fraction: share of the people held out for query and gallery; None: query and gallery are made
            from everyone.
        split_seed: seeds the held-out people and the query draws.
    """
    regex = _camera_regex(camera_level, camera_pattern)
    check_split_options(test_fraction, split_seed)
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: folder not found; expected root/<person>/<image>")
    images = _read(root, camera_level, regex)
    return build_split(images, source=root, test_fraction=test_fraction, split_seed=split_seed)


BENCHMARK = Benchmark(title="folder of identities", parse=parse, has_cameras=has_cameras)
