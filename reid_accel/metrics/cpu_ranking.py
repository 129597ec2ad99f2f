"""The positions of the true matches in a block of scores on the CPU, exact, with numpy and a few threads.

Same answer as `ranking._block_ranks` (the torch path, kept for CUDA): for every true match its 1-based order
among its query's matches and its 0-based position among the valid gallery items, equal scores ordered by
gallery index. Two things differ, both for speed on the CPU:

- The worst true match of each query is placed by counting its row densely: items scoring above it, items tied
  with it on a lower column, less the removed (same id, same camera) items among those. The other matches can
  only be outranked by items scoring at least the *second*-worst match, so only those are compacted and placed
  by search. A query's worst match is often deep in the ranking, and the items between its worst and second-worst
  match are most of the compacted ones otherwise (8.4 % of the gallery against 3.3 % for the benchmark script's
  trained-model features at Market scale); compacting and placing one item costs about 50 times counting it.
- Each chunk of rows is ranked by numpy, single-threaded (numpy releases the GIL in its loops), and a thread
  pool hands the chunks to whichever core is free. Torch runs each elementwise op as a parallel region over all
  its threads, which on a busy machine waits for a descheduled sibling every time, and its per-row reduction of a
  boolean mask is 10-20x slower than numpy's.
"""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Scores per chunk of rows: large enough to amortise ~20 numpy calls, small enough to stay in cache.
_CHUNK_ENTRIES = 1 << 20


