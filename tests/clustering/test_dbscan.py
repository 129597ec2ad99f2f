"""The sparse Jaccard graph against a dense transcription of the clustering codes' `compute_jaccard_distance`."""

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN

from reid_accel.clustering import cluster_dbscan, jaccard_distance_graph
from reid_accel.clustering.dbscan import canonical_labels


def dense_jaccard(features: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Dense N x N version with per-item loops: k1-entry lists (self included), raw-distance softmax weights."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    num = len(unit)
    dist = 2.0 - 2.0 * unit @ unit.T
    initial_rank = np.argsort(dist, axis=1, kind="stable")[:, :k1]  # the k-NN search returns k1 items

    def reciprocal(i, k):
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    full = [reciprocal(i, k1) for i in range(num)]
    half = [reciprocal(i, int(np.around(k1 / 2))) for i in range(num)]
    encoding = np.zeros((num, num))
    for i in range(num):
        expanded = full[i]
        for candidate in full[i]:
            theirs = half[candidate]
            if len(np.intersect1d(theirs, full[i])) > 2 / 3 * len(theirs):
                expanded = np.append(expanded, theirs)
        expanded = np.unique(expanded)
        weight = np.exp(-dist[i, expanded])
        encoding[i, expanded] = weight / weight.sum()
    if k2 != 1:
        encoding = np.stack([encoding[initial_rank[i, :k2]].mean(axis=0) for i in range(num)])
    jaccard = np.empty((num, num))
    for i in range(num):
        shared = np.minimum(encoding[i], encoding).sum(axis=1)
        jaccard[i] = 1.0 - shared / (2.0 - shared)
    return np.maximum(jaccard, 0.0)


def clustered_features(seed=0, num=200, num_ids=25, dim=16, noise=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    pids = rng.integers(0, num_ids, num)
    return centres[pids] + noise * rng.normal(size=(num, dim)), pids


def as_dense(graph) -> np.ndarray:
    """Pairs not stored are at distance 1."""
    dense = np.ones(graph.shape)
    coo = graph.tocoo()
    dense[coo.row, coo.col] = coo.data
    return dense


@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (30, 6), (7, 1), (5, 3)])
def test_graph_matches_dense_reference(k1, k2):
    features, _ = clustered_features()
    expected = dense_jaccard(features, k1, k2)
    graph = jaccard_distance_graph(torch.from_numpy(features), k1=k1, k2=k2)
    assert graph.dtype == np.float64 and graph.shape == (200, 200)
    np.testing.assert_allclose(as_dense(graph), expected, rtol=0, atol=1e-12)
    # stored: exactly the pairs closer than 1, plus the diagonal as explicit zeros
    stored = np.zeros((200, 200), dtype=bool)
    coo = graph.tocoo()
    stored[coo.row, coo.col] = True
    np.testing.assert_array_equal(stored, (expected < 1) | np.eye(200, dtype=bool))
    assert (graph.diagonal() == 0).all()
    # float32 features: float32 graph, equal to round-off
    single = jaccard_distance_graph(torch.from_numpy(features).float(), k1=k1, k2=k2)
    assert single.dtype == np.float32
    np.testing.assert_allclose(as_dense(single), expected, rtol=0, atol=2e-6)


def test_rows_are_sorted_by_distance():
    features, _ = clustered_features(1)
    graph = jaccard_distance_graph(torch.from_numpy(features))
    for i in range(graph.shape[0]):
        row = graph.data[graph.indptr[i] : graph.indptr[i + 1]]
        assert (np.diff(row) >= 0).all()


@pytest.mark.parametrize(("eps", "k1"), [(0.5, 20), (0.6, 30), (0.3, 20)])
def test_dbscan_on_the_graph_equals_dbscan_on_the_dense_matrix(eps, k1):
    features, pids = clustered_features(2)
    graph = jaccard_distance_graph(torch.from_numpy(features), k1=k1, k2=6)
    labels = cluster_dbscan(graph, eps=eps, min_samples=4)
    dense = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense_jaccard(features, k1, 6))
    np.testing.assert_array_equal(labels, canonical_labels(dense))
    assert labels.dtype == np.int64 and labels.max() >= 5  # real clusters, not one blob
    # canonical: cluster k is the k-th by smallest member
    firsts = [int(np.flatnonzero(labels == k)[0]) for k in range(labels.max() + 1)]
    assert firsts == sorted(firsts)


def test_canonical_labels_depend_on_the_partition_only():
    labels = np.array([3, 3, -1, 0, 7, 0, 3, -1, 7])
    renamed = np.array([1, 1, -1, 9, 2, 9, 1, -1, 2])
    expected = np.array([0, 0, -1, 1, 2, 1, 0, -1, 2])
    np.testing.assert_array_equal(canonical_labels(labels), expected)
    np.testing.assert_array_equal(canonical_labels(renamed), expected)
    np.testing.assert_array_equal(canonical_labels(np.full(3, -1)), np.full(3, -1))


def test_clustering_is_deterministic():
    features, _ = clustered_features(3)
    runs = [cluster_dbscan(jaccard_distance_graph(torch.from_numpy(features)), eps=0.5, min_samples=4) for _ in "ab"]
    np.testing.assert_array_equal(*runs)


@pytest.mark.parametrize(("eps", "min_samples", "message"), [(0.0, 4, "outside"), (1.5, 4, "outside"), (0.5, 1, "2")])
def test_bad_dbscan_settings(eps, min_samples, message):
    graph = jaccard_distance_graph(torch.from_numpy(clustered_features()[0]))
    with pytest.raises(ValueError, match=message):
        cluster_dbscan(graph, eps=eps, min_samples=min_samples)
