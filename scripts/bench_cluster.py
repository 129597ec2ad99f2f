"""Benchmark: pseudo-labels at MSMT17 scale, the sparse Jaccard graph + DBSCAN against the dense way.

The clustering codes (SpCL, cluster contrast, CAP, O2CAP) compute the k-reciprocal Jaccard distance as dense
N x N float32 matrices (the encodings, their query expansion, the distances) and run
``DBSCAN(metric="precomputed")`` on the dense result. ``reid_accel.clustering`` keeps only the pairs closer than 1.
Both run here on the same synthetic features (seeded): ``center[id] + 0.6 * style[camera] + s * noise`` with
MSMT17's train statistics (1,041 ids, 15 cameras, about 31 images per id, 2048-d) scaled to the size asked.

    dense   the dense way, written from the clustering codes' ``compute_jaccard_distance`` (exact k-NN lists
            from a blockwise product instead of faiss; per-item loops and N x N float32 matrices as there),
            then DBSCAN on the dense matrix
    sparse  reid_accel.clustering.jaccard_distance_graph + cluster_dbscan

Each measurement runs in its own child process, which builds the features and then clusters them; the peak
resident set of the child comes from ``os.wait4`` and is reported over the child's peak before clustering (the
interpreter, the libraries and the features). Rounds interleave the variants; figures are medians over rounds.
At MSMT17's 32,621 images each dense matrix is 4.3 GB and the dense way holds two or three at once, more than
a shared 24 GB machine can spare, so by default both run at Market's 12,936 images and the sparse one alone at
32,621:

    python scripts/bench_cluster.py                                   # both at 12,936; sparse at 32,621
    python scripts/bench_cluster.py --compare-size 32621 --full-size 0   # both at full scale (needs ~20 GB free)
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from reid_accel.clustering import canonical_labels, cluster_dbscan, jaccard_distance_graph

IMAGES_PER_ID, NUM_CAMERAS, DIM = 31.3, 15, 2048  # MSMT17 train: 32,621 images of 1,041 ids, 15 cameras


def synthetic_features(size: int, *, seed: int, noise: float) -> torch.Tensor:
    """(size, 2048) float32 features with identity and camera structure; built in chunks to keep the peak low."""
    gen = torch.Generator().manual_seed(seed)
    num_ids = max(1, round(size / IMAGES_PER_ID))
    centers = torch.randn(num_ids, DIM, generator=gen)
    styles = torch.randn(NUM_CAMERAS, DIM, generator=gen)
    pids = torch.randint(0, num_ids, (size,), generator=gen)
    cams = torch.randint(0, NUM_CAMERAS, (size,), generator=gen)
    out = torch.randn(size, DIM, generator=gen)  # (N, D) noise
    out.mul_(noise * torch.exp(0.35 * torch.randn(size, 1, generator=gen)))  # a few images are hard
    for start in range(0, size, 4096):
        part = slice(start, start + 4096)
        out[part].add_(centers[pids[part]]).add_(styles[cams[part]], alpha=0.6)
    return F.normalize(out, dim=1, out=out), pids


def dense_jaccard(features: torch.Tensor, *, k1: int, k2: int) -> np.ndarray:
    """The dense way: k1-item k-NN lists (self included), then N x N float32 encodings, query expansion and
    Jaccard distances, row by row."""
    num = len(features)
    ranked = np.empty((num, k1), dtype=np.int64)
    for start in range(0, num, 2048):
        block = 2.0 - 2.0 * features[start : start + 2048] @ features.T  # (c, N)
        ranked[start : start + 2048] = torch.topk(block, k1, dim=1, largest=False).indices.numpy()

    def reciprocal(k: int) -> list[np.ndarray]:
        near = ranked[:, : k + 1]  # (N, k+1)
        back = ranked[near][:, :, : k + 1]  # (N, k+1, k+1)
        mutual = (back == np.arange(num)[:, None, None]).any(2)
        return [near[i][mutual[i]] for i in range(num)]

    full, half = reciprocal(k1), reciprocal(round(k1 / 2))
    encoding = np.zeros((num, num), dtype=np.float32)
    for i in range(num):
        members = full[i]
        merged = [half[q] for q in members if len(np.intersect1d(half[q], members)) > 2 / 3 * len(half[q])]
        expanded = np.unique(np.concatenate([members, *merged]))
        distance = 2.0 - 2.0 * features[i] @ features[expanded].T
        encoding[i, expanded] = torch.softmax(-distance, dim=0).numpy()
    if k2 != 1:
        averaged = np.zeros_like(encoding)
        for i in range(num):
            averaged[i] = encoding[ranked[i, :k2]].mean(axis=0)
        encoding = averaged
        del averaged
    users = [np.flatnonzero(encoding[:, j]) for j in range(num)]  # inverted index: the rows using column j
    jaccard = np.zeros((num, num), dtype=np.float32)
    for i in range(num):
        shared = np.zeros(num, dtype=np.float32)
        for j in np.flatnonzero(encoding[i]):
            shared[users[j]] += np.minimum(encoding[i, j], encoding[users[j], j])
        jaccard[i] = 1.0 - shared / (2.0 - shared)
    return np.maximum(jaccard, 0.0, out=jaccard)


def child(args) -> None:
    """One variant in this process: features, then the timed Jaccard and DBSCAN; labels to --out, figures printed."""
    features, pids = synthetic_features(args.size, seed=args.seed, noise=args.noise)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.child == "sparse":
        graph = jaccard_distance_graph(features, k1=args.k1, k2=args.k2)
        jaccard_s = time.perf_counter() - start
        labels = cluster_dbscan(graph, eps=args.eps, min_samples=args.min_samples)
        stored = graph.nnz
    else:
        matrix = dense_jaccard(features, k1=args.k1, k2=args.k2)
        jaccard_s = time.perf_counter() - start
        dbscan = DBSCAN(eps=args.eps, min_samples=args.min_samples, metric="precomputed")
        labels = canonical_labels(dbscan.fit_predict(matrix))
        stored = matrix.size
    total_s = time.perf_counter() - start
    np.save(args.out, labels)
    clustered = labels >= 0
    print(
        json.dumps(
            {
                "jaccard_s": jaccard_s,
                "dbscan_s": total_s - jaccard_s,
                "total_s": total_s,
                "before_mib": before_kib / 1024,
                "stored": int(stored),
                "clusters": int(labels.max() + 1),
                "unclustered": float(1 - clustered.mean()),
                "ari_truth": float(adjusted_rand_score(pids.numpy()[clustered], labels[clustered])),
            }
        )
    )


def measure(variant: str, size: int, args, out: Path) -> dict:
    """Runs one variant in a child process; adds its peak resident set (os.wait4) and the labels it wrote."""
    command = [sys.executable, __file__, "--child", variant, "--size", str(size), "--out", str(out)]
    for name in ("seed", "noise", "k1", "k2", "eps", "min_samples"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{variant} at {size} failed:\n{stderr.read()[-4000:]}")
        result = json.loads(stdout.read().strip().splitlines()[-1])
    result["peak_mib"] = usage.ru_maxrss / 1024
    result["over_mib"] = result["peak_mib"] - result["before_mib"]
    result["labels"] = np.load(out)
    return result


def summary_row(variant: str, size: int, runs: list[dict], agreement: str) -> str:
    med = {key: statistics.median(r[key] for r in runs) for key in ("jaccard_s", "dbscan_s", "total_s", "over_mib")}
    last = runs[-1]
    return (
        f"| {size:,} | {variant} | {med['jaccard_s']:.1f} | {med['dbscan_s']:.1f} | {med['total_s']:.1f} | "
        f"{max(r['peak_mib'] for r in runs):,.0f} | {med['over_mib']:,.0f} | {last['stored']:,} | "
        f"{last['clusters']:,} | {last['unclustered']:.3f} | {last['ari_truth']:.3f} | {agreement} |"
    )


def run(args) -> None:
    print(
        f"seed={args.seed} noise={args.noise} k1={args.k1} k2={args.k2} eps={args.eps} min_samples={args.min_samples} "
        f"torch {torch.__version__} threads={torch.get_num_threads()} load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    plan = [(variant, args.compare_size) for variant in ("sparse", "dense")] if args.compare_size else []
    plan += [("sparse", args.full_size)] if args.full_size else []
    results: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.repeat):
            for variant, size in plan:
                result = measure(variant, size, args, Path(tmp) / f"{variant}-{size}.npy")
                results[variant, size].append(result)
                shown = {k: v for k, v in result.items() if k != "labels"}
                print(f"  round {round_index + 1} {variant} {size}: {shown}", flush=True)
    print(f"\n{args.repeat} round(s), load average now {os.getloadavg()[0]:.1f}")
    print(
        "| images | variant | Jaccard s | DBSCAN s | total s | peak RSS MiB | over features MiB | stored distances "
        "| clusters | unclustered | ARI vs truth | labels vs dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (variant, size), runs in results.items():
        dense = results.get(("dense", size))
        agreement = "-"
        if dense and variant == "sparse":
            ours, theirs = runs[-1]["labels"], dense[-1]["labels"]
            agreement = (
                f"ARI {adjusted_rand_score(theirs, ours):.6f}, {'identical' if (ours == theirs).all() else 'differ'}"
            )
        print(summary_row(variant, size, runs, agreement))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-size", type=int, default=12936, help="images for both variants (0: none)")
    parser.add_argument("--full-size", type=int, default=32621, help="images for the sparse variant alone (0: none)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, variants interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.9, help="noise scale of the synthetic features")
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--min-samples", type=int, default=4)
    parser.add_argument("--child", choices=("sparse", "dense"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else run(args)


if __name__ == "__main__":
    main()
