"""Ablation of the methods on the synthetic world: what each part buys, with its uncertainty over training seeds.

    python scripts/ablation.py --config configs/synthetic_full.yaml --seeds 0 1 2 --jobs 2 --output-dir runs/ablation

Trains every variant below once per seed with `reid-accel train CONFIG train.seed=S <overrides>` and reads the final
evaluation from each run's metrics.json. CONFIG is `--config` (CAIL's variants) or a config beside it (the
clustering methods'); the adaptive clustering variant starts from the same seed's source-only model, so it runs
after that one. A finished run is not trained again (delete its folder to redo it). Writes
`ablation.json` (every run, then per variant and per part: mean, standard deviation and a 95 % t-interval) and
prints the markdown rows for the README. A part's effect is measured on paired runs: the same seed with and
without it, so the seed-to-seed spread of the world's difficulty cancels out.
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
from reid_accel.folders import RunFolder

# name -> (what the row means, overrides of the config, which is the full method; `{runs}` is the output folder and
# `{seed}` the seed)
VARIANTS = {
    "source_only": ("source only (no target branch)", ["objective.target_branch=false"]),
    "agnostic": (
        "camera-agnostic neighbourhood",
        ["objective.neighbour_mode=camera_agnostic", "objective.mixup=false"],
    ),
    "intra": ("camera-aware, intra-camera term", ["objective.inter_weight=0", "objective.mixup=false"]),
    "intra_inter": ("camera-aware, intra + inter-camera terms", ["objective.mixup=false"]),
    "full": ("camera-aware, intra + inter + cross-domain mixup (the full method)", []),
    "cluster_contrast": ("plain cluster contrast, unsupervised (target only)", []),
    "camera_proxy": ("camera-aware proxies (O2CAP), unsupervised (target only)", []),
    "camera_proxy_adaptive": (
        "camera-aware proxies (O2CAP) from the source-only model",
        ["model.init_from={runs}/source_only-seed{seed}/model"],
    ),
}
# variant -> its config's file name, beside `--config` (the others run `--config` itself)
CONFIGS = {
    "cluster_contrast": "synthetic_cluster_contrast.yaml",
    "camera_proxy": "synthetic_camera_proxy.yaml",
    "camera_proxy_adaptive": "synthetic_camera_proxy.yaml",
}
# variant -> the variant whose run (same seed) it starts from
NEEDS = {"camera_proxy_adaptive": "source_only"}
# part -> (variant without it, variant with it)
PARTS = {
    "camera-aware intra-camera term (vs source only)": ("source_only", "intra"),
    "camera-aware vs camera-agnostic neighbourhood": ("agnostic", "intra"),
    "inter-camera term": ("intra", "intra_inter"),
    "cross-domain mixup": ("intra_inter", "full"),
    "camera-aware proxies vs plain cluster contrast (unsupervised)": ("cluster_contrast", "camera_proxy"),
    "clustering from the source-only model (vs source only)": ("source_only", "camera_proxy_adaptive"),
    "camera-aware proxies from the source model vs CAIL's full method": ("full", "camera_proxy_adaptive"),
}
# Two-sided 95 % quantiles of Student's t by degrees of freedom; beyond the table the normal 1.96.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def summary(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95 % t-interval of the mean."""
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    half = T_975.get(len(values) - 1, 1.96) * sd / len(values) ** 0.5
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": len(values)}


def train(config: str, name: str, seed: int, output_dir: Path, threads: int) -> dict:
    folder = RunFolder(output_dir / f"{name}-seed{seed}")
    config = str(Path(config).parent / CONFIGS[name]) if name in CONFIGS else config
    overrides = [o.format(runs=output_dir, seed=seed) for o in VARIANTS[name][1]]
    command = [sys.executable, "-m", "reid_accel.cli", "train", config, "--output-dir", str(folder.root)]
    command += [f"train.seed={seed}", "train.log_with=none", *overrides]
    metrics = folder.metrics
    done = json.loads(metrics.read_text())["evaluations"] if metrics.is_file() else []
    if not folder.model.weights.is_file():
        run = subprocess.run(
            command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True
        )
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{run.stderr[-2000:]}")
        done = json.loads(metrics.read_text())["evaluations"]
    final = done[-1]
    return {
        "variant": name,
        "seed": seed,
        "mAP": 100 * final["mAP"],
        "rank1": 100 * final["rank1"],
        "command": " ".join(command),
    }


def _cell(stats: dict[str, float], *, gain: bool = False) -> str:
    """mean ± sd [95 % interval]: a percentage's interval shown within [0, 100], a gain's signed (the JSON keeps both
    as computed); one seed has no spread to show."""
    sign = "+" if gain else ""
    if stats["n"] < 2:
        return f"{stats['mean']:{sign}.1f} (one seed)"
    low, high = (stats["low"], stats["high"]) if gain else (max(stats["low"], 0.0), min(stats["high"], 100.0))
    return f"{stats['mean']:{sign}.1f} ± {stats['sd']:.1f} [{low:{sign}.1f}, {high:{sign}.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic_full.yaml", help="the full method's config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores // jobs threads)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    missing = sorted({NEEDS[n] for n in args.variants if n in NEEDS} - set(args.variants))
    if missing:
        parser.error(f"--variants: {', '.join(n for n in args.variants if n in NEEDS)} also need {', '.join(missing)}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    runs = []
    for stage in ([n for n in args.variants if n not in NEEDS], [n for n in args.variants if n in NEEDS]):
        tasks = [(name, seed) for name in stage for seed in args.seeds]
        with ThreadPoolExecutor(args.jobs) as pool:
            runs += pool.map(lambda task: train(args.config, *task, args.output_dir, threads), tasks)

    def values(name: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in runs if r["variant"] == name}

    variants = {
        name: {key: summary(list(values(name, key).values())) for key in ("mAP", "rank1")} for name in args.variants
    }
    parts = {}
    for part, (without, with_) in PARTS.items():
        if without in args.variants and with_ in args.variants:
            base, other = values(without, "mAP"), values(with_, "mAP")
            parts[part] = summary([other[seed] - base[seed] for seed in args.seeds])
    table = {"config": args.config, "seeds": args.seeds, "runs": runs, "variants": variants, "parts": parts}
    write_json_atomic(args.output_dir / "ablation.json", table)

    print(f"target mAP / rank-1 (%), mean ± sd [95 % interval] over seeds {args.seeds}; {args.config}\n")
    print("| variant | target mAP (%) | target rank-1 (%) |\n|---|---|---|")
    for name, stats in variants.items():
        print(f"| {VARIANTS[name][0]} | {_cell(stats['mAP'])} | {_cell(stats['rank1'])} |")
    print("\n| part | mAP gain, paired by seed (points) |\n|---|---|")
    for part, stats in parts.items():
        print(f"| {part} | {_cell(stats, gain=True)} |")


if __name__ == "__main__":
    main()
