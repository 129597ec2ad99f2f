"""DBSCAN on the sparse k-reciprocal Jaccard graph, as the clustering methods run it, without the N x N matrix.

The official codes (cluster contrast, CAP, O2CAP) build a dense N x N Jaccard matrix (4.3 GB in float32 at
MSMT17's 32,621 images, twice that once DBSCAN upcasts it) and hand it to ``DBSCAN(metric="precomputed")``. DBSCAN
only asks which pairs lie within ``eps``; with ``eps < 1`` a pair at distance 1 (no shared k-reciprocal column,
almost every pair) is never a neighbour, so the sparse graph of the pairs closer than 1 gives the same clusters.
"""

import numpy as np
import scipy.sparse
import torch
from sklearn.cluster import DBSCAN

from reid_accel.metrics.rerank import jaccard_graph


def jaccard_distance_graph(features: torch.Tensor, *, k1: int = 20, k2: int = 6) -> scipy.sparse.csr_matrix:
    """The k-reciprocal Jaccard distances of `compute_jaccard_distance` (SpCL's, used by cluster contrast and
    O2CAP), keeping only the pairs closer than 1 and the diagonal (explicit 0s).

    Conventions of that code: each k-NN list holds ``k1`` items, the item itself included; the expansion reads
    ``R(q, round(k1 / 2))``; ``k2`` rows are averaged by query expansion; weights are ``softmax(-(2 - 2 cos))`` over
    each expanded set. Neighbours are ranked by distance with ties broken by index (faiss leaves near-ties in an
    unspecified order), so the graph is a function of the features alone.

    Args:
        features: (N, D) features, L2-normalised here.
        k1: k-NN list length (20 in O2CAP, 30 in cluster contrast).
        k2: query-expansion size (6 in both).

    Returns:
        (N, N) CSR matrix, float64 for float64 features, else float32; each row's entries sorted by distance (ties
        by column), which is the order scikit-learn's precomputed neighbourhoods want.
    """
    graph = jaccard_graph(features, k1=k1, k2=k2).cpu()
    rows, cols = (index.numpy() for index in graph.indices())  # sorted by row, then column
    values = graph.values().numpy()
    order = np.lexsort((cols, values, rows))  # by row, then distance, then column
    indptr = np.zeros(graph.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=graph.shape[0]), out=indptr[1:])
    return scipy.sparse.csr_matrix((values[order], cols[order], indptr), shape=tuple(graph.shape))


def cluster_dbscan(distance: scipy.sparse.csr_matrix, *, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN pseudo-labels on a precomputed sparse distance graph, numbered canonically.

    Deterministic: DBSCAN on a precomputed graph draws nothing at random (it visits points in index order), and
    the graph's k-NN lists break ties by index; clusters are then renumbered by their smallest member index, so
    the labels are a function of the graph alone, whatever order scikit-learn found the clusters in.

    Args:
        distance: (N, N) sparse distances from `jaccard_distance_graph`; a pair not stored is not a neighbour.
        eps: neighbourhood radius in (0, 1] (0.5 in O2CAP, 0.6 in cluster contrast).
        min_samples: neighbours (the point included) that make a core point, at least 2 (4 in both recipes).

    Returns:
        (N,) int64 labels: cluster k is the k-th cluster by smallest member index; -1 = not clustered.
    """
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps={eps} is outside (0, 1]; Jaccard distances lie in [0, 1]")
    if min_samples < 2:
        raise ValueError(f"min_samples={min_samples}; expected at least 2 (1 makes every image a cluster)")
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distance)
    return canonical_labels(labels)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """(N,) int64 labels renumbered so cluster k is the k-th by smallest member index; -1 stays -1."""
    labels = np.asarray(labels, dtype=np.int64)
    clustered = labels >= 0
    if not clustered.any():
        return labels.copy()
    _, first, inverse = np.unique(labels[clustered], return_index=True, return_inverse=True)
    # `first` indexes the clustered subsequence, which keeps index order: ranking it ranks the smallest members.
    new_id = np.empty(len(first), dtype=np.int64)
    new_id[np.argsort(first)] = np.arange(len(first))
    out = np.full_like(labels, -1)
    out[clustered] = new_id[inverse]
    return out
