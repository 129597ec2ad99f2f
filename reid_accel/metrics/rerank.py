"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017).

The common implementations build dense ``(Q+G) x (Q+G)`` distance, rank and encoding matrices: at MSMT17 scale
(93,820 images) that is about 35 GB per float32 matrix. Here every item keeps only what the method reads:

1. one blockwise pass over ``X @ X.T`` (X: the L2-normalised query + gallery features) keeps, per item, its
   ``2 * (k1 + 1)`` nearest neighbours with their distances (enough to weight most expanded-set members; the rest
   get a dot product) and its largest distance, and writes the query x gallery distances into the output;
2. k-reciprocal sets, their expansion and the Gaussian weights live in a sparse ``(N, N)`` encoding ``V``
   (a few dozen entries per row);
3. local query expansion averages sparse rows, and the Jaccard distance walks an inverted index of ``V``.

Definitions follow the authors' released code: the original distance is the squared Euclidean distance of the
normalised features (``2 - 2 cos``), divided by its row maximum over all N items; neighbour lists include the item
itself, ranked by that distance with ties broken by index; ``R(p, k)`` are the items among ``p``'s ``k + 1``
nearest that have ``p`` among their own ``k + 1`` nearest; a candidate set ``R(q, round(k1 / 2))`` is merged when
it shares *strictly* more than two thirds of its items with ``R(p, k1)`` (the paper writes "at least"); ``V`` rows
are normalised to sum to 1, so the Jaccard distance is ``1 - m / (2 - m)`` with ``m`` the sum of minima; the result
is ``(1 - lambda) * jaccard + lambda * distance``. Query expansion is skipped when ``k2 == 1``.

`jaccard_graph` gives the Jaccard distances the clustering methods (SpCL, cluster contrast, CAP, O2CAP) compute
with their ``compute_jaccard_distance``, which differs in two places: each neighbour list holds ``k1`` items, the
item itself included (``R(p, k1)`` reads ``k1`` entries, ``R(q, round(k1 / 2))`` still ``round(k1 / 2) + 1``), and
the Gaussian weights use the raw distance ``2 - 2 cos`` (no row normalisation). It keeps only the pairs closer than
1, so the N x N matrix those codes build never exists.
"""

import logging

import numpy as np
import torch

from reid_accel.errors import ReidAccelError
from reid_accel.metrics.product import similarity
from reid_accel.metrics.ranking import ArrayLike, as_features, product_rows, resolve_device, unit_rows

logger = logging.getLogger(__name__)

# Item pairs looked up in the neighbour lists at once (a (chunk, 2 * (k1 + 1)) comparison).
_PAIR_CHUNK = 1 << 16
# Rows of the k-reciprocal expansion handled at once; its temporaries are rows * (k1 + 1)**2 * (k1 / 2 + 1) bytes.
_EXPANSION_ROWS = 4096


def rerank_distance(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> np.ndarray | torch.Tensor:
    """Re-ranked query-gallery distances (smaller = closer), ready for `rank_metrics_from_distance`.

    Args:
        query_features: (Q, D) numpy array or tensor (L2-normalised here).
        gallery_features: (G, D).
        k1: size of the k-reciprocal neighbourhood.
        k2: size of the local query expansion (1 disables it).
        lambda_value: weight of the original distance in the result.
        device: where the blocks are computed; default: the device of ``query_features`` if a tensor, else CPU.
        chunk_size: rows per product block; default: as `rank_metrics` splits its queries. Never changes the
            result.

    Returns:
        (Q, G) distances: a numpy array for numpy input, else a tensor on ``device``; float64 for float64 input,
        float32 otherwise.
    """
    query = as_features(query_features, "query_features")
    gallery = as_features(gallery_features, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ReidAccelError(
            f"query_features has dimension {query.shape[1]} but gallery_features has {gallery.shape[1]}; expected equal"
        )
    target = resolve_device(device, query_features)
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    features = torch.cat([query.to(target, dtype), gallery.to(target, dtype)])  # (N, D), our own copy
    # in place: at MSMT17 scale a second copy of the features is 0.77 GB
    features = unit_rows(features, "query_features or gallery_features", in_place=True)
    num_query = len(query)
    distance = torch.empty((num_query, len(gallery)), dtype=dtype, device=target)  # the result, filled in place
    encoding = _encode(features, k1=k1, k2=k2, chunk_size=chunk_size, query_gallery=distance)
    logger.info("k-reciprocal encoding of %d items: %d non-zeros", len(features), encoding.values().numel())
    rows = torch.arange(num_query, device=target)
    cols = torch.arange(num_query, len(features), device=target)
    for start, stop, jaccard in _jaccard_blocks(encoding, rows, cols):
        distance[start:stop].mul_(lambda_value).add_(jaccard, alpha=1.0 - lambda_value)
    return distance if isinstance(query_features, torch.Tensor) else distance.cpu().numpy()


def k_reciprocal_encoding(
    features: ArrayLike, *, k1: int = 20, k2: int = 6, chunk_size: int | None = None
) -> torch.Tensor:
    """The sparse encoding ``V`` of every item (after local query expansion when ``k2 > 1``).

    Args:
        features: (N, D) all items (query and gallery together), L2-normalised here.
        k1, k2: as in `rerank_distance`.
        chunk_size: rows per product block.

    Returns:
        (N, N) coalesced sparse COO tensor; each row sums to 1.
    """
    tensor = unit_rows(as_features(features, "features"), "features")
    return _encode(tensor, k1=k1, k2=k2, chunk_size=chunk_size, query_gallery=None)


def jaccard_distance(encoding: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Jaccard distance ``1 - m / (2 - m)`` between encoding rows, ``m = sum_j min(V[a, j], V[b, j])``.

    Symmetric: ``J(a, b) = J(b, a)``; ``1 - m / (2 - m)`` equals ``1 - sum(min) / sum(max)`` because rows sum to 1.

    Args:
        encoding: (N, N) coalesced sparse COO tensor from `k_reciprocal_encoding`.
        rows: (A,) item indices.
        cols: (B,) item indices.

    Returns:
        (A, B) dense distances in [0, 1].
    """
    return torch.cat([block for _, _, block in _jaccard_blocks(encoding, rows, cols)])


