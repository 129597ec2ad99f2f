"""Ablation of the method on the synthetic world: which component buys how much target mAP.

    python scripts/ablation.py --seeds 0 1 2 --jobs 2 --output-dir runs/ablation

Trains each variant below once per seed with `reid-accel train` (the demo's config plus overrides), reads the
final evaluation from each run's metrics.json, and prints a markdown table of mean and standard deviation.
With `--jobs 2` two runs share the machine, one thread each.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reid_accel.fileio import write_json_atomic

DEMO = "configs/synthetic.yaml"
# name -> (what the row means, config, overrides)
VARIANTS = {
    "source_only": ("source only", "configs/synthetic_source_only.yaml", []),
    "agnostic": ("camera-agnostic neighbourhood", DEMO, ["objective.neighbor_mode=0"]),
    "intra": ("camera-aware, intra only (the demo)", DEMO, []),
    "intra_inter": ("camera-aware, intra + inter", DEMO, ["objective.inter_weight=0.5"]),
    "mixup": ("camera-aware, intra + inter + mixup", DEMO, ["objective.inter_weight=0.5", "objective.mixup=true"]),
}


def run(name: str, seed: int, output_dir: Path, threads: int) -> dict:
    _, config, overrides = VARIANTS[name]
    folder = output_dir / f"{name}-seed{seed}"
    command = [
        sys.executable,
        "-m",
        "reid_accel.cli",
        "train",
        config,
        "--output-dir",
        str(folder),
        f"train.seed={seed}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([*command, "train.log_with=none"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    final = json.loads((folder / "metrics.json").read_text())["evaluations"][-1]
    return {"variant": name, "seed": seed, "mAP": final["mAP"], "rank1": final["rank1"], "command": " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores // jobs threads)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    tasks = [(name, seed) for name in args.variants for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda task: run(*task, args.output_dir, threads), tasks))
    write_json_atomic(args.output_dir / "ablation.json", results)
    print("| variant | target mAP (%) | target rank-1 (%) | seeds |\n|---|---|---|---|")
    for name in args.variants:
        rows = [r for r in results if r["variant"] == name]
        maps, rank1s = [100 * r["mAP"] for r in rows], [100 * r["rank1"] for r in rows]
        print(f"| {VARIANTS[name][0]} | {_mean_sd(maps)} | {_mean_sd(rank1s)} | {len(rows)} |")


def _mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


if __name__ == "__main__":
    main()
