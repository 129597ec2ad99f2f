"""Benchmark the target branch and the full training step against their floors, in one run.

Part 1 (target branch): normalise, similarities to the memory, camera-aware losses, backward and memory update,
against the similarity product and its backward alone (the floor), at MSMT17 scale (N = 32,621 slots, 15 cameras)
and Market-1501 scale (N = 12,936, 6 cameras), D = 2048, B_t = 128. The same branch written the common way (a
(B, N) camera mask built by a Python loop over the samples, dense masked softmaxes, a per-sample memory update)
is timed alongside for reference.

Part 2 (training step): `reid_accel.engine.train.train_step` of the full method (mixup, one forward over
[source | target], every loss term, backward, SGD step, memory update against an MSMT17-sized memory) against the
same `train_step` in source-only training (cross-entropy over the same number of images), same backbone. Both runs
are built by `setup` from `--config` (the synthetic world, resized to the backbone's input).

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
import dataclasses
import os

import torch
import torch.nn.functional as F
from bench_common import build_run, every_term_epoch, interleaved_timings, table_rows, training_batches

from reid_accel.engine.train import train_step
from reid_accel.modeling import ExemplarMemory
from reid_accel.objectives import camera_aware_neighbourhood_loss

SCALES = {"msmt17": (32621, 15), "market1501": (12936, 6)}


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
        intra, inter = camera_aware_neighbourhood_loss(sim, camids, memory.camids, slots, scale=10.0, eps=0.8)
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
    """`train_step` of the full method against `train_step` of source-only training, same backbone and batch."""
    model = [f"model.backbone={args.backbone}", "model.pretrained=false", f"data.height={args.height}"]
    model += [f"data.width={args.width}", f"data.batch_size={2 * args.step_batch}", "data.num_workers=0"]
    full = ["objective.inter_weight=0.5", "objective.mixup=true", f"train.seed={args.seed}"]
    cail = build_run(args.config, [*model, *full])
    slots, cameras = SCALES["msmt17"]
    memory = ExemplarMemory(slots, cail.encoder.feature_dim, torch.randint(0, cameras, (slots,)))
    memory.update(torch.randn(slots, cail.encoder.feature_dim), torch.arange(slots), 0.0)
    cail = dataclasses.replace(cail, memory=memory.to(cail.accelerator.device))  # an MSMT17-sized memory
    supervised = build_run(args.config, [*model, "data.target=null", "objective.target_branch=false"])
    epoch = every_term_epoch(cail)
    cail_batch, supervised_batch = training_batches(cail, 1)[0], training_batches(supervised, 1)[0]
    timings = interleaved_timings(
        {
            "supervised": lambda: train_step(supervised, supervised_batch, epoch=epoch, step=0),
            "cail": lambda: train_step(cail, cail_batch, epoch=epoch, step=0),
        },
        args.steps,
    )
    b = args.step_batch
    return table_rows(
        f"{args.backbone} {args.height}x{args.width}, {b}+{b} images, N={slots}", timings, "supervised", 1.0
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
    parser.add_argument("--config", default="configs/synthetic.yaml", help="the data of part 2's training runs")
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
