"""What the two readers of a user's own data share: checks, id assignment and the query/gallery they make.

A user's crops come without the benchmarks' guarantees, so both readers (`identity_folders`, `table`) hand their
labelled images to `build_split`, which refuses bad input in one line naming the file or table row, numbers
people and cameras, and makes the splits the data does not have:

- **Person ids** are the people's names in sorted order (0, 1, ...); **camera ids** likewise, or `NO_CAMERA` for
  every image when the data records none.
- **train / test**: with `test_fraction`, that share of the people (seeded by `split_seed`, at least one on each
  side) is held out for query and gallery and the others train; without it every image trains and query/gallery
  are made from all of them (the usual setting for an unlabelled target domain, whose labels training never reads;
  for a labelled source it measures training identities: ask for a `test_fraction`).
- **query / gallery**: for each test person and each camera (cameras in sorted order), one image drawn with
  `split_seed` becomes a query when the person keeps a gallery image it can match: one from another camera (the
  standard cross-camera protocol), or any other image when there are no cameras. Every other image is gallery.

Unlike the benchmark parsers, these readers open every image once, header only (`PIL.Image.open` reads a few
bytes, no pixels): crops written by cropping and labelling tools are often empty or cut short, and an unreadable
file found here costs nothing, found in the middle of a training epoch it costs the run.
"""

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from reid_accel.data.records import NO_CAMERA, ImageRecord, Split
from reid_accel.errors import DatasetLayoutError

SPLIT_VALUES = ("train", "query", "gallery", "test")  # "test": made into query and gallery


@dataclass(frozen=True)
class LabelledImage:
    """One image as a reader found it, before ids are assigned.

    Attributes:
        path: the absolute image path.
        person: the person's name (a folder name, a table cell).
        camera: the camera's name, or None when the data records no cameras.
        split: "train", "query", "gallery" or "test" where the data says; None to let `build_split` decide.
        where: where it was read, for error messages (the file itself, or `labels.csv:12`).
    """

    path: Path
    person: str
    camera: str | None
    split: str | None = None
    where: str = ""


def check_split_options(test_fraction: float | None, split_seed: int) -> None:
    """Refuse a `test_fraction` outside (0, 1) or a `split_seed` that is not a whole number, naming the option."""
    if test_fraction is not None and not (isinstance(test_fraction, int | float) and 0 < test_fraction < 1):
        raise DatasetLayoutError(f"option test_fraction={test_fraction!r}: expected a number between 0 and 1")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise DatasetLayoutError(f"option split_seed={split_seed!r}: expected a whole number")


def check_readable(images: Iterable[LabelledImage]) -> None:
    """Open every image's header (no pixels are decoded).

    Raises:
        DatasetLayoutError: naming the first file that is missing, empty or not an image.
    """
    for image in images:
        try:
            with PIL.Image.open(image.path) as opened:
                opened.size  # noqa: B018 (the header is parsed on open; size proves it was)
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
            reason = "empty file" if image.path.is_file() and image.path.stat().st_size == 0 else type(err).__name__
            raise DatasetLayoutError(
                f"{image.where or image.path}: unreadable image {image.path} ({reason})"
            ) from None


def _by_person(images: list[LabelledImage]) -> dict[str, list[LabelledImage]]:
    """The images of each person, people in sorted order, images in input order."""
    views = defaultdict(list)
    for image in images:
        views[image.person].append(image)
    return {person: views[person] for person in sorted(views)}


def _all_or_none(images: list[LabelledImage], field: str) -> bool:
    """Whether every image has `field` ("camera", "split"); False when none has.

    Raises:
        DatasetLayoutError: naming the first image without it when others have it.
    """
    missing = [image for image in images if getattr(image, field) is None]
    if missing and len(missing) < len(images):
        raise DatasetLayoutError(f"{missing[0].where}: no {field}, though other images have one; give all or none")
    return not missing


def _ids(names: Iterable[str]) -> dict[str, int]:
    return {name: index for index, name in enumerate(sorted(set(names)))}


