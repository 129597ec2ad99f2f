"""Image pipelines of the method (METHOD.md, "Total loss and schedule").

Test: resize straight to (H, W) and normalise with the backbone's mean/std (`build_transform`).
Training splits the same pipeline in two. Loader workers only decode and resize (`build_transform(...,
normalize=False)`: a uint8 tensor), and `BatchAugmentation` then applies the random part to the whole batch at
once, on whatever device the batch lives: horizontal flip, pad 10 pixels of grey 127 and crop a random (H, W)
window back, to float, normalise, then random erasing with value 0. Done per batch it costs next to nothing
(per image, in PIL, it was the bottleneck of small-image training on a CPU), and drawing it from a generator
seeded per step makes a resumed run see exactly the images an uninterrupted run would have seen.
"""

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

PAD_FILL = 127
ERASING_SCALE = (0.02, 0.25)
ERASING_RATIO = (0.3, 3.3)
ERASING_ATTEMPTS = 10


def build_transform(
    height: int, width: int, *, mean: Sequence[float] = (), std: Sequence[float] = (), normalize: bool = True
) -> v2.Compose:
    """Deterministic pipeline from a PIL RGB image to a (3, height, width) tensor.

    Args:
        height: output height (256 in the published recipe).
        width: output width (128).
        mean: per-channel mean of the backbone's pretraining (from its timm config).
        std: per-channel standard deviation, likewise.
        normalize: float32 normalised with mean/std (test time); False leaves uint8 for `BatchAugmentation`.
    """
    steps = [v2.Resize((height, width)), v2.ToImage()]
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose([*steps, v2.ToPureTensor()])


class BatchAugmentation:
    """The random half of the training pipeline, applied to a whole uint8 batch with one generator.

    Args:
        mean: per-channel mean used for normalisation.
        std: per-channel standard deviation.
        pad: pixels of grey padding before the random crop (0 turns the crop off).
        flip_prob: probability of the horizontal flip.
        erasing_prob: probability of random erasing (area 2-25 % of the image, aspect ratio 0.3-3.3, value 0,
            up to 10 tries to fit the box, as torchvision's `RandomErasing`).
    """

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        pad: int = 10,
        flip_prob: float = 0.5,
        erasing_prob: float = 0.5,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.pad = pad
        self.flip_prob = flip_prob
        self.erasing_prob = erasing_prob

    def _uniform(self, *shape: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=generator.device)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, 3, H, W) float32, augmented and normalised; `generator` on the images' device."""
        batch, _, height, width = images.shape
        device = images.device
        flip = self._uniform(batch, generator=generator) < self.flip_prob  # (B,)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.pad:
            padded = torch.nn.functional.pad(images, (self.pad,) * 4, value=PAD_FILL)  # (B, 3, H + 2p, W + 2p)
            top = (self._uniform(batch, generator=generator) * (2 * self.pad + 1)).long()  # (B,)
            left = (self._uniform(batch, generator=generator) * (2 * self.pad + 1)).long()
            rows = (top[:, None] + torch.arange(height, device=device))[:, None, :, None]  # (B, 1, H, 1)
            cols = (left[:, None] + torch.arange(width, device=device))[:, None, None, :]  # (B, 1, 1, W)
            images = padded[
                torch.arange(batch, device=device)[:, None, None, None],
                torch.arange(3, device=device)[None, :, None, None],
                rows,
                cols,
            ]
        out = (images.float() / 255 - self.mean.to(device)) / self.std.to(device)
        if self.erasing_prob > 0:
            out = out.masked_fill(self._erasing_mask(batch, height, width, generator)[:, None], 0.0)
        return out

    def _erasing_mask(self, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """(B, H, W) bool: one random box per erased image, drawn like torchvision's `RandomErasing`."""
        tries = ERASING_ATTEMPTS
        area = (
            height
            * width
            * (
                ERASING_SCALE[0]
                + (ERASING_SCALE[1] - ERASING_SCALE[0]) * self._uniform(batch, tries, generator=generator)
            )
        )
        log_lo, log_hi = math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * self._uniform(batch, tries, generator=generator))  # (B, T)
        box_h = torch.sqrt(area * ratio).round().long()  # (B, T)
        box_w = torch.sqrt(area / ratio).round().long()
        fits = (box_h < height) & (box_w < width)  # (B, T)
        first = torch.where(fits.any(1), fits.int().argmax(1), 0)  # (B,) first box that fits
        box_h, box_w = box_h.gather(1, first[:, None])[:, 0], box_w.gather(1, first[:, None])[:, 0]  # (B,)
        erase = (self._uniform(batch, generator=generator) < self.erasing_prob) & fits.any(1)
        top = (self._uniform(batch, generator=generator) * (height - box_h + 1).clamp(min=1)).long()
        left = (self._uniform(batch, generator=generator) * (width - box_w + 1).clamp(min=1)).long()
        device = generator.device
        ys = torch.arange(height, device=device)[None, :, None]  # (1, H, 1)
        xs = torch.arange(width, device=device)[None, None, :]  # (1, 1, W)
        inside_y = (ys >= top[:, None, None]) & (ys < (top + box_h)[:, None, None])
        inside_x = (xs >= left[:, None, None]) & (xs < (left + box_w)[:, None, None])
        return inside_y & inside_x & erase[:, None, None]  # (B, H, W)
