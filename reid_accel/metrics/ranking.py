"""Exact CMC and mAP under the Market-1501 protocol, without sorting the gallery.

Protocol (METHOD.md, "Evaluation protocol"): for each query, gallery items with the same id *and* the same camera are
removed, gallery items with id -1 (junk) are removed, id 0 (distractors) stays. A *true match* is a remaining gallery
item with the query's id. Queries without a true match are left out of the averages and counted.

Ranking: higher cosine similarity (or smaller distance) first; equal scores are ordered by gallery index, lowest
first, as a stable sort of the gallery would do (indices count after the junk columns are dropped, which keeps their
order). "Equal" means equal computed scores: BLAS may give duplicated gallery vectors scores one ulp apart.

AP conventions (``ap_mode``):

- ``"standard"``: the mean, over the true matches, of the precision at each hit (torchreid, fast-reid).
- ``"trapezoid"``: the Market-1501 devkit rule the authors used. Walking the ranked list, at each position with
  recall ``r`` and precision ``p``: ``AP += (r - r_prev) * (p_prev + p) / 2`` from ``r_prev = 0, p_prev = 1``.

Why no sort: AP and CMC need only the 0-based position of each true match among the valid gallery items, i.e. the
number of valid items ranked before it. A gallery item that is not a true match can only precede a match if it
scores at least as high as the query's *worst* match, so one comparison pass over each block keeps those candidates
(a few percent of the gallery for a trained model). Each candidate is placed among the block's sorted matches with
one ``searchsorted`` over float64 ``row * stride + score`` keys (equal keys, from equal scores or float64 rounding,
are then settled exactly on the original scores and gallery indices), and a histogram of those placements gives
every match's position. Cost: the similarity product plus a few linear passes over each block and over the
candidates; memory: one ``(chunk, G)`` block of scores at a time.

Product: `product.similarity`, the faster of torch's and numpy's CPU matmul on this machine, measured on its first
products.

Devices: CPU blocks are ranked by `cpu_ranking.match_positions`, the same positions with numpy over a thread pool,
each row's candidates sorted (see that module for how); CUDA blocks by the torch code here (`_block_ranks`).
"""

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from reid_accel.errors import ReidAccelError
from reid_accel.metrics.cpu_ranking import match_positions
from reid_accel.metrics.product import similarity

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor | Sequence
APMode = Literal["standard", "trapezoid"]
AP_MODES: tuple[str, ...] = ("standard", "trapezoid")
JUNK_PID = -1
NO_CAMERA = -1  # a camera id meaning "unknown" (data without cameras): same-camera matches are kept

# Block sizes. A product block holds at least 2**24 scores (64 MB in float32) and 1,024 queries on the CPU, the
# queries split evenly: every matmul call re-reads and packs the whole gallery, which costs 13 % more CPU at 256 rows
# than at 1,024 (2048-d), while a block of about a thousand rows is still in cache when it is ranked and its buffer,
# allocated once, is a third of Market's full product (whose pages the kernel would have to fault in): at Market
# scale blocks of 1,024-1,700 queries took 1.11-1.12x the bare product, one block of 3,368 1.20x (BENCHMARKS.md).
# The torch ranking (CUDA; on the CPU only in tests) walks a block in sub-blocks of 2**25 scores on the CPU: every
# torch call is a parallel region, and on a busy machine each waits for a descheduled sibling thread.
_PRODUCT_ENTRIES = {"cpu": 1 << 24, "cuda": 1 << 27}
_MIN_PRODUCT_ROWS = {"cpu": 1024, "cuda": 2048}
_RANKING_ENTRIES = {"cpu": 1 << 25, "cuda": 1 << 27}
# Cosine similarities of unit vectors stay within [-1, 1] up to rounding.
_COSINE_BOUND = 1.5