def _make_query_gallery(
    images: list[LabelledImage], rng: random.Random
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """One query per person and camera, when the person keeps a gallery image it can match (module docstring)."""
    queries = []
    for rest in _by_person(images).values():
        rest = sorted(rest, key=lambda image: str(image.path))
        for camera in sorted({image.camera for image in rest}, key=str):
            group = [image for image in rest if image.camera == camera]
            candidate = group[rng.randrange(len(group))]
            matchable = [i for i in rest if i is not candidate and (camera is None or i.camera != camera)]
            if matchable:
                queries.append(candidate)
                rest.remove(candidate)
    chosen = {image.path for image in queries}
    return queries, [image for image in images if image.path not in chosen]


def build_split(
    images: list[LabelledImage], *, source: str | Path, test_fraction: float | None = None, split_seed: int = 0
) -> Split:
    """Check a reader's images and make the benchmark's splits (module docstring).

    Args:
        images: every labelled image, in any order.
        source: the folder or table read, named in errors about the whole dataset.
        test_fraction: share of the people held out for query and gallery; None: all people train, and query and
            gallery are made from all of them. Not allowed when the images carry their own split.
        split_seed: seeds the held-out people and the query draws.

    Raises:
        DatasetLayoutError: naming the file or row at fault: no image, a duplicate path, images with and without a
            camera, a person with a single image, a split value or `test_fraction` that does not fit, an
            unreadable image.
    """
    check_split_options(test_fraction, split_seed)
    if not images:
        raise DatasetLayoutError(f"{source}: no labelled images")
    seen: dict[Path, LabelledImage] = {}
    for image in images:
        if image.path in seen:
            raise DatasetLayoutError(f"{image.where}: duplicate image {image.path} (also at {seen[image.path].where})")
        seen[image.path] = image
        if image.split is not None and image.split not in SPLIT_VALUES:
            raise DatasetLayoutError(
                f"{image.where}: split {image.split!r}; expected one of {', '.join(SPLIT_VALUES)}"
            )
    has_cameras = _all_or_none(images, "camera")
    given = _all_or_none(images, "split")
    if given and test_fraction is not None:
        raise DatasetLayoutError(f"{source}: option test_fraction={test_fraction}, but the data has its own split")
    by_person = _by_person(images)
    for person, views in by_person.items():
        if len(views) == 1:
            raise DatasetLayoutError(
                f"{views[0].where}: the only image of person {person!r}; re-ID needs two or more per person"
            )
    check_readable(images)

    rng = random.Random(split_seed)
    if given:
        train = [image for image in images if image.split == "train"]
        query = [image for image in images if image.split == "query"]
        gallery = [image for image in images if image.split == "gallery"]
        made_query, made_gallery = _make_query_gallery([image for image in images if image.split == "test"], rng)
        query, gallery = query + made_query, gallery + made_gallery
    elif test_fraction is not None:
        people = sorted(by_person)
        rng.shuffle(people)
        held_out = min(max(round(test_fraction * len(people)), 1), len(people) - 1)
        if held_out < 1:
            raise DatasetLayoutError(f"{source}: option test_fraction={test_fraction}, but there is only one person")
        test_people = set(people[:held_out])
        train = [image for image in images if image.person not in test_people]
        query, gallery = _make_query_gallery([image for image in images if image.person in test_people], rng)
    else:
        train = list(images)
        query, gallery = _make_query_gallery(images, rng)
    if not query and not given and has_cameras:
        raise DatasetLayoutError(
            f"{source}: no person is seen by two cameras, so no query could have a match from another camera; "
            "leave the cameras out to evaluate with same-camera matches"
        )
    for name, part in (("train", train), ("query", query), ("gallery", gallery)):
        if not part:
            raise DatasetLayoutError(f"{source}: the {name} split is empty")

    pids = _ids(image.person for image in images)
    camids = _ids(image.camera for image in images) if has_cameras else {}

    def records(part: list[LabelledImage]) -> list[ImageRecord]:
        return [
            ImageRecord(
                path=str(image.path),
                pid=pids[image.person],
                camid=NO_CAMERA if image.camera is None else camids[image.camera],
            )
            for image in part
        ]

    return Split(train=records(train), query=records(query), gallery=records(gallery))
