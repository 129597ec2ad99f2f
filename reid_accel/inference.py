"""Embedding person images downstream: files, folders, PIL images, arrays, tensors, and crops cut from a frame.

A multi-object tracker holds a frame (an OpenCV `uint8` BGR array) and its detections (x1, y1, x2, y2) and wants
one appearance descriptor per detection:

    crops = crop_boxes(frame, boxes)                                     # N views into the frame
    features = embed_images(encoder, crops, bgr=True, device="cuda")     # (N, D), L2-normalised

Every input becomes a PIL RGB image and goes through `build_transform` with the size, mean and std recorded in the
encoder's config, then `ReIDEncoder.embed`: the pipeline evaluation uses, so features match `reid-accel eval`'s.
`resize="opencv"` resizes as trackers do (OpenCV's bilinear, no antialiasing), so features match theirs.

A tracker watching several cameras embeds all their detections at once:

    per_frame = embed_detections(encoder, frames, boxes_per_frame, device="cuda")   # [(N_i, D), ...]

Crops are cut from each frame, sent to the device as uint8 and resized there (OpenCV's way), with no PIL image per
crop, and every camera's crops share the forward passes.
"""

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from reid_accel.data import build_transform, decode_image
from reid_accel.data.benchmarks.identity_folders import IMAGE_SUFFIXES
from reid_accel.data.transforms import RESIZE_MODES
from reid_accel.errors import InputError
from reid_accel.fileio import atomic_path
from reid_accel.modeling import ReIDEncoder

logger = logging.getLogger(__name__)

ImageLike = str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image below `folder` (any depth), sorted by path.

    Raises:
        InputError: no such folder, or it holds no image.
    """
    if not Path(folder).is_dir():
        raise InputError(f"{folder}: no such folder")
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def to_pil(image: ImageLike, *, bgr: bool = False) -> PIL.Image.Image:
    """One image as PIL RGB.

    Args:
        image: a file path; a PIL image; a `uint8` (H, W, 3) array; or a (3, H, W) tensor, `uint8` or float in
            [0, 1] (rounded to 8 bits, as the images evaluation reads are).
        bgr: arrays and tensors hold blue, green, red (OpenCV's order); files and PIL images are always RGB.

    Raises:
        InputError: an array or tensor of another shape or type.
    """
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | os.PathLike):
        return decode_image(str(image))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"an image tensor must be (3, H, W), got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    if not isinstance(image, np.ndarray):
        raise InputError(f"cannot read an image from a {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"an image array must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return PIL.Image.fromarray(np.ascontiguousarray(image[..., ::-1] if bgr else image))


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image, a folder (its images, sorted) or a sequence of images, as a list of images."""
    if isinstance(images, str | os.PathLike) and Path(images).is_dir():
        return list_images(images)
    if isinstance(images, str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor):
        return [images]
    return list(images)


@torch.no_grad()
def embed_images(
    encoder: ReIDEncoder,
    images: ImageLike | Sequence[ImageLike],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    bgr: bool = False,
    flip: bool = False,
    progress: bool = False,
    resize: str = "pil",
) -> torch.Tensor:
    """L2-normalised re-ID features of person images, as evaluation computes them.

    Args:
        encoder: the model; switched to eval mode for the call and moved to `device` when one is given.
        images: a folder (every image below it, sorted by path), one image, or a sequence of images of any kind
            `to_pil` reads (paths, PIL images, arrays, tensors), mixed as needed.
        batch_size: images per forward pass.
        device: where the forward passes run; default the encoder's device.
        autocast_dtype: `torch.float16` or `torch.bfloat16` runs the forward passes under autocast; None in float32.
        bgr: arrays and tensors are in OpenCV's BGR order.
        flip: add each image's mirror image's feature before normalising (as `reid-accel eval --flip`).
        progress: show a progress bar.
        resize: "pil" (antialiased, as training and evaluation) or "opencv" (bilinear without antialiasing, as
            trackers resize crops: compare with a tracker's features in this mode).

    Returns:
        (N, D) float32 on `device`, rows in input order; (0, D) for no images.
    """
    _check_resize(resize)
    if device is not None:
        encoder.to(device)
    device = next(encoder.parameters()).device
    height, width = encoder.input_size
    transform = build_transform(height, width, mean=encoder.mean, std=encoder.std, resize=resize)
    items = as_image_list(images)
    was_training = encoder.training
    encoder.eval()
    features = [torch.zeros(0, encoder.feature_dim, device=device)]
    for start in tqdm(range(0, len(items), batch_size), desc="embed", disable=not progress, leave=False):
        batch = [transform(to_pil(item, bgr=bgr)) for item in items[start : start + batch_size]]
        pixels = torch.stack(batch).to(device)  # (b, 3, H, W)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features.append(encoder.embed(pixels, flip=flip))  # (b, D)
    encoder.train(was_training)
    return torch.cat(features)


def _check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise InputError(f"resize={resize!r}: expected one of {', '.join(RESIZE_MODES)}")


@torch.no_grad()
def embed_detections(
    encoder: ReIDEncoder,
    frames: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Sequence[float]] | np.ndarray],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    bgr: bool = True,
) -> list[torch.Tensor]:
    """Features of the detections of several frames (several cameras, or several time steps) in shared batches.

    Each detection is cut as `crop_boxes` cuts it, copied to the device as uint8 and resized there with bilinear
    interpolation without antialiasing (`embed_images(..., resize="opencv")`, within one grey level), then
    normalised with the encoder's mean and std: no PIL image per crop, and all frames' crops share the batches.

    Args:
        encoder: the model; switched to eval mode for the call and moved to `device` when one is given.
        frames: F frames, each (H_f, W_f, 3) `uint8` (sizes may differ between cameras).
        boxes: F arrays of boxes (N_f, 4) (x1, y1, x2, y2) in pixels, one per frame; N_f may be 0.
        batch_size: crops per forward pass, whatever frame they come from.
        device: where crops are resized and embedded; default the encoder's device.
        autocast_dtype: `torch.float16` or `torch.bfloat16` runs the forward passes under autocast.
        bgr: the frames are in OpenCV's BGR order (the default, as video readers give them).

    Returns:
        F tensors (N_f, D) float32 on `device`, L2-normalised, rows in box order.

    Raises:
        InputError: frames and boxes of different lengths, or a frame or box `crop_boxes` refuses.
    """
    if len(frames) != len(boxes):
        raise InputError(f"{len(frames)} frames but {len(boxes)} box arrays; expected one box array per frame")
    crops = [crop_boxes(frame, frame_boxes) for frame, frame_boxes in zip(frames, boxes, strict=True)]
    if device is not None:
        encoder.to(device)
    device = next(encoder.parameters()).device
    height, width = encoder.input_size
    mean = torch.tensor(encoder.mean, device=device)[:, None, None]  # (3, 1, 1)
    std = torch.tensor(encoder.std, device=device)[:, None, None]
    flat = [crop for frame_crops in crops for crop in frame_crops]
    was_training = encoder.training
    encoder.eval()
    features = [torch.zeros(0, encoder.feature_dim, device=device)]
    for start in range(0, len(flat), batch_size):
        pixels = torch.stack(
            [resize_crop(crop, height, width, device=device) for crop in flat[start : start + batch_size]]
        )  # (b, 3, H, W) uint8, the frames' channel order
        if bgr:
            pixels = pixels.flip(1)
        pixels = (pixels.float().div_(255) - mean) / std
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features.append(encoder.embed(pixels).float())  # (b, D)
    encoder.train(was_training)
    return list(torch.cat(features).split([len(frame_crops) for frame_crops in crops]))


