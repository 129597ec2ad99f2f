"""Where each gallery row came from: its path and, when known, person, camera, frame and time.

Fields come as lists, or are read from each path by a regular expression whose named groups are among `FIELDS`.
"""

import dataclasses
import math
import re
from collections.abc import Sequence

from reid_accel.errors import InputError

FIELDS = ("person", "camera", "frame", "time")


@dataclasses.dataclass
class Rows:
    """Each gallery row's source: ``path`` and, None where unknown, ``person``, ``camera``, ``frame``, ``time``."""

    path: list[str]
    person: list[str | None]
    camera: list[str | None]
    frame: list[int | None]
    time: list[float | None]

    @classmethod
    def build(
        cls,
        count: int,
        *,
        paths: Sequence[str] | None = None,
        persons: Sequence | None = None,
        cameras: Sequence | None = None,
        frames: Sequence | None = None,
        times: Sequence | None = None,
        pattern: str | None = None,
    ) -> "Rows":
        """Rows for ``count`` items; fields given as lists win over those the ``pattern`` reads from the paths."""
        paths = [str(p) for p in paths] if paths is not None else [""] * count
        parsed = [parse_fields(pattern, p) for p in paths] if pattern else [{}] * count
        given = {"person": persons, "camera": cameras, "frame": frames, "time": times}
        columns = {"path": paths}
        for field, values in given.items():
            if values is not None:
                columns[field] = [field_value(field, v) for v in values]
            else:
                columns[field] = [
                    field_value(field, row.get(field), path) for row, path in zip(parsed, paths, strict=True)
                ]
        for name, values in columns.items():
            if len(values) != count:
                raise InputError(f"{name}: {len(values)} values for {count} gallery items; expected one each")
        return cls(**columns)

    def __len__(self) -> int:
        return len(self.path)

    def extend(self, other: "Rows") -> None:
        for field in dataclasses.fields(self):
            getattr(self, field.name).extend(getattr(other, field.name))

    def to_arrow(self):
        import pyarrow as pa

        schema = pa.schema(
            [("path", pa.string()), ("person", pa.string()), ("camera", pa.string())]
            + [("frame", pa.int64()), ("time", pa.float64())]
        )
        return pa.Table.from_pydict(dataclasses.asdict(self), schema=schema)

    @classmethod
    def from_arrow(cls, table) -> "Rows":
        return cls(**{field.name: table.column(field.name).to_pylist() for field in dataclasses.fields(cls)})


def check_pattern(pattern: str | None) -> str | None:
    """The pattern, if it compiles and its named groups are among `FIELDS`; raises `InputError` otherwise."""
    if pattern is None:
        return None
    try:
        groups = set(re.compile(pattern).groupindex)
    except re.error as error:
        raise InputError(f"pattern {pattern!r} is not a regular expression: {error}") from None
    unknown = groups - set(FIELDS)
    if unknown or not groups:
        raise InputError(
            f"pattern {pattern!r}: named groups must be among {', '.join(FIELDS)}; found {sorted(groups)}"
        )
    return pattern


def parse_fields(pattern: str, path: str) -> dict:
    """The fields the pattern's named groups find in `path` (none where it does not match)."""
    found = re.search(pattern, path)
    return {k: v for k, v in found.groupdict().items() if v is not None} if found else {}


def field_value(field: str, value, path: str = ""):
    """A field's value in its column type: person and camera as text, frame as int, time as float; None unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        if field == "frame":
            return int(value)
        if field == "time":
            return float(value)
    except (TypeError, ValueError):
        source = f" (read from {path})" if path else ""
        raise InputError(f"{field} {value!r}{source}: expected a number") from None
    return str(value)
