"""k-reciprocal re-ranking against a dense reference written from the paper and the authors' definitions."""

import numpy as np
import pytest
import torch

from reid_accel.errors import ReidAccelError
from reid_accel.metrics import rank_metrics, rank_metrics_from_distance
from reid_accel.metrics.rerank import _smallest, jaccard_distance, k_reciprocal_encoding, rerank_distance


def dense_rerank(query, gallery, k1, k2, lambda_value):
    """Straightforward dense version: N x N matrices, per-item Python loops."""
    features = np.concatenate([query, gallery])
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    num_query, num_items = len(query), len(features)
    dist = np.maximum(2.0 - 2.0 * features @ features.T, 0.0)
    dist = dist / dist.max(axis=1, keepdims=True)
    ranked = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = ranked[i, : k + 1]
        return {int(j) for j in forward if i in ranked[j, : k + 1]}

    encoding = np.zeros((num_items, num_items))
    for i in range(num_items):
        members = reciprocal(i, k1)
        expanded = set(members)
        for q in members:
            candidate = reciprocal(q, round(k1 / 2))
            if len(candidate & members) > 2 / 3 * len(candidate):
                expanded |= candidate
        cols = sorted(expanded)
        weight = np.exp(-dist[i, cols])
        encoding[i, cols] = weight / weight.sum()
    if k2 != 1:
        encoding = np.stack([encoding[ranked[i, :k2]].mean(axis=0) for i in range(num_items)])
    jaccard = np.zeros((num_items, num_items))
    for a in range(num_items):
        for b in range(num_items):
            jaccard[a, b] = (
                1.0 - np.minimum(encoding[a], encoding[b]).sum() / np.maximum(encoding[a], encoding[b]).sum()
            )
    final = (1 - lambda_value) * jaccard + lambda_value * dist
    return final[:num_query, num_query:], encoding, jaccard


def clustered(seed, num_query=12, num_gallery=48, dim=8, num_ids=6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids, dim))
    q_pids, g_pids = rng.integers(0, num_ids, num_query), rng.integers(0, num_ids, num_gallery)
    query = centers[q_pids] + 0.9 * rng.normal(size=(num_query, dim))
    gallery = centers[g_pids] + 0.9 * rng.normal(size=(num_gallery, dim))
    return query, gallery, q_pids, g_pids


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), [(20, 6, 0.3), (6, 3, 0.5), (4, 1, 0.0)])
def test_matches_dense_reference(k1, k2, lambda_value):
    query, gallery, _, _ = clustered(0)
    expected, _, _ = dense_rerank(query, gallery, k1, k2, lambda_value)
    ours = rerank_distance(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=7)
    assert isinstance(ours, np.ndarray) and ours.shape == (12, 48) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_neighbour_lists_break_ties_by_index():
    # integer distances tie across the list boundary in most rows; BLAS products of duplicated features would not
    # reliably tie, so the tie rule is checked on the list builder itself
    rng = np.random.default_rng(4)
    block = rng.integers(0, 5, size=(30, 50)).astype(np.float64)
    for k in (1, 6, 21, 49, 50):
        index, values = _smallest(torch.from_numpy(block), k)
        expected = np.argsort(block, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(index.numpy(), expected)
        np.testing.assert_array_equal(values.numpy(), np.take_along_axis(block, expected, axis=1))


def test_encoding_and_jaccard_match_reference_and_are_symmetric():
    query, gallery, _, _ = clustered(1)
    _, encoding, jaccard = dense_rerank(query, gallery, 6, 3, 0.3)
    features = np.concatenate([query, gallery])
    ours = k_reciprocal_encoding(features, k1=6, k2=3, chunk_size=5)
    np.testing.assert_allclose(ours.to_dense().numpy(), encoding, atol=1e-7)
    np.testing.assert_allclose(ours.to_dense().sum(1).numpy(), 1.0, atol=1e-9)
    q_idx, g_idx = torch.arange(12), torch.arange(12, 60)
    forward = jaccard_distance(ours, q_idx, g_idx).numpy()
    backward = jaccard_distance(ours, g_idx, q_idx).numpy()
    np.testing.assert_allclose(forward, backward.T, atol=1e-12)
    np.testing.assert_allclose(forward, jaccard[:12, 12:], atol=1e-7)
    everything = torch.arange(60)
    full = jaccard_distance(ours, everything, everything).numpy()
    np.testing.assert_allclose(full, full.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(full), 0.0, atol=1e-12)


def test_torch_float32_input_returns_tensor():
    query, gallery, _, _ = clustered(2)
    expected, _, _ = dense_rerank(query, gallery, 20, 6, 0.3)
    query_t, gallery_t = torch.from_numpy(query).float(), torch.from_numpy(gallery).float()
    ours = rerank_distance(query_t, gallery_t)
    np.testing.assert_array_equal(query_t.numpy(), query.astype(np.float32))  # normalised on a copy
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5)


def test_improves_map_on_clustered_ids():
    # Gallery images of an id form a tight cluster; queries are noisy views, so their direct neighbours are often
    # wrong, while the k-reciprocal structure of the gallery still points at the right cluster.
    rng = np.random.default_rng(0)
    num_ids, dim = 30, 16
    centers = rng.normal(size=(num_ids, dim))
    g_pids = np.repeat(np.arange(1, num_ids + 1), 8)
    q_pids = np.repeat(np.arange(1, num_ids + 1), 2)
    gallery = centers[g_pids - 1] + 0.6 * rng.normal(size=(len(g_pids), dim))
    query = centers[q_pids - 1] + 1.5 * rng.normal(size=(len(q_pids), dim))
    q_cams, g_cams = np.zeros(len(q_pids), dtype=int), np.ones(len(g_pids), dtype=int)
    before = rank_metrics(query, gallery, q_pids, g_pids, q_cams, g_cams)
    after = rank_metrics_from_distance(rerank_distance(query, gallery), q_pids, g_pids, q_cams, g_cams)
    assert after["mAP"] > before["mAP"] + 0.1  # 0.547 -> 0.691


def test_bad_input_is_named():
    query, gallery, _, _ = clustered(5)
    gallery[3, 2] = np.inf
    with pytest.raises(ReidAccelError, match="NaN or infinite"):
        rerank_distance(query, gallery)
    with pytest.raises(ReidAccelError, match="dimension"):
        rerank_distance(query, gallery[:, :4])
    with pytest.raises(ReidAccelError, match="k1=0"):
        rerank_distance(query, query, k1=0)
