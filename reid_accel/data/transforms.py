"""Image pipelines of the method (METHOD.md, "Total loss and schedule"), built on torchvision's v2 transforms.

Training: resize straight to (H, W) (no aspect-preserving crop: pedestrian boxes are already tight), random
horizontal flip, pad 10 pixels of grey 127 and crop a random (H, W) window back (a small translation), to a
float tensor in [0, 1], normalise with the backbone's mean/std, then random erasing with value 0 (occlusion).
Test: resize and normalise only. Both domains use the same pipeline.
"""

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

PAD_FILL = 127


def build_transform(
    height: int,
    width: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    pad: int = 10,
    flip_prob: float = 0.5,
    erasing_prob: float = 0.5,
) -> v2.Compose:
    """The pipeline taking a PIL RGB image to a normalised (3, height, width) float32 tensor.

    Args:
        height: output height (256 in the published recipe).
        width: output width (128).
        mean: per-channel mean of the backbone's pretraining (from its timm config).
        std: per-channel standard deviation, likewise.
        train: add the random flip, pad-and-crop and erasing.
        pad: pixels of padding before the random crop (0 turns the crop off).
        flip_prob: probability of the horizontal flip.
        erasing_prob: probability of random erasing (area 2-25 % of the image, aspect ratio 0.3-3.3).
    """
    size = (height, width)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if not train:
        return v2.Compose([v2.Resize(size), *to_tensor, v2.ToPureTensor()])
    return v2.Compose(
        [
            v2.Resize(size),
            v2.RandomHorizontalFlip(p=flip_prob),
            v2.Pad(pad, fill=PAD_FILL),
            v2.RandomCrop(size),
            *to_tensor,
            v2.RandomErasing(p=erasing_prob, scale=(0.02, 0.25), ratio=(0.3, 3.3), value=0),
            v2.ToPureTensor(),
        ]
    )
