"""Embed a query/gallery split under accelerate and rank it with the exact metrics.

Every process embeds its share of the images and `gather_for_metrics` reassembles them in order, dropping the
samples accelerate repeats to even out the last batch, so the metrics see each image exactly once.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reid_accel.config import DomainConfig
from reid_accel.data import ReIDImageDataset, build_transform, load_benchmark
from reid_accel.data.benchmarks import check_domain
from reid_accel.fileio import atomic_path, write_json_atomic
from reid_accel.folders import EvaluationFolder
from reid_accel.metrics import rank_metrics, rank_metrics_from_distance, rerank_distance, top_k_gallery
from reid_accel.metrics.visualize import plot_cmc, plot_rank_list

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
    """Run `model.embed` over a prepared loader; with `flip`, add the horizontally flipped image's feature.

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
            features = model.embed(images, flip=flip)  # (B, D) L2-normalised BNNeck output, float32
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
    rerank: bool = False,
    ap_mode: str = "standard",
) -> tuple[dict, Embeddings, Embeddings]:
    """Embed query and gallery and compute mAP / CMC under the Market-1501 protocol.

    With `rerank`, the cosine ranking is replaced by k-reciprocal re-ranked distances.

    Returns:
        The metrics dict of `rank_metrics` (with its `ap_mode`) and the two embedding sets (for saving or
        pictures).
    """
    query = extract_embeddings(model, query_loader, accelerator, flip=flip, desc="query")
    gallery = extract_embeddings(model, gallery_loader, accelerator, flip=flip, desc="gallery")
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    device = accelerator.device
    if rerank:
        distance = rerank_distance(query.features, gallery.features, device=device)
        metrics = rank_metrics_from_distance(distance, *labels, ap_mode=ap_mode, device=device)
    else:
        metrics = rank_metrics(query.features, gallery.features, *labels, ap_mode=ap_mode, device=device)
    return metrics, query, gallery


def evaluate_model(
    encoder: torch.nn.Module,
    dataset: DomainConfig,
    *,
    output_dir: str | Path | None = None,
    batch_size: int = 256,
    num_workers: int = 4,
    flip: bool = False,
    rerank: bool = False,
    ap_mode: str = "standard",
    model_reference: str = "",
    resize: str = "pil",
) -> dict:
    """Evaluate an encoder on a benchmark's query/gallery split, as `reid-accel eval` does.

    `resize="opencv"` resizes as trackers do (bilinear without antialiasing; see `build_transform`).

    With `output_dir`, the main process writes `metrics.json`, `features.safetensors` (features, pids, camids,
    and the image paths in the metadata), `cmc.png` and `rank_list.png` (the last two need matplotlib).

    Returns:
        The metrics dict of `rank_metrics` (plus the settings it was computed with).
    """
    check_domain(dataset, "--dataset/--root")
    accelerator = Accelerator()
    with accelerator.local_main_process_first():
        splits = load_benchmark(dataset.name, dataset.resolved_root(), **dataset.options)
    height, width = encoder.input_size
    transform = build_transform(height, width, mean=encoder.mean, std=encoder.std, resize=resize)
    query_set, gallery_set = (ReIDImageDataset(splits[name], transform) for name in ("query", "gallery"))
    query_loader, gallery_loader = (
        DataLoader(images, batch_size=batch_size, num_workers=num_workers) for images in (query_set, gallery_set)
    )
    encoder, query_loader, gallery_loader = accelerator.prepare(encoder, query_loader, gallery_loader)
    metrics, query, gallery = evaluate_retrieval(
        accelerator.unwrap_model(encoder),
        query_loader,
        gallery_loader,
        accelerator,
        flip=flip,
        rerank=rerank,
        ap_mode=ap_mode,
    )
    settings = {"dataset": dataset.name, "root": str(dataset.resolved_root()), "model": model_reference}
    settings |= {"flip": flip, "rerank": rerank, "resize": resize}  # the AP convention comes with the metrics
    if output_dir is not None and accelerator.is_main_process:
        write_evaluation(EvaluationFolder(Path(output_dir)), metrics, settings, query, gallery, query_set, gallery_set)
    accelerator.wait_for_everyone()
    return {**metrics, **settings}


def write_evaluation(
    folder: EvaluationFolder,
    metrics: dict,
    settings: dict,
    query: Embeddings,
    gallery: Embeddings,
    query_set: ReIDImageDataset,
    gallery_set: ReIDImageDataset,
) -> None:
    """Write the evaluation's files atomically; pictures only when matplotlib is installed."""
    paths = {"query": query_set.paths, "gallery": gallery_set.paths}
    folder.root.mkdir(parents=True, exist_ok=True)
    summary = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in metrics.items()}
    write_json_atomic(folder.metrics, {**summary, **settings})
    tensors = {
        "query_features": query.features.contiguous(),
        "query_pids": query.pids.contiguous(),
        "query_camids": query.camids.contiguous(),
        "gallery_features": gallery.features.contiguous(),
        "gallery_pids": gallery.pids.contiguous(),
        "gallery_camids": gallery.camids.contiguous(),
    }
    with atomic_path(folder.features) as tmp:
        save_file(tensors, tmp, metadata={f"{split}_paths": json.dumps(p) for split, p in paths.items()})
    try:
        plot_cmc(metrics["cmc"], folder.cmc, title=f"CMC on {settings['dataset']}")
        shown = list(range(min(4, len(query.features))))
        ranked, matches = top_k_gallery(
            query.features,
            gallery.features,
            query.pids,
            gallery.pids,
            query.camids,
            gallery.camids,
            query_indices=shown,
        )
        plot_rank_list(
            [query_set.image(i) for i in shown],
            {int(i): gallery_set.image(int(i)) for i in ranked.flatten().tolist() if i >= 0},  # only those drawn
            ranked,
            matches,
            [int(query.camids[i]) for i in shown],
            gallery.camids.tolist(),
            folder.rank_list,
            num_queries=len(shown),
        )
    except ImportError:
        logger.warning("matplotlib is not installed: no cmc.png / rank_list.png (pip install 'reid-accel[viz]')")