def jaccard_graph(features: ArrayLike, *, k1: int = 20, k2: int = 6, chunk_size: int | None = None) -> torch.Tensor:
    """The clustering methods' k-reciprocal Jaccard distances between all items, keeping the pairs closer than 1.

    A pair is closer than 1 exactly when the two encodings share a column, so a handful of pairs per row survive;
    every other pair is at distance 1 in the dense matrix (what density-based clustering with ``eps < 1`` reads as
    "not a neighbour"). Negative round-off is clamped to 0, as the original does, and the diagonal is an explicit 0.

    Args:
        features: (N, D) all items, L2-normalised here.
        k1: neighbour-list length, the item itself included (the clustering convention, see the module docstring).
        k2: size of the local query expansion (1 disables it).
        chunk_size: rows per product block; never changes the result.

    Returns:
        (N, N) coalesced sparse COO tensor of distances in [0, 1), float64 for float64 input, else float32.
    """
    tensor = unit_rows(as_features(features, "features"), "features")
    encoding = _encode(tensor, k1=k1, k2=k2, chunk_size=chunk_size, query_gallery=None, clustering=True)
    items = torch.arange(len(tensor), device=tensor.device)
    rows, cols, values = [], [], []
    for start, stop, block in _jaccard_blocks(encoding, items, items):  # (c, N) each
        block.clamp_(min=0.0)
        block[torch.arange(stop - start), items[start:stop]] = 0.0
        row, col = (block < 1.0).nonzero(as_tuple=True)
        rows.append(row + start)
        cols.append(col)
        values.append(block[row, col])
    return torch.sparse_coo_tensor(
        torch.stack([torch.cat(rows), torch.cat(cols)]),
        torch.cat(values),
        (len(tensor), len(tensor)),
        is_coalesced=True,
        check_invariants=False,
    )


