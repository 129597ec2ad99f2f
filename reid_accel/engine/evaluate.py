"""Embed a query/gallery split under accelerate and rank it with the exact metrics.

Every process embeds its share of the images and `gather_for_metrics` reassembles them in order, dropping the
samples accelerate repeats to even out the last batch, so the metrics see each image exactly once.
"""

import logging
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reid_accel.metrics import rank_metrics

logger = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """L2-normalised features of one split with their labels, in the split's row order."""

    features: torch.Tensor  # (N, D) float32 on the CPU
    pids: torch.Tensor  # (N,)
    camids: torch.Tensor  # (N,)


@torch.no_grad()
def extract_embeddings(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, *, flip: bool = False, desc: str = "embed"
) -> Embeddings:
    """Run `model.embed` over a prepared loader; with `flip`, average with the horizontally flipped image.

    Args:
        model: the encoder (unwrapped), switched to eval mode here and restored afterwards.
        loader: a loader passed through `accelerator.prepare`, yielding `pixel_values`, `pid`, `camid`.
        accelerator: the run's accelerator.
        flip: also embed the mirrored image and average the two features before normalising.

    Returns:
        The gathered embeddings of the whole split on every process.
    """
    was_training = model.training
    model.eval()
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        images = batch["pixel_values"]
        with accelerator.autocast():
            features = model(images).float()  # (B, D) BNNeck output
            if flip:
                features = features + model(images.flip(-1)).float()
        features = torch.nn.functional.normalize(features, dim=1)
        gathered = accelerator.gather_for_metrics((features, batch["pid"], batch["camid"]))
        chunks.append(tuple(t.cpu() for t in gathered))
    model.train(was_training)
    features, pids, camids = (torch.cat(parts) for parts in zip(*chunks, strict=True))
    return Embeddings(features, pids, camids)


def evaluate_retrieval(
    model: torch.nn.Module,
    query_loader: DataLoader,
    gallery_loader: DataLoader,
    accelerator: Accelerator,
    *,
    flip: bool = False,
    ap_mode: str = "standard",
) -> tuple[dict, Embeddings, Embeddings]:
    """Embed query and gallery and compute mAP / CMC under the Market-1501 protocol.

    Returns:
        The metrics dict of `rank_metrics` and the two embedding sets (for saving or pictures).
    """
    query = extract_embeddings(model, query_loader, accelerator, flip=flip, desc="query")
    gallery = extract_embeddings(model, gallery_loader, accelerator, flip=flip, desc="gallery")
    metrics = rank_metrics(
        query.features,
        gallery.features,
        query.pids,
        gallery.pids,
        query.camids,
        gallery.camids,
        ap_mode=ap_mode,
        device=accelerator.device,
    )
    return metrics, query, gallery
