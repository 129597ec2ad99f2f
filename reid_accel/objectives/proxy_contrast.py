"""Contrastive losses of a batch against a proxy memory: O2CAP's offline and online association, cluster contrast.

The official codes loop over cameras and samples in Python; here each loss is a few (B, M) tensor operations
(M proxies), in float32 whatever the autocast dtype. The memory is a constant (its gradient is never needed: the
memory moves by momentum after the step), so scores are ``x . M^T`` with gradients to the features only.

O2CAP reduces each association loss per camera: the mean over the batch's samples of each camera present,
SUMMED over those cameras, so the loss grows with the number of cameras a batch holds (CLUSTERING-METHODS.md);
`_camera_group_sum` computes that as one weighted sum, ``sum_i loss_i / n_camera(i)``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def _scores(features: Tensor, memory: Tensor) -> Tensor:
    """(B, M) cosine of each (L2-normalised, float32) feature with each memory row; gradients reach the features.

    Normalising an already normalised model output changes neither its value nor its gradient (the projection
    is idempotent), and it makes raw features safe to pass.
    """
    return F.normalize(features.float(), dim=1) @ memory.detach().float().T


def _camera_group_sum(per_sample: Tensor, camids: Tensor) -> Tensor:
    """Sum over the cameras present of each camera's mean of `per_sample` (B,): one deterministic weighted sum."""
    _, inverse, counts = torch.unique(camids, return_inverse=True, return_counts=True)
    return (per_sample / counts[inverse].to(per_sample.dtype)).sum()


def _soft_positive_nll(logits: Tensor, positives: Tensor, selected: Tensor) -> Tensor:
    """(B,) cross-entropy with target 1 / #positives over the positives, the softmax over the `selected` columns.

    Args:
        logits: (B, M) scores / temperature.
        positives: (B, M) bool, a subset of `selected`.
        selected: (B, M) bool: positives and negatives.
    """
    log_norm = logits.masked_fill(~selected, float("-inf")).logsumexp(1, keepdim=True)  # (B, 1)
    log_prob = (logits - log_norm).masked_fill(~positives, 0.0)  # (B, M)
    return -log_prob.sum(1) / positives.sum(1)


def _top_columns(values: Tensor, excluded: Tensor, count: int) -> Tensor:
    """(B, M) bool: each row's `count` largest `values` outside `excluded` (fewer if fewer are left)."""
    masked = values.masked_fill(excluded, float("-inf"))
    top, index = masked.topk(min(count, values.shape[1]), dim=1)  # (B, k)
    chosen = torch.zeros_like(excluded)
    return chosen.scatter_(1, index, top > float("-inf"))


def offline_association_loss(
    features: Tensor,
    memory: Tensor,
    proxies: Tensor,
    cluster_of_proxy: Tensor,
    camids: Tensor,
    *,
    temperature: float = 0.07,
    num_negatives: int = 50,
) -> Tensor:
    """O2CAP's offline association: pull a sample to every proxy of its cluster (all its cameras) at once.

    Positives are all proxies of the sample's cluster, with target 1 / #positives; negatives the `num_negatives`
    other proxies with the highest score for this sample (fewer if fewer exist); cross-entropy of
    ``x . M^T / temperature`` over positives + negatives; per camera group the mean, summed over cameras.

    Args:
        features: (B, D) training features.
        memory: (M, D) proxy memory.
        proxies: (B,) proxy of each sample.
        cluster_of_proxy: (M,) cluster of each proxy.
        camids: (B,) camera of each sample (for the reduction).
        temperature: divides the scores (0.07).
        num_negatives: hard negatives per sample (50).

    Returns:
        Scalar float32 loss.
    """
    _check_batch(features, memory, proxies, camids)
    logits = _scores(features, memory) / temperature  # (B, M)
    cluster_of_proxy = cluster_of_proxy.to(logits.device)
    positives = cluster_of_proxy[None, :] == cluster_of_proxy[proxies.to(logits.device)][:, None]  # (B, M)
    negatives = _top_columns(logits.detach(), positives, num_negatives)
    per_sample = _soft_positive_nll(logits, positives, positives | negatives)  # (B,)
    return _camera_group_sum(per_sample, camids.to(logits.device))


