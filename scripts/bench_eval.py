"""Benchmark: exact CMC/mAP (reid_accel.metrics) against the similarity product alone and torchreid's evaluator.

Synthetic features with the structure of the real benchmarks (ids, cameras, distractors):

    market: 3,368 queries x 15,913 gallery items (2,793 distractors), 750 ids, 6 cameras, 2048-d
    msmt:   11,659 queries x 82,161 gallery items, 3,060 ids, 15 cameras, 2048-d
    small:  1,000 queries x 3,000 gallery items, 300 ids, 6 cameras, 1024-d (a quick check of the `evaluate` module)

Each image is ``center[id] + 0.6 * style[camera] + s * noise`` with a per-image noise scale ``s`` drawn around
``--difficulty`` (log-normal), so a few images are hard and their matches rank deep, as with real features.
``--difficulty 2.5`` gives mAP about 0.64 / rank-1 0.97 on market (a trained model); 4.0 about 0.20 / 0.60
(an early checkpoint).

Every method runs in its own subprocess, which builds the same data from the seed, resets its peak-memory mark,
then times the method; memory is reported as the peak resident set over the data already held. The subprocesses
get the thread settings the `reid-accel` command gives (`OMP_WAIT_POLICY=PASSIVE` unless the environment sets
it). Methods:

    numpy      normalise + full Q x G cosine-similarity matrix with numpy's matmul (OpenBLAS)
    product    the same with torch's matmul (MKL); ratios are to the faster of these two bare products
    ours       reid_accel.metrics.rank_metrics (blockwise product + exact ranking), on the matmul it measures faster
    ours-numpy, ours-torch   the same with REID_ACCEL_CPU_MATMUL fixing numpy's or torch's product
    module     the same through the shipped `evaluate` module (`metric.compute(features=..., ...)`)
    torchreid  torchreid's Cython ``evaluate_cy`` on the cosine distance matrix (product time reported apart)
    rerank     reid_accel.metrics.rerank_distance + rank_metrics_from_distance (market only by default)

torchreid's evaluator is not on PyPI: build ``rank_cy`` from github.com/KaiyangZhou/deep-person-reid
(torchreid/metrics/rank_cylib) outside this repository and pass the folder holding the ``.so``:

    python scripts/bench_eval.py --scale market --rank-cy-dir /work/ext/rank_cylib
    python scripts/bench_eval.py --scale msmt --methods numpy product ours torchreid --rank-cy-dir /work/ext/rank_cylib
    python scripts/bench_eval.py --scale small --methods numpy ours module --repeat 5

The header line names the CPU, numpy's BLAS kernel (threadpoolctl) and the OpenBLAS variables that change it:
where ``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` are set, OpenBLAS may run a slower kernel than the CPU allows;
run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` to measure the kernel OpenBLAS picks itself. Each
round's line for `ours` says which matmul `rank_metrics` measured faster.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reid_accel.metrics.product import ENV_VAR, measured_choices

SCALES = {  # queries, gallery, ids, cameras, distractors, feature dimension
    "market": (3368, 15913, 750, 6, 2793, 2048),
    "msmt": (11659, 82161, 3060, 15, 0, 2048),
    "small": (1000, 3000, 300, 6, 0, 1024),
}


def synthetic(scale: str, seed: int, difficulty: float):
    """Query/gallery features, ids and cameras; built in place to keep the data's own peak low."""
    num_query, num_gallery, num_ids, num_cams, num_distractors, dim = SCALES[scale]
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids + 1, dim, generator=gen)
    styles = torch.randn(num_cams, dim, generator=gen)
    q_pids = torch.randint(1, num_ids + 1, (num_query,), generator=gen)
    q_cams = torch.randint(0, num_cams, (num_query,), generator=gen)
    g_pids = torch.randint(1, num_ids + 1, (num_gallery,), generator=gen)
    g_pids[:num_distractors] = 0  # distractors: id 0, each its own random center below
    g_cams = torch.randint(0, num_cams, (num_gallery,), generator=gen)

    def images(pids, cams):
        out = torch.randn(len(pids), dim, generator=gen)  # (n, D) noise
        out.mul_(difficulty * torch.exp(0.35 * torch.randn(len(pids), 1, generator=gen)))
        for start in range(0, len(pids), 4096):
            part = slice(start, start + 4096)
            center = centers[pids[part]]
            center[pids[part] == 0] = torch.randn(int((pids[part] == 0).sum()), dim, generator=gen)
            out[part].add_(center).add_(styles[cams[part]], alpha=0.6)
        return out

    return images(q_pids, q_cams), images(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: less sensitive than wall time to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _unit_rows(features: np.ndarray) -> np.ndarray:
    return features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)