def rank_metrics(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    ap_mode: APMode = "standard",
    max_rank: int = 50,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> dict:
    """CMC and mAP of cosine-similarity retrieval (features are L2-normalised here).

    Args:
        query_features: (Q, D) numpy array or tensor.
        gallery_features: (G, D).
        query_pids: (Q,) integer ids.
        gallery_pids: (G,) integer ids; -1 marks junk (removed), 0 distractors (kept).
        query_camids: (Q,) camera ids; -1 (`NO_CAMERA`: the data records no cameras) keeps the query's
            same-camera matches, which are otherwise removed.
        gallery_camids: (G,) camera ids.
        ap_mode: ``"standard"`` or ``"trapezoid"`` (see the module docstring).
        max_rank: length of the returned CMC curve.
        device: where the blocks are computed; default: the device of ``query_features`` if it is a tensor, else CPU.
        chunk_size: queries per product block; default: the queries split evenly into blocks of at least 2**24
            scores and 1,024 queries on the CPU (2**27 and 2,048 on a GPU). Never changes the result.

    Returns:
        ``mAP``, ``rank1``, ``rank5``, ``rank10`` (fractions, Python floats), ``cmc`` ((max_rank,) float64 array:
        ``cmc[k]`` is the share of valid queries with a true match within the top ``k + 1``), ``num_queries``,
        ``num_valid_queries`` (queries with at least one true match; the averages run over these) and ``ap_mode``
        (the AP convention, so that a stored result says which one it used).
    """
    query = as_features(query_features, "query_features")
    gallery = as_features(gallery_features, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ReidAccelError(
            f"query_features has dimension {query.shape[1]} but gallery_features has {gallery.shape[1]}; expected equal"
        )
    protocol = _Protocol.build(query_pids, gallery_pids, query_camids, gallery_camids, len(query), len(gallery))
    target = resolve_device(device, query_features)
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    if not protocol.all_columns_kept:
        gallery = gallery[protocol.kept_columns.to(gallery.device)]
    query = unit_rows(query.to(target, dtype), "query_features")
    gallery = unit_rows(gallery.to(target, dtype), "gallery_features")

    chunk_size = product_rows(chunk_size, len(query), len(gallery), target)
    buffer = torch.empty((min(chunk_size, len(query)), len(gallery)), dtype=dtype, device=target)

    def scores(start: int, stop: int) -> torch.Tensor:
        return similarity(query[start:stop], gallery, out=buffer[: stop - start])  # (c, G_kept)

    return _evaluate(
        scores, protocol, target, ap_mode=ap_mode, max_rank=max_rank, chunk_size=chunk_size, bound=_COSINE_BOUND
    )


def rank_metrics_from_distance(
    distmat: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    ap_mode: APMode = "standard",
    max_rank: int = 50,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> dict:
    """CMC and mAP from a precomputed ``(Q, G)`` distance matrix (smaller = closer), e.g. after re-ranking.

    Same protocol, tie rule, arguments and result as `rank_metrics`; the matrix is read one block of rows at a time,
    so it may live on the CPU (or be a memory-mapped array) while the blocks are ranked on ``device``.
    """
    dist = _matrix(distmat)
    protocol = _Protocol.build(query_pids, gallery_pids, query_camids, gallery_camids, dist.shape[0], dist.shape[1])
    target = resolve_device(device, distmat)
    kept = None if protocol.all_columns_kept else protocol.kept_columns.to(dist.device)
    chunk_size = product_rows(chunk_size, dist.shape[0], len(protocol.kept_columns), target)

    def scores(start: int, stop: int) -> torch.Tensor:
        block = dist[start:stop] if kept is None else dist[start:stop].index_select(1, kept)
        block = block.to(target, _float_dtype(block.dtype))
        if torch.isnan(block).any():
            raise ReidAccelError(f"distmat holds NaN in rows {start}..{stop - 1}; expected real distances")
        return -block  # (c, G_kept): higher is better

    return _evaluate(scores, protocol, target, ap_mode=ap_mode, max_rank=max_rank, chunk_size=chunk_size, bound=None)


def top_k_gallery(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    query_indices: Sequence[int],
    top_k: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's top-k ranked gallery items for a few queries (for rank-list pictures).

    Same ranking and exclusions as `rank_metrics` (same id + same camera and junk removed, ties by gallery index).

    Args:
        query_features: (Q, D); only the rows in ``query_indices`` are scored.
        gallery_features: (G, D).
        query_pids, gallery_pids, query_camids, gallery_camids: as in `rank_metrics`.
        query_indices: the n queries to rank.
        top_k: list length.

    Returns:
        ``(ranked, matches)``: (n, top_k) int64 indices into the *original* gallery, padded with -1 when fewer valid
        items exist, and (n, top_k) bool, True where the item is a true match.
    """
    if top_k < 1:
        raise ReidAccelError(f"top_k={top_k}; expected a positive integer")
    query = as_features(query_features, "query_features").cpu()  # a few rows: the CPU is fine
    gallery = as_features(gallery_features, "gallery_features").cpu()
    q_pids, g_pids, q_cams, g_cams = _ids(
        query_pids, gallery_pids, query_camids, gallery_camids, len(query), len(gallery)
    )
    rows = torch.as_tensor(np.asarray(query_indices, dtype=np.int64))
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(query))):
        raise ReidAccelError(f"query_indices={rows.tolist()}; expected indices into {len(query)} queries")
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    query = unit_rows(query[rows].to(dtype), "query_features")
    scores = similarity(query, unit_rows(gallery.to(dtype), "gallery_features"))  # (n, G)
    same_pid = q_pids[rows, None] == g_pids[None, :]  # (n, G)
    same_camera = (q_cams[rows, None] == g_cams[None, :]) & (q_cams[rows, None] != NO_CAMERA)  # (n, G)
    excluded = (same_pid & same_camera) | (g_pids == JUNK_PID)[None, :]
    # Excluded items sink to the end; the stable sort keeps gallery order among equal scores.
    scores = scores.masked_fill(excluded, -math.inf)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top_k]  # (n, k)
    valid = ~excluded.gather(1, order)
    ranked = torch.full((len(rows), top_k), -1, dtype=torch.int64)  # (n, k): -1 where the gallery runs out
    matches = torch.zeros((len(rows), top_k), dtype=torch.bool)
    ranked[:, : order.shape[1]] = torch.where(valid, order, -1)
    matches[:, : order.shape[1]] = same_pid.gather(1, order) & valid
    return ranked.numpy(), matches.numpy()


@dataclasses.dataclass(frozen=True)
class _Protocol:
    """The kept (non-junk) gallery columns and, for every query, its same-id gallery columns (CSR layout).

    Built once per evaluation, so that a block of queries finds its pairs by slicing.
    """

    kept_columns: torch.Tensor  # (G_kept,) original gallery indices of the non-junk items, ascending
    all_columns_kept: bool
    num_query: int
    pair_offsets: torch.Tensor  # (Q + 1,) query q owns pairs pair_offsets[q] .. pair_offsets[q + 1] - 1
    pair_queries: torch.Tensor  # (P,) query index of each pair
    pair_columns: torch.Tensor  # (P,) kept column with the query's id, ascending within a query
    pair_is_match: torch.Tensor  # (P,) other camera: a true match (same camera: removed from the ranking)

    @classmethod
    def build(cls, query_pids, gallery_pids, query_camids, gallery_camids, num_query: int, num_gallery: int):
        q_pids, g_pids, q_cams, g_cams = _ids(
            query_pids, gallery_pids, query_camids, gallery_camids, num_query, num_gallery
        )
        kept = (g_pids != JUNK_PID).nonzero().squeeze(1)
        g_pids, g_cams = g_pids[kept], g_cams[kept]
        sorted_pids, by_pid = torch.sort(g_pids, stable=True)
        first = torch.searchsorted(sorted_pids, q_pids)  # (Q,)
        count = torch.searchsorted(sorted_pids, q_pids, right=True) - first
        offsets = torch.cat([count.new_zeros(1), torch.cumsum(count, 0)])
        queries = torch.repeat_interleave(torch.arange(num_query), count)  # (P,)
        columns = by_pid[first[queries] + torch.arange(len(queries)) - offsets[queries]]
        is_match = (g_cams[columns] != q_cams[queries]) | (q_cams[queries] == NO_CAMERA)
        return cls(kept, len(kept) == num_gallery, num_query, offsets, queries, columns, is_match)

    def to(self, device: torch.device) -> "_Protocol":
        return dataclasses.replace(
            self,
            pair_queries=self.pair_queries.to(device),
            pair_columns=self.pair_columns.to(device),
            pair_is_match=self.pair_is_match.to(device),
        )

    def same_pid_pairs(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row within the block, kept column, is true match) for the same-id pairs of queries ``start..stop-1``."""
        first, last = int(self.pair_offsets[start]), int(self.pair_offsets[stop])
        return self.pair_queries[first:last] - start, self.pair_columns[first:last], self.pair_is_match[first:last]


def _numpy_on(device: torch.device) -> bool:
    """Whether blocks on `device` are ranked by `cpu_ranking` (numpy, the CPU) rather than `_block_ranks` (CUDA)."""
    return device.type == "cpu"


def product_rows(chunk_size: int | None, num_query: int, num_gallery: int, device: torch.device) -> int:
    """Queries per product block: ``chunk_size`` if given, else the queries split evenly into blocks of at least
    `_PRODUCT_ENTRIES` scores and `_MIN_PRODUCT_ROWS` queries (fewer only when there are fewer queries)."""
    if chunk_size is None:
        kind = "cuda" if device.type == "cuda" else "cpu"
        blocks = max(1, num_query // max(_MIN_PRODUCT_ROWS[kind], _PRODUCT_ENTRIES[kind] // max(1, num_gallery)))
        return max(1, math.ceil(num_query / blocks))
    if chunk_size < 1:
        raise ReidAccelError(f"chunk_size={chunk_size}; expected a positive integer")
    return chunk_size


def _evaluate(
    scores_of: Callable[[int, int], torch.Tensor],
    protocol: _Protocol,
    device: torch.device,
    *,
    ap_mode: str,
    max_rank: int,
    chunk_size: int,
    bound: float | None,
) -> dict:
    """Ranks the product blocks in sub-blocks; reduces per-query AP and first hits to the metric dict."""
    if ap_mode not in AP_MODES:
        raise ReidAccelError(f"ap_mode={ap_mode!r}; expected one of {', '.join(AP_MODES)}")
    if max_rank < 1:
        raise ReidAccelError(f"max_rank={max_rank}; expected a positive integer")
    num_query, num_gallery = protocol.num_query, len(protocol.kept_columns)
    sub_rows = max(1, _RANKING_ENTRIES["cuda" if device.type == "cuda" else "cpu"] // max(1, num_gallery))
    pairs_on_device = protocol.to(device)
    aps, firsts = [], []
    for start in range(0, num_query, chunk_size):
        block = scores_of(start, min(start + chunk_size, num_query))  # (c, G_kept)
        if _numpy_on(device):
            pairs = (t.numpy() for t in protocol.same_pid_pairs(start, start + len(block)))
            found = match_positions(block.numpy(), *pairs, workers=torch.get_num_threads())
            ap, first = _ap_and_first(*(torch.from_numpy(a) for a in found), len(block), ap_mode=ap_mode)
            aps.append(ap)
            firsts.append(first)
            continue
        for offset in range(0, len(block), sub_rows):
            stop = min(offset + sub_rows, len(block))
            pairs = pairs_on_device.same_pid_pairs(start + offset, start + stop)
            found = _block_ranks(block[offset:stop], *pairs, bound=bound)
            ap, first = _ap_and_first(*found, stop - offset, ap_mode=ap_mode)
            aps.append(ap.cpu())
            firsts.append(first.cpu())
    ap = torch.cat(aps) if aps else torch.zeros(0, dtype=torch.float64)
    first = torch.cat(firsts) if firsts else torch.zeros(0, dtype=torch.int64)
    num_valid = len(ap)
    if num_valid == 0:
        raise ReidAccelError(
            f"none of the {num_query} queries has a true match among the {num_gallery} non-junk gallery items "
            "(same id, other camera); check the ids and camera ids"
        )
    if num_valid < num_query:
        logger.info(
            "%d of %d queries have no true match in the gallery and are left out", num_query - num_valid, num_query
        )
    hits = torch.bincount(first.clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = (torch.cumsum(hits, 0).double() / num_valid).numpy()

    def within(k: int) -> float:
        return float((first < k).double().mean())

    return {
        "mAP": float(ap.mean()),
        "rank1": within(1),
        "rank5": within(5),
        "rank10": within(10),
        "cmc": cmc,
        "num_queries": num_query,
        "num_valid_queries": num_valid,
        "ap_mode": ap_mode,
    }


def _block_ranks(
    scores: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    is_match: torch.Tensor,
    *,
    bound: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions of the true matches of one block (the torch path, on CUDA).

    Args:
        scores: (c, G) similarities of the block's queries to the kept gallery, higher first.
        rows, cols, is_match: (P,) the block's same-id pairs (see `_Protocol.same_pid_pairs`).
        bound: a known bound on ``|scores|`` (cosine similarities), or None to measure the block's range.

    Returns:
        (M,) row, (M,) 1-based order among the row's matches and (M,) 0-based position among the valid gallery
        items of every true match, rows ascending.
    """
    num_rows, num_cols = scores.shape
    match_rows, match_cols = rows[is_match], cols[is_match]
    match_scores = scores[match_rows, match_cols]  # (M,)
    num_matches = len(match_rows)
    if num_matches == 0:
        return match_rows, match_rows, match_rows
    per_row = torch.bincount(match_rows, minlength=num_rows)  # (c,)

    # Only items scoring at least as high as the query's worst match can precede one of its matches.
    worst = torch.full((num_rows,), math.inf, dtype=scores.dtype, device=scores.device)
    worst = worst.scatter_reduce(0, match_rows, match_scores, "amin")
    candidate = scores >= worst[:, None]  # (c, G)
    candidate[rows, cols] = False  # true matches and same-camera same-id items are not competitors
    flat = candidate.view(-1).nonzero().squeeze(1)  # (N,) row-major
    cand_rows = flat // num_cols
    cand_scores = scores.view(-1).index_select(0, flat)  # index_select: ~2x faster than [] for 1-D gathers

    # Sort each query's matches ascending in ranking order: (row, score, -column).
    keys = _RowKeys(scores, bound)
    match_keys = keys(match_rows, match_scores)
    order = torch.argsort(match_cols, descending=True, stable=True)
    order = order[torch.argsort(match_scores[order], stable=True)]
    order = order[torch.argsort(match_keys[order], stable=True)]
    match_rows, match_cols, match_scores, match_keys = (
        t[order] for t in (match_rows, match_cols, match_scores, match_keys)
    )

    # beaten[i]: global end of the prefix of sorted matches that candidate i outranks (inside its own row's span).
    # Where its key equals a match key (equal scores, or scores closer than float64 keys resolve), decide exactly.
    cand_keys = keys(cand_rows, cand_scores)
    beaten = torch.searchsorted(match_keys, cand_keys)
    probe = torch.cat([match_keys, match_keys.new_full((1,), math.inf)]).index_select(0, beaten)  # inf: past the end
    tied = probe == cand_keys
    if tied.any():
        tied = tied.nonzero().squeeze(1)
        beaten[tied] += _resolve_key_ties(
            beaten[tied],
            torch.searchsorted(match_keys, cand_keys[tied], right=True),
            cand_scores[tied],
            flat[tied] - cand_rows[tied] * num_cols,
            match_scores,
            match_cols,
        )

    # Row r's matches occupy [start_r, end_r); shifting by r gives each row its own histogram slots.
    end = torch.cumsum(per_row, 0)  # (c,)
    counts = torch.bincount(beaten + cand_rows, minlength=num_matches + num_rows + 1)
    at_least = torch.cat([counts.flip(0).cumsum(0).flip(0), counts.new_zeros(1)])  # at_least[x] = sum(counts[x:])
    position = torch.arange(num_matches, device=scores.device)
    row_end = end[match_rows]
    outranking = at_least[position + match_rows + 1] - at_least[row_end + match_rows + 1]
    hit = row_end - position  # 1-based order of the match among its query's matches
    rank = hit - 1 + outranking  # 0-based position among the valid gallery items

    return match_rows, hit, rank


def _ap_and_first(
    match_rows: torch.Tensor, hit: torch.Tensor, rank: torch.Tensor, num_rows: int, *, ap_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """AP and first-hit position of each query of a block with a true match, from its matches' positions.

    Args:
        match_rows: (M,) block row of each true match, ascending.
        hit: (M,) 1-based order of the match among its row's matches.
        rank: (M,) 0-based position of the match among the row's valid gallery items.
        num_rows: queries in the block.
        ap_mode: AP convention.

    Returns:
        (c_valid,) float64 AP and (c_valid,) int64 0-based position of the first true match, in query order.
    """
    hit_f, rank_f = hit.double(), rank.double()
    precision = hit_f / (rank_f + 1)
    if ap_mode == "standard":
        term = precision
    else:
        previous = torch.where(rank > 0, (hit_f - 1) / rank_f.clamp(min=1), 1.0)
        term = (previous + precision) / 2
    per_row = torch.bincount(match_rows, minlength=num_rows)
    valid = per_row > 0
    ap_sum = torch.zeros(num_rows, dtype=torch.float64, device=hit.device).index_add_(0, match_rows, term)
    return ap_sum[valid] / per_row[valid], rank[hit == 1]


class _RowKeys:
    """Maps (row, score) to float64 keys ordered by row, then score: ``row * stride + score``.

    ``stride`` exceeds the spread of the block's finite scores, so rows never interleave; infinite scores are
    clamped to the finite range. The map is monotone but not strictly so (float64 rounding, clamped infinities):
    equal keys are resolved exactly by the caller.
    """

    def __init__(self, scores: torch.Tensor, bound: float | None):
        if bound is None:
            low, high = torch.aminmax(scores)
            self.low, self.high = float(low), float(high)
        else:
            self.low, self.high = -bound, bound
        self.clamp = not (math.isfinite(self.low) and math.isfinite(self.high))
        if self.clamp:
            finite = scores[torch.isfinite(scores)]
            self.low, self.high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
        self.stride = 2.0 * (self.high - self.low) + 3.0

    def __call__(self, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values = scores.to(torch.float64, copy=True)  # a float64 `scores` must not become its own keys
        if self.clamp:
            values = values.clamp(self.low, self.high)
        return values.add_(rows, alpha=self.stride)


def _resolve_key_ties(
    low: torch.Tensor,
    high: torch.Tensor,
    cand_scores: torch.Tensor,
    cand_cols: torch.Tensor,
    match_scores: torch.Tensor,
    match_cols: torch.Tensor,
) -> torch.Tensor:
    """For candidates whose key equals matches' keys in ``[low, high)``: how many of those they outrank exactly."""
    span = high - low
    owner = torch.repeat_interleave(torch.arange(len(low), device=low.device), span)  # (T,)
    offsets = torch.cumsum(span, 0) - span
    pos = low[owner] + torch.arange(len(owner), device=low.device) - offsets[owner]
    mine, theirs = cand_scores[owner], match_scores[pos]
    wins = (mine > theirs) | ((mine == theirs) & (cand_cols[owner] < match_cols[pos]))
    return torch.zeros_like(low).index_add_(0, owner, wins.long())


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _matrix(values: ArrayLike) -> torch.Tensor:
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.ndim != 2:
        raise ReidAccelError(f"distmat has shape {tuple(tensor.shape)}; expected (num_query, num_gallery)")
    return tensor


def as_features(values: ArrayLike, name: str) -> torch.Tensor:
    """A (n, D) float tensor (float64 stays, other dtypes become float32), sharing memory where possible.

    Raises:
        ReidAccelError: `values` (called `name` in the message) is not a matrix.
    """
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.ndim != 2:
        raise ReidAccelError(f"{name} has shape {tuple(tensor.shape)}; expected (num_items, feature_dim)")
    return tensor.to(_float_dtype(tensor.dtype))


def unit_rows(features: torch.Tensor, name: str, *, in_place: bool = False) -> torch.Tensor:
    """Rows scaled to unit L2 norm, as ``F.normalize`` (eps 1e-12); NaN or infinite entries are refused.

    The row norms reveal any NaN or infinity for free; only when a norm overflows are the entries checked.
    """
    norms = torch.linalg.vector_norm(features, dim=1, keepdim=True)  # (n, 1)
    if not torch.isfinite(norms).all() and not torch.isfinite(features).all():
        raise ReidAccelError(f"{name} holds NaN or infinite values; expected finite features")
    norms = norms.clamp_(min=1e-12)
    return features.div_(norms) if in_place else features / norms


def _ids(query_pids, gallery_pids, query_camids, gallery_camids, num_query: int, num_gallery: int):
    """The four id arrays as CPU int64 tensors, with their lengths checked."""
    named = {"query_pids": query_pids, "gallery_pids": gallery_pids, "query_camids": query_camids}
    named["gallery_camids"] = gallery_camids
    out = []
    for name, values in named.items():
        tensor = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
        expected = num_query if name.startswith("query") else num_gallery
        if tensor.shape != (expected,):
            raise ReidAccelError(f"{name} has shape {tuple(tensor.shape)}; expected ({expected},)")
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ReidAccelError(f"{name} has dtype {tensor.dtype}; expected integers")
        out.append(tensor.to(torch.int64))
    return tuple(out)


def resolve_device(device: str | torch.device | None, reference: ArrayLike) -> torch.device:
    """The device to compute on: the one asked for, else the reference tensor's, else the CPU."""
    if device is not None:
        return torch.device(device)
    return reference.device if isinstance(reference, torch.Tensor) else torch.device("cpu")
