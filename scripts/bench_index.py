"""Benchmark: the gallery index (`reid_accel.gallery.GalleryIndex`) against faiss's exact `IndexFlatIP` on the same
vectors, and faiss's approximate indexes (HNSW, IVF) through the gallery, with their recall@10 against exact search.

Data: a week of crops in miniature: ``--gallery`` unit vectors of ``--dim`` dimensions (512 by default, float32),
each ``center[person] + 0.5 * style[camera] + 0.6 * noise`` (all standard normal) over 20 crops per person and 12
cameras, so that a query's neighbours are its person's other crops, as with trained re-ID features; queries are
fresh crops of gallery people. The people's centers spread over all ``--dim`` directions, or over a random subspace
of ``--latent-dim`` of them: approximate indexes find the exact neighbours far more often in the second kind.

Per index (timed in this one process, methods interleaved round by round; the medians are reported):

    build      seconds to build from the (N, D) float32 array, and the resident memory it adds (its own copy)
    single     queries per second, one query per call (an analyst clicking on one crop)
    batch      queries per second in batches of ``--batch`` queries (a whole track, or a folder of suspects)
    recall@10  share of the exact top-10 that the index returns (exact indexes: 1 by construction, checked)

    python scripts/bench_index.py --gallery 100000 --approximate hnsw ivf --rounds 5
    python scripts/bench_index.py --gallery 100000 --latent-dim 32 --approximate hnsw ivf --rounds 5
    python scripts/bench_index.py --gallery 1000000 --rounds 3

The threads, the CPU and the BLAS kernels that run (threadpoolctl) are printed first: faiss's wheel ships its own
OpenBLAS, numpy another, torch uses MKL.
"""

import argparse
import gc
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from reid_accel.gallery import GalleryIndex
from reid_accel.metrics.product import ENV_VAR, measured_choices

PEOPLE_CROPS, CAMERAS = 20, 12