def _jaccard_blocks(encoding: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
    """Yields ``(start, stop, (stop - start, B) Jaccard block)`` for consecutive slices of ``rows``.

    Only pairs sharing a non-zero column contribute to ``m``, so each block walks, for every non-zero ``(a, j)``
    of its rows, the inverted-index list of the ``cols`` rows that use column ``j``. Blocks hold about 2**22
    entries, so nothing of size A x B exists besides the caller's output.
    """
    index, values = encoding.indices(), encoding.values()
    num_items, device = encoding.shape[0], values.device
    position = torch.full((num_items,), -1, dtype=torch.int64, device=device)
    position[cols] = torch.arange(len(cols), device=device)
    # Inverted index of the ``cols`` rows: entries sorted by column, with each column's start and length.
    theirs = position[index[0]] >= 0
    b_pos, b_col, b_val = position[index[0][theirs]], index[1][theirs], values[theirs]
    order = torch.argsort(b_col, stable=True)
    b_pos, b_val = b_pos[order], b_val[order]
    per_col = torch.bincount(b_col, minlength=num_items)  # (N,)
    col_start = torch.cumsum(per_col, 0) - per_col
    # Non-zeros of each item's row (the encoding is coalesced: sorted by row).
    per_row = torch.bincount(index[0], minlength=num_items)
    row_start = torch.cumsum(per_row, 0) - per_row
    step = max(1, (1 << 22) // max(1, len(cols)))
    for start in range(0, len(rows), step):
        stop = min(start + step, len(rows))
        block_rows = rows[start:stop]
        # The block's non-zeros (a, j, V[a, j]), a as a position in the block.
        a_pos, entry = _expand(row_start[block_rows], per_row[block_rows])
        a_col, a_val = index[1][entry], values[entry]
        # One term per (block non-zero, ``cols`` row sharing its column).
        owner, other = _expand(col_start[a_col], per_col[a_col])
        shared = torch.zeros((stop - start) * len(cols), dtype=values.dtype, device=device)
        shared.index_add_(0, a_pos[owner] * len(cols) + b_pos[other], torch.minimum(a_val[owner], b_val[other]))
        shared = shared.view(stop - start, len(cols))  # (a, B)
        yield start, stop, 1.0 - shared / (2.0 - shared)


def _expand(first: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated ranges ``first[i] .. first[i] + length[i] - 1``: (owner i, position) per element."""
    owner = torch.repeat_interleave(torch.arange(len(first), device=first.device), length)  # (T,)
    offsets = torch.cumsum(length, 0) - length
    return owner, first[owner] + torch.arange(len(owner), device=first.device) - offsets[owner]


def _encode(
    features: torch.Tensor,
    *,
    k1: int,
    k2: int,
    chunk_size: int | None,
    query_gallery: torch.Tensor | None,
    clustering: bool = False,
) -> torch.Tensor:
    """Sparse encoding of all N items; optionally writes the normalised query x gallery distances.

    Args:
        features: (N, D) unit rows on the compute device.
        k1, k2, chunk_size: as in `rerank_distance`.
        query_gallery: (Q, N - Q) buffer receiving the row-normalised original distances, or None.
        clustering: the clustering methods' convention (`jaccard_graph`): ``k1`` entries per list, raw distances.
    """
    if k1 < 1 or k2 < 1:
        raise ReidAccelError(f"k1={k1}, k2={k2}; expected positive integers")
    num_items = len(features)
    # Lists longer than k1 + 1 also cache the distances of most expanded-set members (2-hop neighbours).
    num_near = min(num_items, max(2 * (k1 + 1), k2))
    ranked, near_distance, scale = _nearest(
        features, num_near, chunk_size, query_gallery, row_normalised=not clustering
    )  # (N, K) x2, (N,)
    # R(p, k) reads k + 1 list entries: k1 + 1 in the paper's code, k1 in the clustering codes'.
    rows, cols = _expanded_sets(ranked, k1 - 1 if clustering else k1, round(k1 / 2))  # (E,) each: R*(p, k1)
    distance = torch.cat(
        [
            _pair_distance(features, ranked, near_distance, scale, rows[start:stop], cols[start:stop])
            for start, stop in _spans(len(rows), _PAIR_CHUNK)
        ]
    )  # (E,)
    # Gaussian weights of the (row-normalised) distances, normalised to sum to 1 per row.
    weight = torch.exp(-distance)
    total = torch.zeros(num_items, dtype=weight.dtype, device=weight.device).index_add_(0, rows, weight)
    # (rows, cols) come unique and sorted from `_expanded_sets`: already coalesced.
    encoding = torch.sparse_coo_tensor(
        torch.stack([rows, cols]),
        weight / total[rows],
        (num_items, num_items),
        is_coalesced=True,
        check_invariants=False,
    )
    if k2 == 1:
        return encoding
    return _query_expansion(encoding, ranked[:, :k2])


def _spans(total: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _pair_distance(
    features: torch.Tensor,
    ranked: torch.Tensor,
    near_distance: torch.Tensor,
    scale: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """(E,) distances of item pairs divided by their row's scale: read from the neighbour lists, else from a dot
    product."""
    hit = ranked[rows] == cols[:, None]  # (E, K)
    found = hit.any(1)
    distance = near_distance[rows, hit.to(torch.uint8).argmax(1)]  # (E,), meaningless where not found
    missing = (~found).nonzero().squeeze(1)
    if len(missing):
        r, c = rows[missing], cols[missing]
        similarity = (features[r] * features[c]).sum(1)
        distance[missing] = (2.0 - 2.0 * similarity).clamp_(min=0.0) / scale[r]
    return distance


def _nearest(
    features: torch.Tensor,
    num_near: int,
    chunk_size: int | None,
    query_gallery: torch.Tensor | None,
    *,
    row_normalised: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per item: the ``num_near`` nearest items (self included, ties by index), their distances, the row scale.

    Distances are squared Euclidean distances of the unit vectors (``2 - 2 cos``) divided by their row's scale:
    the row maximum when ``row_normalised``, else 1.

    Returns:
        (N, num_near) int64 indices nearest first, (N, num_near) their distances, (N,) row scales.
    """
    num_items = len(features)
    chunk_size = product_rows(chunk_size, num_items, num_items, features.device)
    num_query = 0 if query_gallery is None else len(query_gallery)
    ranked = torch.empty((num_items, num_near), dtype=torch.int64, device=features.device)
    near_distance = torch.empty((num_items, num_near), dtype=features.dtype, device=features.device)
    row_max = (torch.empty if row_normalised else torch.ones)(num_items, dtype=features.dtype, device=features.device)
    buffer = torch.empty((min(chunk_size, num_items), num_items), dtype=features.dtype, device=features.device)
    for start, stop in _spans(num_items, chunk_size):
        block = similarity(features[start:stop], features, out=buffer[: stop - start])  # (c, N)
        block.mul_(-2.0).add_(2.0).clamp_(min=0.0)  # squared distance of unit vectors
        if row_normalised:
            row_max[start:stop] = block.amax(1)
            block.div_(row_max[start:stop, None])
        ranked[start:stop], near_distance[start:stop] = _smallest(block, num_near)
        if start < num_query:
            query_gallery[start : min(stop, num_query)] = block[: min(stop, num_query) - start, num_query:]
    return ranked, near_distance, row_max


def _smallest(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, k) columns of the k smallest entries per row and their values, ascending, ties broken by column."""
    take = min(k + 1, block.shape[1])  # one more, to see ties across the boundary
    values, index = torch.topk(block, take, dim=1, largest=False, sorted=True)  # (c, take)
    # topk's order among equal values is unspecified: re-sort by (value, column).
    index, order = torch.sort(index, dim=1)
    values = values.gather(1, order)
    values, order = torch.sort(values, dim=1, stable=True)
    index = index.gather(1, order)
    # Where the k-th and (k+1)-th values tie, more entries may share that value: those rows need a full stable sort.
    if take > k:
        overflow = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        if len(overflow):
            values[overflow], index[overflow] = (t[:, :take] for t in torch.sort(block[overflow], dim=1, stable=True))
    return index[:, :k], values[:, :k]


def _reciprocal(ranked: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k + 1) bool: ``ranked[i, t]`` is among i's k + 1 nearest and has i among its own k + 1 nearest."""
    near = ranked[:, : k + 1]  # (N, k+1)
    out = torch.empty_like(near, dtype=torch.bool)
    me = torch.arange(len(ranked), device=ranked.device)
    for start in range(0, len(ranked), _EXPANSION_ROWS):
        stop = min(start + _EXPANSION_ROWS, len(ranked))
        back = near[near[start:stop]]  # (c, k+1, k+1)
        out[start:stop] = (back == me[start:stop, None, None]).any(2)
    return out


def _expanded_sets(ranked: torch.Tensor, k1: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) pairs of the expanded k-reciprocal sets ``R*(p, k1)``, sorted by row then column.

    ``half`` is the k of the candidate sets ``R(q, half)``: ``round(k1 / 2)`` with the paper's k1 (Python's round,
    like numpy's: halves to even).
    """
    num_items, device = len(ranked), ranked.device
    # Lists shorter than k + 1 (tiny N) are used whole, as slicing a full ranking would do.
    half = min(half, ranked.shape[1] - 1)
    k1 = min(k1, ranked.shape[1] - 1)
    full_mask = _reciprocal(ranked, k1)  # (N, k1+1)
    half_mask = _reciprocal(ranked, half)  # (N, h+1)
    full_sets = torch.where(full_mask, ranked[:, : k1 + 1], -1)  # (N, k1+1), -1 = not a member
    half_sets = torch.where(half_mask, ranked[:, : half + 1], -2)  # (N, h+1), -2 never equals a member
    half_size = half_mask.sum(1)  # (N,)
    pair_rows, pair_cols = [], []
    for start in range(0, num_items, _EXPANSION_ROWS):
        stop = min(start + _EXPANSION_ROWS, num_items)
        mine = full_sets[start:stop]  # (c, k1+1)
        candidates = mine.clamp(min=0)  # members q of R(p, k1); -1 rows are masked below
        theirs = half_sets[candidates]  # (c, k1+1, h+1): R(q, k1/2) for every member q
        shared = (theirs[..., None] == mine[:, None, None, :]).any(3).sum(2)  # (c, k1+1): |R(p) ∩ R(q, k1/2)|
        merge = (mine >= 0) & (3 * shared > 2 * half_size[candidates])  # strictly more than two thirds
        added = torch.where(merge[..., None], theirs, -1).flatten(1)  # (c, (k1+1)*(h+1))
        members = torch.cat([mine, added], dim=1)  # (c, m)
        row = torch.arange(start, stop, device=device)[:, None].expand_as(members)
        keep = members >= 0
        key = torch.unique(row[keep] * num_items + members[keep])  # sorted, one per (row, col)
        pair_rows.append(key // num_items)
        pair_cols.append(key % num_items)
    return torch.cat(pair_rows), torch.cat(pair_cols)


def _query_expansion(encoding: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
    """Local query expansion: row i becomes the mean of the rows of its ``near.shape[1]`` nearest items (self incl.).

    Rows are expanded ``_EXPANSION_ROWS`` at a time, so the uncoalesced copies (k2 times the encoding's entries of
    those rows) stay small; each chunk is coalesced on its own and the chunks cover disjoint, increasing row ranges.
    """
    index, values = encoding.indices(), encoding.values()
    num_items, num_near = near.shape
    per_row = torch.bincount(index[0], minlength=num_items)  # (N,)
    row_start = torch.cumsum(per_row, 0) - per_row
    parts = []
    for start, stop in _spans(num_items, _EXPANSION_ROWS):
        source = near[start:stop].reshape(-1)  # (c * k2,): the rows averaged into rows start, start, ..., start + 1
        owner, entry = _expand(row_start[source], per_row[source])
        part = torch.sparse_coo_tensor(
            torch.stack([start + owner // num_near, index[1][entry]]),
            values[entry] / num_near,
            (num_items, num_items),
            check_invariants=False,
        ).coalesce()
        parts.append((part.indices(), part.values()))
    return torch.sparse_coo_tensor(
        torch.cat([i for i, _ in parts], dim=1),
        torch.cat([v for _, v in parts]),
        (num_items, num_items),
        is_coalesced=True,
        check_invariants=False,
    )
