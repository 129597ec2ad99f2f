"""Time `load_benchmark` on an MSMT17-sized folder: the first load parses and caches, the second must not.

    python scripts/bench_data_load.py [--workdir DIR]

Writes an MSMT17_V1 look-alike with the official counts (126,441 tiny images: train 32,621 = list_train 30,248 +
list_val 2,373, query 11,659, gallery 82,161, with the four split files), then times, with a fresh cache:
the first load (listing, parse, Arrow write), the second load (listing and memory-mapped cache read; the
slowest of 3 runs is reported) and one after a split file changed (must parse again). Targets on a 2-core CPU: first < 20 s, second < 1 s.
"""

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from reid_accel.data import dataset_stats, load_benchmark
from reid_accel.data.benchmarks import msmt17
from reid_accel.generators.lookalike import write_msmt17

FIRST_TARGET_S = 20.0
SECOND_TARGET_S = 1.0


def timed_load(root: Path, cache_dir: Path) -> float:
    start = time.perf_counter()
    dataset = load_benchmark("msmt17", root, cache_dir=cache_dir)
    elapsed = time.perf_counter() - start
    stats = dataset_stats(dataset)
    assert all(stats[name].images == msmt17.BENCHMARK.official_stats[name].images for name in stats), stats
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to write the folder and cache (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        root, cache_dir = Path(workdir) / "MSMT17_V1", Path(workdir) / "cache"
        start = time.perf_counter()
        write_msmt17(root, stats=msmt17.BENCHMARK.official_stats, val_images=2_373)
        print(
            f"wrote the look-alike ({sum(s.images for s in msmt17.BENCHMARK.official_stats.values())} images) in {time.perf_counter() - start:.1f} s"
        )
        first = timed_load(root, cache_dir)
        second = [timed_load(root, cache_dir) for _ in range(3)]
        list_file = root / "list_query.txt"
        os.utime(list_file, ns=(list_file.stat().st_atime_ns, list_file.stat().st_mtime_ns + 1_000_000_000))
        changed = timed_load(root, cache_dir)
    print(f"first load (parse + cache):   {first:6.2f} s  (target < {FIRST_TARGET_S:.0f} s)")
    runs = ", ".join(f"{t:.2f}" for t in second)
    print(f"second load (cache hit):      {max(second):6.2f} s  (target < {SECOND_TARGET_S:.0f} s; 3 runs: {runs} s)")
    print(f"after a split file changed:   {changed:6.2f} s  (parsed again)")


if __name__ == "__main__":
    main()
