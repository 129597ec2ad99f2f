"""Training throughput: the data loader alone, and the full CAIL step, to see which one limits.

    python scripts/bench_train.py --workers 0 1 2 --precisions fp32 bf16 --batch 16   # a CPU
    python scripts/bench_train.py --workers 4 8 16 --precisions fp16 bf16 --channels-last --compile   # a GPU

Part 1 writes a folder of 128x64 JPEG person images (synthetic people, the size of Market-1501's crops) and
times the training loader (decode, resize to 256x128, uint8 tensors, batches of 2 x batch) with N workers, plus
the on-device batch augmentation. Part 2 times the full CAIL step of `reid_accel` (mixup, one forward over
[source | target], the objective against an MSMT17-sized memory, backward, SGD, memory update) for each
precision, reporting images/s and peak memory.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch
from torch.utils.data import DataLoader

from reid_accel.data import BatchAugmentation, ReIDImageDataset, build_transform, load_benchmark
from reid_accel.data.synthetic import generate_world
from reid_accel.modeling import CrossDomainNetwork, ExemplarMemory, ReIDEncoder
from reid_accel.objectives import CAILObjective, mix_pixels

MSMT17_SLOTS, MSMT17_CAMERAS = 32_621, 15
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def jpeg_folder(root: Path) -> Path:
    """A Market-style folder of 128x64 JPEGs drawn from the synthetic world (PNG -> JPEG, quality 90)."""
    world = generate_world(root / "png", domain="a", seed=0, num_ids=60, height=128, width=64)
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (root / "jpeg" / split).mkdir(parents=True)
        for path in (world / split).glob("*.png"):
            PIL.Image.open(path).save(root / "jpeg" / split / f"{path.stem}.jpg", quality=90)
    return root / "jpeg"


def bench_loader(folder: Path, args: argparse.Namespace, device: torch.device) -> list[str]:
    train = load_benchmark("market_style", folder, cache_dir=folder.parent / "cache")["train"]
    dataset = ReIDImageDataset(train, build_transform(args.height, args.width, normalize=False))
    augmentation = BatchAugmentation(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for workers in args.workers:
        loader = DataLoader(dataset, batch_size=2 * args.batch, shuffle=True, num_workers=workers, drop_last=True)
        images, started = 0, time.perf_counter()
        for batch in loader:
            augmentation(batch["pixel_values"].to(device), generator)
            images += len(batch["pixel_values"])
        elapsed = time.perf_counter() - started
        rows.append(f"| loader, {workers} worker(s) | {images / elapsed:.0f} | - |")
    return rows


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process


def bench_step(precision: str, args: argparse.Namespace, device: torch.device) -> str:
    torch.manual_seed(0)
    b = args.batch
    network = CrossDomainNetwork(ReIDEncoder(args.backbone, input_size=(args.height, args.width)), 702).to(device)
    if args.channels_last:
        network = network.to(memory_format=torch.channels_last)
    forward = torch.compile(network) if args.compile else network
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    memory = ExemplarMemory(
        MSMT17_SLOTS, network.encoder.feature_dim, torch.randint(0, MSMT17_CAMERAS, (MSMT17_SLOTS,))
    )
    memory.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    objective = CAILObjective()
    pixels = torch.randn(2 * b, 3, args.height, args.width, device=device)
    if args.channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 702, (b,), device=device)
    slots = torch.randperm(MSMT17_SLOTS, device=device)[:b]

    def step() -> None:
        with torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32"):
            out = forward(mix_pixels(pixels, num_source=b, lam=0.4), num_source=b)
        loss, _ = objective(
            epoch=31,
            source_features=out["source_features"],
            source_logits=out["source_logits"],
            source_labels=labels,
            classifier_weight=network.classifier.weight,
            target_features=out["target_features"],
            target_camids=memory.camids[slots],
            target_slots=slots,
            memory_features=memory.features,
            memory_camids=memory.camids,
            lam=0.4,
        )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        memory.update(out["target_features"].detach(), slots, 0.6)

    step()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    images_per_s = args.steps * 2 * b / (time.perf_counter() - started)
    layout = f"{b} + {b}" + (", channels-last" if args.channels_last else "") + (", compiled" if args.compile else "")
    return f"| CAIL step, {precision}, {layout} | {images_per_s:.1f} | {peak_memory_gb(device):.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50.tv_in1k")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128, help="source (= target) images per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="loader workers to try")
    parser.add_argument("--precisions", nargs="*", choices=list(PRECISIONS), default=["fp32"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = ["| what | images/s | peak memory (GB) |", "|---|---|---|"]
    if args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            rows += bench_loader(jpeg_folder(Path(tmp)), args, device)
    rows += [bench_step(precision, args, device) for precision in args.precisions]
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
        f"{torch.get_num_threads()} threads, {args.backbone} at {args.height}x{args.width}"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
