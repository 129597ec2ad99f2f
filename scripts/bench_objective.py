"""Benchmark the target branch and the full training step against their floors, in one run.

Part 1 (target branch): normalise, similarities to the memory, camera-aware losses, backward and memory update,
against the similarity product and its backward alone (the floor), at MSMT17 scale (N = 32,621 slots, 15 cameras)
and Market-1501 scale (N = 12,936, 6 cameras), D = 2048, B_t = 128. The same branch written the common way (a
(B, N) camera mask built by a Python loop over the samples, dense masked softmaxes, a per-sample memory update)
is timed alongside for reference.

Part 2 (training step): network forward/backward + objective + SGD step + memory update of a [source | target]
batch, against a plain supervised step (cross-entropy over the same number of images) of the same backbone.

Usage (CPU, the default threads)::

    python scripts/bench_objective.py                                # both parts, published sizes
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_objective.py --step-batch 16  # shared machine, smaller step

On a machine shared with other jobs, OpenMP's default spin-waiting makes every parallel op wait for a thread that
another process has descheduled, which penalises many short ops far more than one long matrix product;
`OMP_WAIT_POLICY=PASSIVE` (or `--threads 1`) removes that artefact.

Timings alternate between the compared variants and report the minimum and the median, so a shared machine's
load affects both sides alike; compare ratios within one run.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from reid_accel.modeling import CrossDomainNetwork, ExemplarMemory, ReIDEncoder
from reid_accel.objectives import CAILObjective, camera_aware_neighborhood_loss, mix_pixels

SCALES = {"msmt17": (32621, 15), "market1501": (12936, 6)}


def interleaved_timings(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per call of each function, calls interleaved round-robin after one warm-up call each.

    The minimum is the call least disturbed by other load on the machine; the median shows the typical call.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def table_rows(label: str, timings: dict[str, tuple[float, float]], baseline: str, unit: float) -> list[str]:
    """Markdown rows: variant, min and median (in `unit` seconds), and both as multiples of the baseline's."""
    base_min, base_median = timings[baseline]
    return [
        f"| {label} | {name} | {t_min / unit:.4g} | {t_median / unit:.4g} | {t_min / base_min:.3f} | "
        f"{t_median / base_median:.3f} |"
        for name, (t_min, t_median) in timings.items()
    ]


