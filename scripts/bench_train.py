"""Training throughput: the data loader, the full training step, and what micro-batching costs.

    python scripts/bench_train.py --parts loader step --workers 0 1 2 --precisions fp32 bf16 \
        model.backbone=resnet50.tv_in1k model.pretrained=false data.height=256 data.width=128 data.batch_size=16
    python scripts/bench_train.py --parts layout --bn 64 32 data.batch_size=64     # the demo, 32+32 vs 2 x 16+16
    python scripts/bench_train.py --parts ratio --steps 20                         # the demo's step vs a bare step
    python scripts/bench_train.py --parts breakdown --steps 20                     # where the demo's step goes

Every part builds the training run that `reid-accel train CONFIG key=value...` would build (`setup`) and times
`train_step`, the step training runs. `loader` times the train loader alone (decode, resize, uint8 batches) over
Market-1501-sized 128x64 JPEG crops drawn from the synthetic world, plus the on-device augmentation. `step` times
whole steps for each precision, reporting images/s and peak memory. `layout` times one step of the same images under
each `data.bn_batch_size` (`--bn`), interleaved: a smaller BN group runs as several micro-batches with gradient
accumulation. `ratio` times the run's `train_step` against the bare step of the same network on the same (already
augmented) images: forward, cross-entropy, backward and SGD, nothing else; their throughput ratio is what the
method's own work (augmentation, the target branch or the proxy losses, the memory, logging) costs; for a
clustering method the bare step classifies the images' true identities, and the epoch's clustering (once per
epoch, not per step) is timed by `scripts/bench_cluster.py`. `breakdown` runs `train_step` under
torch's profiler and reports the time inside each of the step's labelled ranges (`reid_accel.*`: augmentation,
forward, objective with the target branch and its neighbour diagnostics inside, backward, optimizer, and the
method's state update, i.e. the memory).
"""

import argparse
import itertools
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import torch
from bench_common import build_run, every_term_epoch, interleaved_timings, table_rows, training_batches

from reid_accel.engine.train import augmentation_draws, train_step
from reid_accel.generators.synthetic import generate_world
from reid_accel.hub import encoder_from_config
from reid_accel.modeling import CrossDomainNetwork


def jpeg_folder(root: Path) -> Path:
    """A Market-style folder of 128x64 JPEGs drawn from the synthetic world (PNG -> JPEG, quality 90)."""
    world = generate_world(root / "png", domain="a", seed=0, num_ids=60, height=128, width=64)
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (root / "jpeg" / split).mkdir(parents=True)
        for path in (world / split).glob("*.png"):
            PIL.Image.open(path).save(root / "jpeg" / split / f"{path.stem}.jpg", quality=90)
    return root / "jpeg"


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process


def bench_loader(args: argparse.Namespace) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = jpeg_folder(Path(tmp))
        domain = f"{{name: market_style, root: {folder}}}"
        for workers in args.workers:
            run = build_run(
                args.config,
                [*args.overrides, f"data.source={domain}", f"data.target={domain}", f"data.num_workers={workers}"],
            )
            run.sampler.set_epoch(1)
            images, started = 0, time.perf_counter()
            for step, batch in enumerate(run.train_loader):
                pixels = batch["pixel_values"].to(run.accelerator.device)
                run.augmentation(pixels, augmentation_draws(run, epoch=1, step=step))
                images += len(pixels)
            elapsed = time.perf_counter() - started
            rows.append(f"| loader + augmentation, {workers} worker(s) | {images / elapsed:.0f} | - |")
    return rows


