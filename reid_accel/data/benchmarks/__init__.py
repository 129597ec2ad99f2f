"""The benchmarks reid-accel reads, one small module each, listed in one literal dict.

A benchmark module has a docstring (paper, URL, official counts) and declares one `BENCHMARK` record
(`reid_accel.data.records.Benchmark`): its title, its `parse(root, *, <explicit options>) -> Split` (file names and
split files only: never an image, never the network), its official counts, and where it has them a `subset_of`,
a `prepare` (the synthetic worlds draw themselves there) and a `notice`. Adding a benchmark is one module here
plus one line in `BENCHMARKS`.
"""

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from reid_accel.config import DomainConfig
from reid_accel.data.benchmarks import (
    cuhk03_np,
    dukemtmc,
    identity_folders,
    market1501,
    market_style,
    msmt17,
    saved,
    synthetic,
    table,
)
from reid_accel.data.records import Benchmark, SplitStats
from reid_accel.errors import ConfigError, DatasetLayoutError

_BY_NAME = {
    "market1501": market1501.BENCHMARK,
    "dukemtmc": dukemtmc.BENCHMARK,
    "cuhk03": cuhk03_np.BENCHMARK,
    "msmt17": msmt17.BENCHMARK,
    "market_style": market_style.BENCHMARK,
    "synthetic": synthetic.BENCHMARK,
    "saved": saved.BENCHMARK,
    "folders": identity_folders.BENCHMARK,
    "table": table.BENCHMARK,
}
BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(_BY_NAME)
ALIASES: Mapping[str, str] = MappingProxyType(
    {"market": "market1501", "duke": "dukemtmc", "cuhk": "cuhk03", "msmt": "msmt17"}
)


def get_benchmark(name: str) -> tuple[str, Benchmark]:
    """The canonical name and record of a benchmark given by name or alias."""
    canonical = ALIASES.get(name, name)
    if canonical not in BENCHMARKS:
        known = ", ".join(
            key + "".join(f" (alias {alias})" for alias, target in ALIASES.items() if target == key)
            for key in BENCHMARKS
        )
        raise DatasetLayoutError(f"unknown benchmark {name!r}; expected one of {known}")
    return canonical, BENCHMARKS[canonical]


def _keyword_defaults(function: Callable) -> dict[str, Any]:
    """The keyword-only parameters of `function` with their defaults."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def split_options(
    name: str, options: Mapping[str, Any], *, root: str | os.PathLike | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort a benchmark's options into those of `prepare` and those of `parse`, defaults filled in.

    Args:
        name: benchmark name or alias.
        options: the options given.
        root: the folder to be read; a `subset` left out is resolved against it (see `subset_of`).

    Returns:
        (prepare options, parse options); the latter are complete and resolved, so they can key a cache.

    Raises:
        DatasetLayoutError: an option that neither function takes, naming the accepted ones, or a subset that
            is unknown or contradicts the folder.
    """
    canonical, benchmark = get_benchmark(name)
    prepare_options = _keyword_defaults(benchmark.prepare) if benchmark.prepare is not None else {}
    parse_options = _keyword_defaults(benchmark.parse) if benchmark.parse is not None else {}
    for key, value in options.items():
        if key in parse_options:
            parse_options[key] = value
        elif key in prepare_options:
            prepare_options[key] = value
        else:
            known = ", ".join(sorted({*prepare_options, *parse_options})) or "none"
            raise DatasetLayoutError(f"benchmark {canonical!r} has no option {key!r} (its options: {known})")
    if benchmark.subset_of is not None:
        parse_options["subset"] = benchmark.subset_of(root, parse_options["subset"])
    return prepare_options, parse_options


def check_root(name: str, root: Path) -> None:
    """Refuse a missing folder, unless the benchmark draws its own (the synthetic worlds)."""
    canonical, benchmark = get_benchmark(name)
    if benchmark.prepare is None and not root.is_dir():
        expected = "a folder written by save_to_disk" if benchmark.stored else f"the extracted {canonical} folder"
        raise DatasetLayoutError(f"{root}: folder not found; expected {expected}")


def has_cameras(name: str, root: str | os.PathLike, **options: Any) -> bool:
    """Whether benchmark `name` read from `root` with `options` records camera ids, answered without parsing."""
    _, benchmark = get_benchmark(name)
    if benchmark.has_cameras is None:
        return True
    _, parse_options = split_options(name, options, root=root)
    return benchmark.has_cameras(root, **parse_options)


def check_domain(domain: DomainConfig, key: str, *, needs_cameras: str | None = None) -> None:
    """A config's dataset names a known benchmark, takes its options and has its folder: checked before parsing.

    Args:
        domain: the dataset's config.
        key: its config key, named in errors.
        needs_cameras: the setting that needs camera ids (e.g. "objective.neighbour_mode=camera_aware"), to refuse a dataset
            without them; None when nothing does.

    Raises:
        ConfigError: naming the key at fault, e.g. `data.target.root: /x: folder not found; ...`.
    """
    for field, check in (
        ("name", lambda: get_benchmark(domain.name)),
        ("options", lambda: split_options(domain.name, domain.options, root=domain.resolved_root())),
        ("root", lambda: check_root(domain.name, domain.resolved_root())),
        ("options", lambda: has_cameras(domain.name, domain.resolved_root(), **domain.options)),
    ):
        try:
            check()
        except DatasetLayoutError as err:
            raise ConfigError(f"{key}.{field}: {err}") from None
    if needs_cameras is not None and not has_cameras(domain.name, domain.resolved_root(), **domain.options):
        raise ConfigError(
            f"{key}: {domain.name} at {domain.resolved_root()} records no camera ids, which {needs_cameras} needs; "
            "give the cameras (see the benchmark's options) or change that setting"
        )


def official_stats(
    name: str, root: str | os.PathLike | None = None, **options: Any
) -> Mapping[str, SplitStats] | None:
    """The official per-split counts of a benchmark read from `root` with `options`, or None when it has none.

    `root` matters only for a benchmark with subsets, where it may be a subset folder (cuhk03's `detected/`).
    """
    _, benchmark = get_benchmark(name)
    _, parse_options = split_options(name, options, root=root)
    stats = benchmark.official_stats
    if stats is not None and benchmark.subset_of is not None:
        stats = stats[parse_options["subset"]]
    return stats