def match_positions(
    scores: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    is_match: np.ndarray,
    *,
    bound: float | None,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place the true matches of one block of queries.

    Args:
        scores: (c, G) similarities of the block's queries to the kept gallery, higher first.
        rows, cols, is_match: (P,) the block's same-id pairs, rows ascending, columns ascending within a row.
        bound: a known bound on ``|scores|`` (cosine similarities), or None to measure the values keyed.
        workers: threads ranking chunks of rows at once.

    Returns:
        (M,) row, (M,) 1-based order among the row's matches and (M,) 0-based position among the valid gallery
        items of every true match, rows ascending.
    """
    num_rows, num_cols = scores.shape
    step = max(1, _CHUNK_ENTRIES // max(1, num_cols))
    bounds = np.searchsorted(rows, np.arange(0, num_rows + step, step).clip(max=num_rows))

    def chunk(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, first, last = index * step, bounds[index], bounds[index + 1]
        found = _chunk_positions(
            scores[start : start + step], rows[first:last] - start, cols[first:last], is_match[first:last], bound
        )
        return found[0] + start, found[1], found[2]

    indices = range(math.ceil(num_rows / step))
    if workers > 1 and len(indices) > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(chunk, indices))
    else:
        parts = [chunk(index) for index in indices]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    found_rows, hits, positions = (np.concatenate(column) for column in zip(*parts, strict=True))
    return found_rows, hits, positions


def _chunk_positions(
    scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, is_match: np.ndarray, bound: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`match_positions` for one chunk of rows, single-threaded."""
    num_rows, num_cols = scores.shape
    match_rows, match_cols = rows[is_match], cols[is_match]
    match_scores = scores[match_rows, match_cols]  # (M,)
    order = np.lexsort((match_cols, -match_scores, match_rows))  # each row's matches best first, ties by column
    match_rows, match_cols, match_scores = match_rows[order], match_cols[order], match_scores[order]
    per_row = np.bincount(match_rows, minlength=num_rows)  # (c,)
    end = np.cumsum(per_row)
    order_in_row = np.arange(len(match_rows)) - (end - per_row)[match_rows]  # 0-based, best first
    position = order_in_row.copy()  # matches ranked before it; the other items are added below

    with_match = np.flatnonzero(per_row)
    worst = end[with_match] - 1  # (R,) index of each row's worst match
    position[worst] = _worst_match_positions(
        scores, with_match, match_scores[worst], match_cols[worst], rows[~is_match], cols[~is_match]
    )
    upper = order_in_row < (per_row - 1)[match_rows]  # every match but its row's worst
    if upper.any():
        position[upper] += _outranking_upper_matches(
            scores, rows, cols, match_rows, match_cols, match_scores, upper, bound
        )
    return match_rows, order_in_row + 1, position


def _worst_match_positions(
    scores: np.ndarray,
    match_rows: np.ndarray,
    match_scores: np.ndarray,
    match_cols: np.ndarray,
    removed_rows: np.ndarray,
    removed_cols: np.ndarray,
) -> np.ndarray:
    """Valid items ranked before each row's worst match, counted over the whole row.

    Args:
        scores: (c, G) the chunk's scores.
        match_rows, match_scores, match_cols: (R,) the rows holding a match, their worst match's score and column.
        removed_rows, removed_cols: (E,) the same id, same camera items of the chunk (not in the ranking).

    Returns:
        (R,) positions.
    """
    threshold = np.full(len(scores), np.inf, dtype=scores.dtype)  # rows without a match count nothing
    threshold[match_rows] = match_scores
    column = np.full(len(scores), -1)
    column[match_rows] = match_cols
    ahead = (scores > threshold[:, None]).view(np.uint8).sum(axis=1, dtype=np.uint32).astype(np.int64)  # (c,)
    tied = scores == threshold[:, None]  # (c, G): the match itself, and any equal score
    if np.count_nonzero(tied) > len(match_rows):
        for row in np.flatnonzero((np.count_nonzero(tied, axis=1) > 1) & (column >= 0)):
            ahead[row] += np.count_nonzero(tied[row, : column[row]])  # equal scores on a lower column go first
    removed_scores = scores[removed_rows, removed_cols]
    limit = threshold[removed_rows]
    removed_ahead = (removed_scores > limit) | ((removed_scores == limit) & (removed_cols < column[removed_rows]))
    ahead -= np.bincount(removed_rows[removed_ahead], minlength=len(scores))
    return ahead[match_rows]


def _outranking_upper_matches(
    scores: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    match_rows: np.ndarray,
    match_cols: np.ndarray,
    match_scores: np.ndarray,
    upper: np.ndarray,
    bound: float | None,
) -> np.ndarray:
    """Non-matching valid items ranked before each match but the worst of its row.

    Only items scoring at least the row's second-worst match can outrank one of these, so those are compacted and
    each is placed among its row's matches with one search over float64 keys ``row * stride + score`` (equal keys,
    from equal scores or float64 rounding, are settled exactly on the scores and columns).

    Args:
        scores: (c, G) the chunk's scores.
        rows, cols: (P,) every same-id pair of the chunk (true matches and removed items: no competitors).
        match_rows, match_cols, match_scores: (M,) the matches, each row's best first.
        upper: (M,) the matches to place (all but each row's worst).

    Returns:
        (U,) counts, for the matches selected by `upper` in their order.
    """
    num_rows, num_cols = scores.shape
    # Worst first within each row, the order of their keys: reverse everything, then stably re-sort by row.
    reverse = np.flatnonzero(upper)[::-1]
    worst_first = reverse[np.argsort(match_rows[reverse], kind="stable")]  # (U,) indices into the matches
    upper_rows, upper_cols, upper_scores = (a[worst_first] for a in (match_rows, match_cols, match_scores))
    per_row = np.bincount(upper_rows, minlength=num_rows)
    end = np.cumsum(per_row)

    threshold = np.full(num_rows, np.inf, dtype=scores.dtype)  # each row's worst upper match, else nothing
    holding = np.flatnonzero(per_row)
    threshold[holding] = upper_scores[end[holding] - per_row[holding]]
    candidate = scores >= threshold[:, None]  # (c, G)
    candidate[rows, cols] = False
    flat = np.flatnonzero(candidate)  # (N,) row-major
    cand_rows = flat // num_cols
    cand_scores = scores.reshape(-1).take(flat)
    cand_cols = flat - cand_rows * num_cols

    keys = _RowKeys(np.concatenate([cand_scores, upper_scores]), bound)
    upper_keys, cand_keys = keys(upper_rows, upper_scores), keys(cand_rows, cand_scores)
    beaten = np.searchsorted(upper_keys, cand_keys)  # (N,) global end of the upper matches it outranks
    probe = np.append(upper_keys, np.inf)[beaten]  # inf: past the end
    tied = np.flatnonzero(probe == cand_keys)
    if len(tied):
        beaten[tied] += _resolve_key_ties(
            beaten[tied],
            np.searchsorted(upper_keys, cand_keys[tied], side="right"),
            cand_scores[tied],
            cand_cols[tied],
            upper_scores,
            upper_cols,
        )
    # Row r's upper matches occupy [start_r, end_r); shifting by r gives each row its own histogram slots.
    counts = np.bincount(beaten + cand_rows, minlength=len(upper_rows) + num_rows + 1)
    at_least = np.append(np.cumsum(counts[::-1])[::-1], 0)  # at_least[x] = sum(counts[x:])
    index = np.arange(len(upper_rows))
    outranking = at_least[index + upper_rows + 1] - at_least[end[upper_rows] + upper_rows + 1]
    per_match = np.zeros(len(match_rows), dtype=np.int64)
    per_match[worst_first] = outranking
    return per_match[upper]


class _RowKeys:
    """Maps (row, score) to float64 keys ordered by row, then score: ``row * stride + score``.

    ``stride`` exceeds the spread of the finite scores keyed, so rows never interleave; infinite scores are
    clamped to the finite range. The map is monotone but not strictly so: equal keys are resolved exactly.
    """

    def __init__(self, values: np.ndarray, bound: float | None):
        finite = values[np.isfinite(values)] if bound is None else None
        if bound is not None:
            self.low, self.high = -bound, bound
        elif len(finite):
            self.low, self.high = float(finite.min()), float(finite.max())
        else:
            self.low = self.high = 0.0
        self.stride = 2.0 * (self.high - self.low) + 3.0

    def __call__(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return np.clip(scores.astype(np.float64), self.low, self.high) + rows * self.stride


def _resolve_key_ties(
    low: np.ndarray,
    high: np.ndarray,
    cand_scores: np.ndarray,
    cand_cols: np.ndarray,
    match_scores: np.ndarray,
    match_cols: np.ndarray,
) -> np.ndarray:
    """For candidates whose key equals matches' keys in ``[low, high)``: how many of those they outrank exactly."""
    span = high - low
    owner = np.repeat(np.arange(len(low)), span)  # (T,)
    pos = low[owner] + np.arange(len(owner)) - (np.cumsum(span) - span)[owner]
    mine, theirs = cand_scores[owner], match_scores[pos]
    wins = (mine > theirs) | ((mine == theirs) & (cand_cols[owner] < match_cols[pos]))
    return np.bincount(owner, weights=wins, minlength=len(low)).astype(np.int64)