def worker(args) -> dict:
    """Runs one method in this process and returns its figures."""
    qf, gf, qp, gp, qc, gc = synthetic(args.scale, args.seed, args.difficulty)
    if args.worker == "module":  # the module's inputs, one row per image, built outside the timed region
        import evaluate

        from reid_accel.metrics import evaluate_module_path

        metric = evaluate.load(evaluate_module_path())
        rows = {"features": torch.cat([qf, gf]).numpy(), "pids": torch.cat([qp, gp]).numpy()}
        rows |= {"camids": torch.cat([qc, gc]).numpy(), "splits": ["query"] * len(qf) + ["gallery"] * len(gf)}
        del qf, gf
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark: count the method only
    base_kib = _status_kib("VmRSS")
    if args.worker in ("ours-numpy", "ours-torch"):
        os.environ[ENV_VAR] = args.worker.removeprefix("ours-")
    out = {"method": args.worker}
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if args.worker == "numpy":
        scores = _unit_rows(qf.numpy()) @ _unit_rows(gf.numpy()).T  # (Q, G)
        out["seconds"] = time.perf_counter() - start
        del scores
    elif args.worker == "product":
        scores = F.normalize(qf, dim=1) @ F.normalize(gf, dim=1).T  # (Q, G)
        out["seconds"] = time.perf_counter() - start
        del scores
    elif args.worker in ("ours", "ours-trapezoid", "ours-numpy", "ours-torch"):
        from reid_accel.metrics import rank_metrics

        mode = "trapezoid" if args.worker == "ours-trapezoid" else "standard"
        result = rank_metrics(qf, gf, qp, gp, qc, gc, ap_mode=mode)
        out["seconds"] = time.perf_counter() - start
        out.update(mAP=result["mAP"], rank1=result["rank1"])
    elif args.worker == "module":
        result = metric.compute(**rows)
        out["seconds"] = time.perf_counter() - start
        out.update(mAP=result["mAP"], rank1=result["rank1"])
    elif args.worker == "torchreid":
        sys.path.insert(0, args.rank_cy_dir)
        from rank_cy import evaluate_cy

        distmat = (1.0 - F.normalize(qf, dim=1) @ F.normalize(gf, dim=1).T).numpy()  # (Q, G), as torchreid's cosine
        out["product_seconds"] = time.perf_counter() - start
        cmc, mean_ap = evaluate_cy(distmat, qp.numpy(), gp.numpy(), qc.numpy(), gc.numpy(), 50, False)
        out["seconds"] = time.perf_counter() - start
        out.update(mAP=float(mean_ap), rank1=float(cmc[0]))
    elif args.worker == "rerank":
        from reid_accel.metrics import rank_metrics_from_distance, rerank_distance

        distance = rerank_distance(qf, gf)
        out["rerank_seconds"] = time.perf_counter() - start
        result = rank_metrics_from_distance(distance, qp, gp, qc, gc)
        out["seconds"] = time.perf_counter() - start
        out.update(mAP=result["mAP"], rank1=result["rank1"])
    else:
        raise SystemExit(f"unknown method {args.worker}")
    out["cpu_seconds"] = _cpu_seconds() - cpu_start
    if args.worker.startswith(("ours", "module", "rerank")):
        out["matmul"] = measured_choices()  # this machine's choices so far (the product of `ours` is the largest)
    out["peak_mib"] = (_status_kib("VmHWM") - base_kib) / 1024
    out["data_mib"] = base_kib / 1024
    return out


def _cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    fields = dict(
        line.split(":", 1)
        for line in lines
        if ":" in line and line.split(":")[0].strip() in ("vendor_id", "model name")
    )
    return " ".join(value.strip() for value in fields.values())