def clustered_memory(num_slots: int, num_cameras: int, dim: int, generator: torch.Generator):
    """Unit memory rows around identity centres (about 20 images per identity), as after some training."""
    pids = torch.randint(0, max(num_slots // 20, 1), (num_slots,), generator=generator)
    centres = torch.randn(int(pids.max()) + 1, dim, generator=generator)
    rows = F.normalize(centres[pids] + 0.9 * torch.randn(num_slots, dim, generator=generator), dim=1)
    return rows, torch.randint(0, num_cameras, (num_slots,), generator=generator)


def common_way_branch(x, memory, memory_camids, camids, slots, *, scale, eps, momentum):
    """The branch with a per-sample Python loop building (B, N) camera masks, dense masked ops, looped update."""
    sim = F.normalize(x, dim=1) @ memory.T  # (B, N)
    batch, num_slots = sim.shape
    intra_mask = torch.zeros(batch, num_slots)
    for i in range(batch):
        intra_mask[i] = (memory_camids == camids[i]).float()
    inter_mask = 1 - intra_mask
    self_mask = torch.zeros(batch, num_slots)
    self_mask[torch.arange(batch), slots] = 1
    with torch.no_grad():
        shifted = sim + 1
        intra_sim = shifted * intra_mask * (1 - self_mask) - 1
        nb_intra = (intra_sim > eps * intra_sim.max(1, keepdim=True)[0]).float()
        inter_sim = shifted * inter_mask - 1
        nb_inter = (inter_sim > eps * inter_sim.max(1, keepdim=True)[0]).float()
    exp = torch.exp(scale * sim)
    log_p_intra = (exp * intra_mask / (exp * intra_mask).sum(1, keepdim=True)).clamp_min(1e-5).log()
    log_p_inter = (exp * inter_mask / (exp * inter_mask).sum(1, keepdim=True)).clamp_min(1e-5).log()
    intra = -((log_p_intra * nb_intra).sum(1) / nb_intra.sum(1)).mean() - (log_p_intra * self_mask).sum(1).mean()
    inter = -((log_p_inter * nb_inter).sum(1) / nb_inter.sum(1)).mean()
    (intra + 0.5 * inter).backward()
    with torch.no_grad():
        features = F.normalize(x, dim=1)
        for i in range(batch):
            row = momentum * memory[slots[i]] + (1 - momentum) * features[i]
            memory[slots[i]] = row / row.norm()


def bench_target_branch(name: str, args: argparse.Namespace) -> list[str]:
    num_slots, num_cameras = SCALES[name]
    g = torch.Generator().manual_seed(args.seed)
    rows, memory_camids = clustered_memory(num_slots, num_cameras, args.dim, g)
    memory = ExemplarMemory(num_slots, args.dim, memory_camids)
    memory.features.copy_(rows)
    slots = torch.randperm(num_slots, generator=g)[: args.batch]
    camids = memory_camids[slots]
    x = (rows[slots] + 0.5 * torch.randn(args.batch, args.dim, generator=g)).requires_grad_(True)
    grad_sim = torch.randn(args.batch, num_slots, generator=g)
    reference_memory = memory.features.clone()

    def floor():
        x.grad = None
        (x @ memory.features.T).backward(grad_sim)

    def ours():
        x.grad = None
        sim = F.normalize(x, dim=1) @ memory.features.T  # (B, N)
        intra, inter = camera_aware_neighborhood_loss(sim, camids, memory.camids, slots, scale=10.0, eps=0.8)
        (intra + 0.5 * inter).backward()
        memory.update(x.detach(), slots, 0.6)

    def common_way():
        x.grad = None
        common_way_branch(x, reference_memory, memory_camids, camids, slots, scale=10.0, eps=0.8, momentum=0.6)

    fns = {"floor": floor, "ours": ours}
    if args.common_way:
        fns["common way"] = common_way
    timings = interleaved_timings(fns, args.repeats)
    with torch.no_grad():
        sim = F.normalize(x, dim=1) @ memory.features.T
        best = sim.clone()
        best[torch.arange(args.batch), slots] = -1
        neighbours = (best > 0.8 * best.max(1, keepdim=True)[0]).sum(1).float().mean()
    label = f"{name} (N={num_slots}, C={num_cameras}, ~{neighbours:.0f} slots > 0.8 x best per row)"
    return table_rows(label, timings, "floor", 1e-3)


def bench_training_step(args: argparse.Namespace) -> list[str]:
    torch.manual_seed(args.seed)
    b = args.step_batch
    num_slots, num_cameras = SCALES["msmt17"]
    encoder = ReIDEncoder(args.backbone, input_size=(args.height, args.width))
    network = CrossDomainNetwork(encoder, args.num_classes).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    memory = ExemplarMemory(num_slots, encoder.feature_dim, torch.randint(0, num_cameras, (num_slots,)))
    memory.update(torch.randn(num_slots, encoder.feature_dim), torch.arange(num_slots), 0.0)
    objective = CAILObjective()
    pixels = torch.randn(2 * b, 3, args.height, args.width)
    labels = torch.randint(0, args.num_classes, (2 * b,))
    slots = torch.randperm(num_slots)[:b]

    def cail_step():
        mixed = mix_pixels(pixels, num_source=b, lam=0.4)
        out = network(mixed, num_source=b)
        loss, _ = objective(
            epoch=31,
            source_features=out["source_features"],
            source_logits=out["source_logits"],
            source_labels=labels[:b],
            classifier_weight=network.classifier.weight,
            target_features=out["target_features"],
            target_camids=memory.camids[slots],
            target_slots=slots,
            memory_features=memory.features,
            memory_camids=memory.camids,
            lam=0.4,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        memory.update(out["target_features"].detach(), slots, 0.6)

    def supervised_step():
        out = network(pixels, num_source=2 * b, source_neck="train")
        loss = F.cross_entropy(out["source_logits"], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    timings = interleaved_timings({"supervised": supervised_step, "cail": cail_step}, args.steps)
    return table_rows(
        f"{args.backbone} {args.height}x{args.width}, {b}+{b} images, N={num_slots}", timings, "supervised", 1.0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="target images per step in part 1")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per variant in part 1 (0 skips part 1)")
    parser.add_argument("--no-common-way", dest="common_way", action="store_false", help="skip the reference branch")
    parser.add_argument("--step-batch", type=int, default=128, help="source (= target) images per training step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant in part 2 (0 skips part 2)")
    parser.add_argument("--backbone", default="resnet50.tv_in1k")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=702, help="source identities (DukeMTMC-reID: 702)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={wait_policy}", flush=True)

    header = "| variant | min | median | x {0} (min) | x {0} (median) |\n|---|---|---|---|---|---|"
    if args.repeats > 0:
        rows = [line for name in SCALES for line in bench_target_branch(name, args)]
        print(f"| target branch, B_t = {args.batch}, ms " + header.format("floor"), flush=True)
        print("\n".join(rows), flush=True)
    if args.steps > 0:
        print("\n| training step, s " + header.format("supervised"), flush=True)
        print("\n".join(bench_training_step(args)), flush=True)


if __name__ == "__main__":
    main()