def online_association_loss(
    features: Tensor,
    memory: Tensor,
    proxies: Tensor,
    camera_of_proxy: Tensor,
    camids: Tensor,
    *,
    temperature: float = 0.07,
    num_positives: int = 3,
    num_negatives: int = 50,
    weight_self: float = 0.15,
    num_cameras: int | None = None,
) -> Tensor:
    """O2CAP's online association: positives found on the fly, the best proxy of each camera by a blended similarity.

    ``sim = weight_self * s + (1 - weight_self) * (m_y . M^T)``, with s the sample's detached cosine to every proxy
    and m_y its own proxy's row: it trusts the memory's view of the sample's proxy more than the one augmented
    sample. In every camera of the training set the proxy with the highest sim (ties: the lowest index); the
    `num_positives` best of those are the positives (target 1 / num_positives); the `num_negatives` highest sim
    among the rest are the negatives; logits ``x . M^T / temperature``; per camera group the mean, summed.

    Args:
        features: (B, D) training features.
        memory: (M, D) proxy memory.
        proxies: (B,) proxy of each sample.
        camera_of_proxy: (M,) camera of each proxy.
        camids: (B,) camera of each sample (for the reduction).
        temperature, num_positives, num_negatives, weight_self: 0.07, 3, 50, 0.15 in O2CAP.
        num_cameras: cameras of the training set, each of which must own a proxy; default: the largest camera
            of the proxies and the batch, plus one.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: fewer than num_positives + num_negatives proxies, fewer cameras than num_positives, or a
            camera without a proxy (the official code crashes on each).
    """
    _check_batch(features, memory, proxies, camids)
    device = memory.device
    camera_of_proxy, proxies, camids = camera_of_proxy.to(device), proxies.to(device), camids.to(device)
    num_proxies = len(memory)
    if num_proxies < num_positives + num_negatives:
        raise ValueError(
            f"{num_proxies} proxies are fewer than num_positives + num_negatives = {num_positives + num_negatives}"
        )
    if len(camera_of_proxy) and int(camera_of_proxy.min()) < 0:
        raise ValueError("camera_of_proxy holds -1: online association needs proxies split by camera")
    if num_cameras is None:
        num_cameras = int(torch.cat([camera_of_proxy, camids]).max()) + 1
    if num_cameras < num_positives:
        raise ValueError(f"{num_cameras} cameras are fewer than num_positives={num_positives}")
    empty = (torch.bincount(camera_of_proxy, minlength=num_cameras)[:num_cameras] == 0).nonzero().flatten()
    if len(empty):
        raise ValueError(f"camera(s) {empty.tolist()} have no proxy; online association needs one in every camera")
    scores = _scores(features, memory)  # (B, M) cosine
    with torch.no_grad():
        memory32 = memory.float()
        sim = weight_self * scores + (1.0 - weight_self) * (memory32[proxies] @ memory32.T)  # (B, M)
        batch = len(sim)
        by_camera = camera_of_proxy.expand(batch, -1)  # (B, M)
        camera_best = torch.full((batch, num_cameras), float("-inf"), device=device)
        camera_best.scatter_reduce_(1, by_camera, sim, "amax")  # (B, C)
        index = torch.arange(num_proxies, device=device).expand(batch, -1)
        at_best = torch.where(sim == camera_best.gather(1, by_camera), index, num_proxies)  # (B, M)
        best_proxy = torch.full((batch, num_cameras), num_proxies, device=device)
        best_proxy.scatter_reduce_(1, by_camera, at_best, "amin")  # (B, C) lowest index at each camera's max
        top = camera_best.topk(num_positives, dim=1).indices  # (B, P) cameras
        positives = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, best_proxy.gather(1, top), True)
        negatives = _top_columns(sim, positives, num_negatives)
    per_sample = _soft_positive_nll(scores / temperature, positives, positives | negatives)  # (B,)
    return _camera_group_sum(per_sample, camids)


def cluster_contrast_loss(features: Tensor, memory: Tensor, labels: Tensor, *, temperature: float = 0.05) -> Tensor:
    """Cluster contrast: cross-entropy of ``normalise(x) . M^T / temperature`` over all centroids, batch mean.

    Args:
        features: (B, D) training features.
        memory: (M, D) one centroid per cluster.
        labels: (B,) cluster of each sample.
        temperature: 0.05.

    Returns:
        Scalar float32 loss.
    """
    _check_batch(features, memory, labels, labels)
    return F.cross_entropy(_scores(features, memory) / temperature, labels.to(memory.device))


def _check_batch(features: Tensor, memory: Tensor, proxies: Tensor, camids: Tensor) -> None:
    if features.ndim != 2 or memory.ndim != 2 or features.shape[1] != memory.shape[1]:
        raise ValueError(f"features {tuple(features.shape)} and memory {tuple(memory.shape)} must be (B, D), (M, D)")
    if proxies.shape != features.shape[:1] or camids.shape != features.shape[:1]:
        raise ValueError(
            f"proxies {tuple(proxies.shape)} and camids {tuple(camids.shape)} must have one entry per sample"
        )
