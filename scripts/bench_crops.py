"""Benchmark: embedding the detections of several cameras' frames on the CPU, three ways, in crops per second.

One time step of a multi-camera tracker: `--cameras` frames (1080x1920 BGR, random content) with `--detections`
person boxes each (heights 60-400 pixels, 1:2.6). Compared, on the same frames and boxes:

- `embed_images`: per frame, `embed_images(encoder, crop_boxes(frame, boxes), bgr=True)` (a PIL image per crop,
  antialiased resize), as the inference API offered before `embed_detections`;
- `embed_detections`: one call for every camera's boxes (crops copied as uint8, resized by torch, shared batches);
- `onnxruntime`: the encoder exported for trackers (`input_norm="imagenet"`, dynamic batch), fed as BoxMOT feeds it
  (per crop `cv2.resize` INTER_LINEAR, BGR->RGB, /255, ImageNet mean/std), one run per camera's frame, as one
  BoxMOT tracker per camera does.

The two PyTorch paths run forward passes of `--batch-size` crops (on a CPU, batches past a few dozen small crops
are slower per crop, not faster). Three more rows time the crop preparation of each path alone.

Calls are interleaved after one warm-up each (`bench_common.interleaved_timings`); idle threads sleep (OpenMP
passive wait, onnxruntime without spinning) so one runtime's pool does not steal the other's cores.

    python scripts/bench_crops.py                                    # resnet50.tv_in1k, 256x128, 4 cameras x 8
    python scripts/bench_crops.py --backbone test_resnet --height 128 --width 64 --detections 32   # preprocessing-bound
"""

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch starts its OpenMP pool
import platform
import tempfile
from pathlib import Path

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from bench_common import interleaved_timings  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from reid_accel.data import build_transform  # noqa: E402
from reid_accel.export import INPUT_NAME, OUTPUT_NAME, export_encoder  # noqa: E402
from reid_accel.inference import crop_boxes, embed_detections, embed_images, resize_crop, to_pil  # noqa: E402
from reid_accel.modeling import ReIDEncoder  # noqa: E402


def scene(cameras: int, detections: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (1080, 1920, 3) uint8 BGR and integer boxes (detections, 4) per camera."""
    rng = np.random.default_rng(seed)
    frames, boxes = [], []
    for _ in range(cameras):
        low = rng.integers(0, 256, (68, 120, 3), dtype=np.uint8)
        frames.append(cv2.resize(low, (1920, 1080), interpolation=cv2.INTER_CUBIC))
        heights = rng.uniform(60, 400, detections)
        widths = heights / 2.6
        x1, y1 = rng.uniform(0, 1920 - widths), rng.uniform(0, 1080 - heights)
        boxes.append(np.round(np.stack([x1, y1, x1 + widths, y1 + heights], axis=1)))
    return frames, boxes


def boxmot_batch(frames, boxes, height: int, width: int) -> np.ndarray:
    """Every crop preprocessed as BoxMOT does: (N, 3, height, width) float32, ImageNet-normalised."""
    mean, std = (np.array(v, dtype=np.float32) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    batch = []
    for frame, frame_boxes in zip(frames, boxes, strict=True):
        for x1, y1, x2, y2 in frame_boxes.astype(int):
            crop = cv2.resize(frame[y1:y2, x1:x2], (width, height), interpolation=cv2.INTER_LINEAR)
            batch.append(((crop[..., ::-1].astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    return np.stack(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50.tv_in1k")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--detections", type=int, default=8, help="boxes per camera frame")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per PyTorch forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="both runtimes")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {os.cpu_count()} logical CPUs, {args.threads} threads per runtime")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, opencv {cv2.__version__}")
    print(f"load average at the start {os.getloadavg()}")
    torch.manual_seed(0)
    encoder = ReIDEncoder(args.backbone, input_size=(args.height, args.width)).eval()
    frames, boxes = scene(args.cameras, args.detections)
    crops = args.cameras * args.detections
    with tempfile.TemporaryDirectory() as folder:
        report = export_encoder(encoder, Path(folder) / "reid.onnx", fmt="onnx", batch=None, input_norm="imagenet")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])

    def today() -> None:
        for frame, frame_boxes in zip(frames, boxes, strict=True):
            embed_images(encoder, crop_boxes(frame, frame_boxes), bgr=True, batch_size=args.batch_size)

    def batched() -> None:
        embed_detections(encoder, frames, boxes, batch_size=args.batch_size)

    def exported() -> None:
        for frame, frame_boxes in zip(frames, boxes, strict=True):
            session.run([OUTPUT_NAME], {INPUT_NAME: boxmot_batch([frame], [frame_boxes], args.height, args.width)})

    # the same three paths without the network: what preparing the crops costs
    transform = build_transform(args.height, args.width, mean=encoder.mean, std=encoder.std)
    device = torch.device("cpu")

    def today_pixels() -> None:
        for frame, frame_boxes in zip(frames, boxes, strict=True):
            torch.stack([transform(to_pil(crop, bgr=True)) for crop in crop_boxes(frame, frame_boxes)])

    def batched_pixels() -> None:
        flat = [crop for frame, b in zip(frames, boxes, strict=True) for crop in crop_boxes(frame, b)]
        torch.stack([resize_crop(crop, args.height, args.width, device=device) for crop in flat]).flip(1).float()

    with torch.inference_mode():
        timings = interleaved_timings(
            {
                "embed_images per frame": today,
                "embed_detections": batched,
                "onnxruntime, BoxMOT's way": exported,
                "crops only: PIL per crop": today_pixels,
                "crops only: torch uint8": batched_pixels,
                "crops only: cv2 (BoxMOT)": lambda: boxmot_batch(frames, boxes, args.height, args.width),
            },
            args.repeats,
        )
    print(
        f"\n{args.backbone} at {args.height}x{args.width}, {args.cameras} cameras x {args.detections} detections, "
        f"{args.batch_size} crops per PyTorch forward, {args.repeats} repeats"
    )
    print("| path | median crops/s | best crops/s | median ms per time step |")
    print("|---|---:|---:|---:|")
    for name, (best, median) in timings.items():
        print(f"| {name} | {crops / median:.1f} | {crops / best:.1f} | {1000 * median:.0f} |")
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