def resize_crop(crop: np.ndarray, height: int, width: int, *, device: torch.device) -> torch.Tensor:
    """One (h, w, 3) uint8 crop as a (3, height, width) uint8 tensor on `device`, resized there.

    The pixels stay in (h, w, 3) memory order (a channels-last view): torch's uint8 bilinear kernel is fast on that
    layout and over 10x slower on a channels-first copy, so channels are reordered after the resize, not before.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(crop)).to(device).permute(2, 0, 1)  # (3, h, w) view
    return TF.resize(pixels, [height, width], antialias=False)


def crop_boxes(frame: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray) -> list[np.ndarray]:
    """Cut one crop per detection box out of a video frame.

    A box covers the pixels it touches: corners are floored (x1, y1) and ceiled (x2, y2), then clipped to the
    frame, so a box reaching past the border gives the part inside it.

    Args:
        frame: (H, W, 3) `uint8` image, RGB or BGR (crops keep its channel order).
        boxes: N boxes (x1, y1, x2, y2) in pixels, e.g. a detector's (N, 4) output.

    Returns:
        N crops (h_i, w_i, 3), views into `frame`, in box order.

    Raises:
        InputError: a frame that is not (H, W, 3) `uint8`, or a box that is not four finite numbers with
            x1 < x2 and y1 < y2 overlapping the frame.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", type(frame).__name__)
        raise InputError(f"a frame must be a uint8 (H, W, 3) array, got {getattr(frame, 'dtype', '')} {shape}")
    height, width = frame.shape[:2]
    crops = []
    for index, box in enumerate(boxes):
        values = [float(v) for v in box]
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise InputError(f"box {index} {tuple(values)}: expected four finite numbers (x1, y1, x2, y2)")
        x1, y1, x2, y2 = values
        if x2 <= x1 or y2 <= y1:
            raise InputError(f"box {index} {tuple(values)} is empty: needs x1 < x2 and y1 < y2")
        left, top = max(math.floor(x1), 0), max(math.floor(y1), 0)
        right, bottom = min(math.ceil(x2), width), min(math.ceil(y2), height)
        if right <= left or bottom <= top:
            raise InputError(f"box {index} {tuple(values)} lies outside the {width}x{height} frame")
        crops.append(frame[top:bottom, left:right])
    return crops


def save_embeddings(
    output: str | os.PathLike, features: torch.Tensor, names: Sequence[str], *, encoder: ReIDEncoder, model: str
) -> Path:
    """Write features with their image names to a safetensors file, atomically.

    The file holds `features` (N, D) float32; its metadata holds `paths` (JSON list, row order), `model` (the
    reference the features came from) and `encoder` (the encoder's config: input size, mean, std, ...).
    """
    output = Path(output)
    metadata = {"paths": json.dumps(list(names)), "model": model, "encoder": json.dumps(encoder.export_config())}
    with atomic_path(output) as tmp:
        save_file({"features": features.float().cpu().contiguous()}, tmp, metadata=metadata)
    logger.info("Wrote %d features of dimension %d to %s", *features.shape, output)
    return output