def synthetic(
    num_gallery: int, num_query: int, dim: int, seed: int, latent_dim: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(G, D) gallery and (Q, D) query float32 features, built in blocks to keep the peak near the result.

    ``latent_dim`` > 0 draws the people's centers in a random subspace of that many dimensions (same spread), as a
    trained model's features vary along far fewer directions than they have; 0 draws them in all ``dim``.
    """
    rng = np.random.default_rng(seed)
    people = max(1, num_gallery // PEOPLE_CROPS)
    if latent_dim:
        basis = rng.standard_normal((latent_dim, dim), dtype=np.float32) / np.float32(np.sqrt(latent_dim))
        centers = rng.standard_normal((people, latent_dim), dtype=np.float32) @ basis
    else:
        centers = rng.standard_normal((people, dim), dtype=np.float32)
    styles = rng.standard_normal((CAMERAS, dim), dtype=np.float32)

    def crops(count: int, person_of) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 65536):
            stop = min(start + 65536, count)
            ids = person_of(np.arange(start, stop))
            out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
            out[start:stop] *= 0.6
            out[start:stop] += centers[ids] + 0.5 * styles[rng.integers(0, CAMERAS, stop - start)]
        return out

    gallery = crops(num_gallery, lambda rows: rows % people)
    queries = crops(num_query, lambda rows: rng.integers(0, people, len(rows)))
    return gallery, queries


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def blas_kernels() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(
        f"{Path(i['filepath']).name.split('-')[0]} {i.get('internal_api')} {i.get('version')} "
        f"{i.get('architecture', '')} x{i['num_threads']}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    )


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


class Ours:
    """`GalleryIndex`, searched exactly, or through its faiss index at a given depth."""

    def __init__(self, kind: str | None = None):
        self.kind = kind
        self.name = f"gallery {kind}" if kind else "gallery exact"

    def build(self, vectors: np.ndarray) -> None:
        self.index = GalleryIndex.from_features(vectors)
        if self.kind:
            self.index.build_approximate(self.kind)

    def searcher(self, depth: int | None = None):
        def search(queries: np.ndarray, k: int) -> np.ndarray:
            return self.index.search(queries, k, approximate=self.kind is not None, depth=depth).indices

        return search


class FaissFlat:
    """faiss.IndexFlatIP on the same unit vectors (exact inner product; queries normalised here)."""

    name = "faiss IndexFlatIP"

    def build(self, vectors: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def searcher(self):
        def search(queries: np.ndarray, k: int) -> np.ndarray:
            return self.index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), k)[1]

        return search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=100_000, help="gallery vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--latent-dim", type=int, default=0, help="people's centers in a subspace of this many dimensions; 0: all"
    )
    parser.add_argument("--queries", type=int, default=512, help="query vectors (recall uses all of them)")
    parser.add_argument("--single", type=int, default=20, help="single queries timed per round")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--approximate", nargs="*", default=[], choices=["hnsw", "ivf"])
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 64, 256], help="HNSW efSearch / IVF probes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss  # noqa: F401  (loaded first, so that its BLAS is listed below)

    print(
        f"gallery {args.gallery} x {args.dim}-d float32 (people in {args.latent_dim or args.dim} dimensions), "
        f"{args.queries} queries, batch {args.batch}, "
        f"{args.rounds} rounds; CPU {cpu_model()}, torch threads {torch.get_num_threads()}; "
        f"BLAS: {blas_kernels()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    gallery, queries = synthetic(args.gallery, args.queries, args.dim, args.seed, args.latent_dim)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)  # in place: every index gets the same unit vectors
    methods = [Ours(), FaissFlat()] + [Ours(kind) for kind in args.approximate]
    built = {}
    for method in methods:
        gc.collect()
        before, start = rss_mib(), time.perf_counter()
        method.build(gallery)
        built[method.name] = (time.perf_counter() - start, rss_mib() - before)
        print(f"  built {method.name}: {built[method.name][0]:.2f} s, +{built[method.name][1]:.0f} MiB", flush=True)
    del gallery
    gc.collect()

    searchers = {"gallery exact": methods[0].searcher(), "faiss IndexFlatIP": methods[1].searcher()}
    for method in methods[2:]:
        searchers |= {f"{method.name} depth {depth}": method.searcher(depth) for depth in args.depths}
    exact = searchers["gallery exact"](queries, 10)
    recall = {
        name: float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(search(queries, 10), exact, strict=True)]))
        for name, search in searchers.items()
    }
    single, batch = ({name: [] for name in searchers} for _ in range(2))
    batches = [queries[i : i + args.batch] for i in range(0, len(queries), args.batch)]
    for round_index in range(args.rounds):
        for name, search in searchers.items():
            picks = queries[round_index * args.single % len(queries) :][: args.single]
            start = time.perf_counter()
            for row in picks:
                search(row[None], 10)
            single[name].append(len(picks) / (time.perf_counter() - start))
            start = time.perf_counter()
            for part in batches:
                search(part, 10)
            batch[name].append(len(queries) / (time.perf_counter() - start))
        print(
            f"  round {round_index + 1}: "
            + ", ".join(f"{n} {single[n][-1]:.1f}/{batch[n][-1]:.0f} q/s" for n in single),
            flush=True,
        )

    print(
        f"\nload average now {os.getloadavg()[0]:.1f}; "
        f"the gallery's matmul: measured {measured_choices()}, {ENV_VAR}={os.environ.get(ENV_VAR)}"
    )
    print("| index | build s | memory MiB | single queries/s (median) | batch-of-256 queries/s (median) | recall@10 |")
    print("|---|---|---|---|---|---|")
    for name in searchers:
        seconds, mib = built[name if name in built else name.rsplit(" depth", 1)[0]]
        print(
            f"| {name} | {seconds:.2f} | {mib:.0f} | {statistics.median(single[name]):.1f} | "
            f"{statistics.median(batch[name]):.0f} | {recall[name]:.4f} |"
        )


if __name__ == "__main__":
    main()