def bench_steps(args: argparse.Namespace) -> list[str]:
    rows = []
    for precision in args.precisions:
        run = build_run(args.config, [*args.overrides, f"train.mixed_precision={precision}"])
        batches, epoch = training_batches(run, args.steps + 1), every_term_epoch(run)
        train_step(run, batches[0], epoch=epoch, step=0)  # warm-up (and compilation)
        device = run.accelerator.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for step, batch in enumerate(batches[1:], start=1):
            train_step(run, batch, epoch=epoch, step=step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        images_per_s = args.steps * run.layout.global_batch / (time.perf_counter() - started)
        share = f"{run.layout.domain_share} + {run.layout.domain_share}" if run.layout.two_domains else ""
        rows.append(f"| step, {precision}, {share} | {images_per_s:.1f} | {peak_memory_gb(device):.2f} |")
    return rows


def bench_layouts(args: argparse.Namespace) -> list[str]:
    runs = {bn: build_run(args.config, [*args.overrides, f"data.bn_batch_size={bn}"]) for bn in args.bn}
    batches = {bn: training_batches(run, 1)[0] for bn, run in runs.items()}
    first = next(iter(batches.values()))
    assert all(torch.equal(b["index"].sort().values, first["index"].sort().values) for b in batches.values())
    epoch = every_term_epoch(next(iter(runs.values())))
    names = {
        bn: f"{run.layout.micro_batches} x ({run.layout.domain_share} + {run.layout.domain_share})"
        for bn, run in runs.items()
    }
    timings = interleaved_timings(
        {names[bn]: (lambda bn=bn: train_step(runs[bn], batches[bn], epoch=epoch, step=0)) for bn in runs},
        args.steps,
    )
    return table_rows(f"one step of {runs[args.bn[0]].layout.global_batch} images", timings, names[args.bn[0]], 1e-3)


def num_classes(run, batches: list[dict[str, torch.Tensor]]) -> int:
    """Classes of the bare step's cross-entropy: the run's source classifier's, else the identities the batches hold
    (a clustering method trains without labels; the bare step only needs a classifier of that size)."""
    classifier = getattr(run.accelerator.unwrap_model(run.network), "classifier", None)
    return classifier.out_features if classifier is not None else int(max(b["pid"].max() for b in batches)) + 1


def bench_ratio(args: argparse.Namespace) -> list[str]:
    """The run's `train_step` against the bare step on the same sequence of batches, alternating step by step."""
    run = build_run(args.config, args.overrides)
    batches, epoch = training_batches(run, args.steps + 1), every_term_epoch(run)
    encoder, device = run.encoder, run.accelerator.device
    torch.manual_seed(0)
    bare = CrossDomainNetwork(
        encoder_from_config(encoder.export_config(), source="the run's encoder"),  # same architecture, fresh weights
        num_classes(run, batches),
    ).to(device)
    optimizer = torch.optim.SGD(bare.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    augmented = [  # the bare step gets the images already augmented, as the step would augment them
        run.augmentation(b["pixel_values"].to(device), augmentation_draws(run, epoch=epoch, step=i))
        for i, b in enumerate(batches)
    ]

    def bare_step(i: int) -> None:
        pixels = augmented[i]
        logits = bare(pixels, num_source=len(pixels), source_neck="train")["source_logits"]
        torch.nn.functional.cross_entropy(logits, batches[i]["pid"].clamp_min(0).to(device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def next_batch(step: Callable[[int], object]) -> Callable[[], None]:
        """`step` on batch 0 (the warm-up), then batch 1, 2, ... at each call."""
        calls = itertools.count()
        return lambda: step(next(calls))

    timings = interleaved_timings(
        {
            "bare step": next_batch(bare_step),
            "train_step": next_batch(lambda i: train_step(run, batches[i], epoch=epoch, step=i)),
        },
        args.steps,
    )
    rows = table_rows(
        f"{args.steps} steps of {run.layout.global_batch} images, epoch {epoch}", timings, "bare step", 1e-3
    )
    images = run.layout.global_batch
    (_, bare_median), (_, full_median) = timings["bare step"], timings["train_step"]
    rows.append(
        f"| throughput | bare {images / bare_median:.0f} img/s, train_step {images / full_median:.0f} img/s | | | | "
        f"{bare_median / full_median:.3f} of the bare step |"
    )
    return rows


def bench_breakdown(args: argparse.Namespace) -> list[str]:
    """Milliseconds per step inside each `reid_accel.*` range of `train_step`, and its share of the step."""
    run = build_run(args.config, args.overrides)
    batches, epoch = training_batches(run, args.steps + 1), every_term_epoch(run)
    train_step(run, batches[0], epoch=epoch, step=0)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        started = time.perf_counter()
        for step, batch in enumerate(batches[1:], start=1):
            train_step(run, batch, epoch=epoch, step=step)
        step_ms = (time.perf_counter() - started) / args.steps * 1e3
    ranges = {
        e.key: e.cpu_time_total / 1e3 / args.steps for e in profile.key_averages() if e.key.startswith("reid_accel.")
    }
    rows = [
        f"| whole step ({args.steps} steps of {run.layout.global_batch} images, epoch {epoch}) | {step_ms:.1f} | 1.000 |"
    ]
    rows += [f"| {name} | {ms:.1f} | {ms / step_ms:.3f} |" for name, ms in sorted(ranges.items(), key=lambda r: -r[1])]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for reid-accel train")
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument(
        "--parts", nargs="+", choices=("loader", "step", "layout", "ratio", "breakdown"), default=["loader", "step"]
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps (per variant in `layout`)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader workers to try")
    parser.add_argument("--precisions", nargs="+", choices=("no", "bf16", "fp16"), default=["no"])
    parser.add_argument("--bn", type=int, nargs="+", default=[64, 32], help="data.bn_batch_size values to compare")
    args = parser.parse_args()
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{device}, {torch.get_num_threads()} threads, {args.config} {' '.join(args.overrides)}", flush=True)
    if {"loader", "step"} & set(args.parts):
        rows = ["| what | images/s | peak memory (GB) |", "|---|---|---|"]
        rows += bench_loader(args) if "loader" in args.parts else []
        rows += bench_steps(args) if "step" in args.parts else []
        print("\n".join(rows), flush=True)
    header = "| min (ms) | median (ms) | x first (min) | x first (median) |\n|---|---|---|---|---|---|"
    if "layout" in args.parts:
        print(f"| step | layout {header}")
        print("\n".join(bench_layouts(args)), flush=True)
    if "ratio" in args.parts:
        print(f"| step | variant {header}")
        print("\n".join(bench_ratio(args)), flush=True)
    if "breakdown" in args.parts:
        print("| range | ms per step | share of the step |\n|---|---|---|")
        print("\n".join(bench_breakdown(args)), flush=True)


if __name__ == "__main__":
    main()