def _numpy_blas() -> str:
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    kernels = ", ".join(f"{i['internal_api']} {i['version']} kernel {i.get('architecture')}" for i in blas)
    variables = {name: os.environ.get(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return f"{kernels or 'unknown'} ({', '.join(f'{k}={v}' for k, v in variables.items())})"


def _median_ratio(rounds: list[dict], method: str, products: list[str], key: str) -> float:
    """Median over rounds of the method's `key` (wall or CPU seconds) over that round's fastest product."""
    return statistics.median(r[method][key] / min(r[m][key] for m in products) for r in rounds)


def run(args) -> None:
    """Runs every method in a subprocess (``--repeat`` rounds, interleaved) and prints a side-by-side table.

    Times are medians over the rounds and ratios are medians of the per-round ratios to that round's fastest
    product (numpy's or torch's, whichever ran and was faster; wall and CPU time apart), so a neighbour's load spike
    hits one round rather than one method.
    """
    methods = list(args.methods)
    products = [m for m in ("numpy", "product") if m in methods]
    if "torchreid" in methods and not (args.rank_cy_dir and list(Path(args.rank_cy_dir).glob("rank_cy*.so"))):
        print(
            f"skipping torchreid: no rank_cy*.so in --rank-cy-dir={args.rank_cy_dir!r} (see this script's docstring)"
        )
        methods.remove("torchreid")
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `reid-accel` sets it
    num_query, num_gallery, *_, dim = SCALES[args.scale]
    print(
        f"scale={args.scale} (Q x G = {num_query} x {num_gallery}, {dim}-d) difficulty={args.difficulty} "
        f"seed={args.seed} torch {torch.__version__} threads={torch.get_num_threads()} "
        f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']} numpy {np.__version__} load average {os.getloadavg()[0]:.1f}"
    )
    print(f"CPU: {_cpu_model()}; numpy's BLAS: {_numpy_blas()}")
    rounds = []
    for round_index in range(args.repeat):
        results = {}
        for method in methods:
            command = [sys.executable, __file__, "--worker", method, "--scale", args.scale, "--seed", str(args.seed)]
            command += ["--difficulty", str(args.difficulty)]
            if args.rank_cy_dir:
                command += ["--rank-cy-dir", args.rank_cy_dir]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"{method} failed:\n{done.stderr[-4000:]}")
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  round {round_index + 1} {method}: {results[method]}", flush=True)
        rounds.append(results)
    print(f"\n{args.repeat} round(s), load average now {os.getloadavg()[0]:.1f}")
    print(
        "| method | wall s (median) | wall / fastest product | CPU s (median) | CPU / fastest product "
        "| peak MiB over data | mAP | rank-1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method in methods:
        runs = [r[method] for r in rounds]
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu_seconds"] for r in runs)
        ratio = cpu_ratio = "-"
        if products:
            ratio = f"{_median_ratio(rounds, method, products, 'seconds'):.2f}"
            cpu_ratio = f"{_median_ratio(rounds, method, products, 'cpu_seconds'):.2f}"
        extra = ""
        for key, label in (("product_seconds", "product"), ("rerank_seconds", "re-rank")):
            if key in runs[0]:
                part = statistics.median(r[key] for r in runs)
                extra = f" ({label} {part:.2f} + rest {seconds - part:.2f})"
        last = runs[-1]
        metrics = f"{last['mAP']:.6f} | {last['rank1']:.6f}" if "mAP" in last else "- | -"
        peak = max(r["peak_mib"] for r in runs)
        print(f"| {method} | {seconds:.2f}{extra} | {ratio} | {cpu:.2f} | {cpu_ratio} | {peak:.0f} | {metrics} |")
    scored = rounds[-1]
    if "ours" in scored and "torchreid" in scored:
        ours, theirs = scored["ours"], scored["torchreid"]
        print(
            f"\nagreement with torchreid: |mAP diff| = {abs(ours['mAP'] - theirs['mAP']):.2e}, "
            f"|rank-1 diff| = {abs(ours['rank1'] - theirs['rank1']):.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="market")
    parser.add_argument("--methods", nargs="+", default=["numpy", "product", "ours", "torchreid", "rerank"])
    parser.add_argument("--difficulty", type=float, default=2.5, help="noise scale of the features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all methods, interleaved")
    parser.add_argument("--rank-cy-dir", default=None, help="folder holding torchreid's compiled rank_cy extension")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
    else:
        run(args)


if __name__ == "__main__":
    main()
