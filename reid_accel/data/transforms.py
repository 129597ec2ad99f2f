"""Image pipelines of the method (METHOD.md, "Total loss and schedule").

Test: resize straight to (H, W) and normalise with the backbone's mean/std (`build_transform`).
Training splits the same pipeline in two. Loader workers only decode and resize (`build_transform(...,
normalize=False)`: a uint8 tensor), and `BatchAugmentation` then applies the random part to the whole batch at
once, on whatever device the batch lives: horizontal flip, pad 10 pixels of grey 127 and crop a random (H, W)
window back, to float, normalise, then random erasing with value 0. Done per batch it costs next to nothing
(per image, in PIL, it was the bottleneck of small-image training on a CPU).

Every random choice for an image comes from its own row of uniform draws, which the engine takes from a stream
keyed by (seed, epoch, step) at the image's global position in the step. So an image is augmented the same way on
a resumed run and whatever the number of processes or loader workers.
"""

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from reid_accel.config import ERASING_RATIO_RULES

RESIZE_MODES = ("pil", "opencv")
PAD_FILL = 127
ERASING_SCALE = (0.02, 0.25)
ERASING_RATIO = (0.3, 3.3)
ERASING_ATTEMPTS = 10


def build_transform(
    height: int,
    width: int,
    *,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    normalize: bool = True,
    resize: str = "pil",
) -> v2.Compose:
    """Deterministic pipeline from a PIL RGB image to a (3, height, width) tensor.

    Args:
        height: output height (256 in the published recipe).
        width: output width (128).
        mean: per-channel mean of the backbone's pretraining (from its timm config).
        std: per-channel standard deviation, likewise.
        normalize: float32 normalised with mean/std (test time); False leaves uint8 for `BatchAugmentation`.
        resize: one of `RESIZE_MODES`: "pil", PIL's antialiased bilinear (training and evaluation), or "opencv",
            bilinear without antialiasing on the uint8 pixels, as trackers resize crops with OpenCV's INTER_LINEAR
            (within one grey level of it).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    if resize == "pil":
        steps = [v2.Resize((height, width)), v2.ToImage()]
    else:
        steps = [v2.ToImage(), v2.Resize((height, width), antialias=False)]
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose([*steps, v2.ToPureTensor()])


class BatchAugmentation:
    """The random half of the training pipeline, applied to a whole uint8 batch from per-image uniform draws.

    Args:
        mean: per-channel mean used for normalisation.
        std: per-channel standard deviation.
        pad: pixels of grey padding before the random crop (0 turns the crop off).
        flip_prob: probability of the horizontal flip.
        erasing_prob: probability of random erasing (area 2-25 % of the image, aspect ratio 0.3-3.3, value 0,
            up to 10 tries to fit the box, as torchvision's `RandomErasing`).
        erasing_ratio_rule: how the box's aspect ratio is drawn from 0.3-3.3: "linear" (uniformly, as the
            torchvision of the authors' time: boxes taller than wide 78 % of the time) or "log" (log-uniformly, as
            torchvision today: 52 %).
    """

    # Columns of one image's draws: flip, crop top, crop left, then erasing: areas and ratios of the tries,
    # whether to erase, box top, box left.
    num_draws = 3 + 2 * ERASING_ATTEMPTS + 3

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        pad: int,
        flip_prob: float,
        erasing_prob: float,
        erasing_ratio_rule: str,
    ) -> None:
        if erasing_ratio_rule not in ERASING_RATIO_RULES:
            raise ValueError(f"erasing_ratio_rule must be one of {ERASING_RATIO_RULES}, got {erasing_ratio_rule!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.pad = pad
        self.flip_prob = flip_prob
        self.erasing_prob = erasing_prob
        self.erasing_ratio_rule = erasing_ratio_rule

    def __call__(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Augment and normalise a batch.

        The draws are turned into integer crops and boxes on the CPU, then applied by slicing each image: on a CPU
        that is several times faster than gathering the whole batch through index tensors, and on a GPU it is one
        copy kernel for the crops and one small fill per erased image.

        Args:
            images: (B, 3, H, W) uint8, on any device.
            draws: (B, num_draws) uniforms in [0, 1), one row per image, on the CPU.

        Returns:
            (B, 3, H, W) float32 on the images' device.
        """
        batch, _, height, width = images.shape
        if draws.shape != (batch, self.num_draws):
            raise ValueError(f"draws must have shape ({batch}, {self.num_draws}), got {tuple(draws.shape)}")
        device = images.device
        flip = draws[:, 0] < self.flip_prob  # (B,)
        images = torch.where(flip.to(device)[:, None, None, None], images.flip(-1), images)
        if self.pad:
            padded = torch.nn.functional.pad(images, (self.pad,) * 4, value=PAD_FILL)  # (B, 3, H + 2p, W + 2p)
            tops = (draws[:, 1] * (2 * self.pad + 1)).long().tolist()
            lefts = (draws[:, 2] * (2 * self.pad + 1)).long().tolist()
            crops = [
                padded[i, :, t : t + height, s : s + width] for i, (t, s) in enumerate(zip(tops, lefts, strict=True))
            ]
            images = torch.stack(crops)  # (B, 3, H, W)
        out = (images.float() / 255 - self.mean.to(device)) / self.std.to(device)
        if self.erasing_prob > 0:
            for i, top, left, box_h, box_w in self._erasing_boxes(height, width, draws[:, 3:]):
                out[i, :, top : top + box_h, left : left + box_w] = 0.0
        return out

    def _erasing_boxes(self, height: int, width: int, draws: torch.Tensor) -> list[tuple[int, int, int, int, int]]:
        """(image, top, left, height, width) of one box per erased image, drawn like torchvision's `RandomErasing`."""
        tries = ERASING_ATTEMPTS
        low, high = ERASING_SCALE
        area = height * width * (low + (high - low) * draws[:, :tries])  # (B, T)
        lo, hi = ERASING_RATIO
        if self.erasing_ratio_rule == "linear":
            ratio = lo + (hi - lo) * draws[:, tries : 2 * tries]  # (B, T)
        else:
            ratio = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * draws[:, tries : 2 * tries])
        box_h = torch.sqrt(area * ratio).round().long()  # (B, T)
        box_w = torch.sqrt(area / ratio).round().long()
        fits = (box_h < height) & (box_w < width)  # (B, T)
        first = torch.where(fits.any(1), fits.int().argmax(1), 0)  # (B,) first box that fits
        box_h, box_w = box_h.gather(1, first[:, None])[:, 0], box_w.gather(1, first[:, None])[:, 0]  # (B,)
        erase, top, left = draws[:, 2 * tries], draws[:, 2 * tries + 1], draws[:, 2 * tries + 2]
        erase = (erase < self.erasing_prob) & fits.any(1)
        top = (top * (height - box_h + 1).clamp(min=1)).long()
        left = (left * (width - box_w + 1).clamp(min=1)).long()
        rows = torch.stack([top, left, box_h, box_w], dim=1)[erase].tolist()  # (E, 4)
        return [(int(i), *row) for i, row in zip(erase.nonzero()[:, 0].tolist(), rows, strict=True)]
