"""The positions of the true matches in a block of scores on the CPU, exact, with numpy and a few threads.

Same answer as `ranking._block_ranks` (the torch path, kept for CUDA): for every true match its 1-based order
among its query's matches and its 0-based position among the valid gallery items, equal scores ordered by
gallery index. Two things differ, both for speed on the CPU:

- The two deepest true matches of each query are placed by counting their row: the items scoring above the
  match, or equal on a lower column, less the removed (same id, same camera) items among those. The other
  matches can only be outranked by items scoring at least the *third*-worst match, so only those are compacted
  and placed by search. A query's deepest matches are often far down the ranking: for the benchmark script's
  trained-model features at Market scale, 8.4 % of the gallery scores above the worst match, 3.3 % above the
  second-worst and 1.7 % above the third-worst, and compacting and placing one item costs about 50 times
  counting it (counting a third match would no longer pay off; BENCHMARKS.md).
- Each chunk of rows is ranked by numpy, single-threaded (numpy releases the GIL in its loops), and a thread
  pool hands the chunks to whichever core is free. Torch runs each elementwise op as a parallel region over all
  its threads, which on a busy machine waits for a descheduled sibling every time, and its per-row reduction of a
  boolean mask is 10-20x slower than numpy's.
"""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Scores per chunk of rows: enough to amortise a chunk's numpy calls (chunks of 2**16 took 1.7x the CPU time).
_CHUNK_ENTRIES = 1 << 20
# The deepest true matches of each row placed by counting the row (see the module docstring).
_COUNTED_MATCHES = 2


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
    num_rows = len(scores)
    match_rows, match_cols = rows[is_match], cols[is_match]
    match_scores = scores[match_rows, match_cols]  # (M,)
    order = np.lexsort((match_cols, -match_scores, match_rows))  # each row's matches best first, ties by column
    match_rows, match_cols, match_scores = match_rows[order], match_cols[order], match_scores[order]
    per_row = np.bincount(match_rows, minlength=num_rows)  # (c,)
    order_in_row = np.arange(len(match_rows)) - (np.cumsum(per_row) - per_row)[match_rows]  # 0-based, best first
    position = order_in_row.copy()  # matches ranked before it; the other items are added below

    deep = order_in_row >= (per_row - _COUNTED_MATCHES)[match_rows]  # each row's deepest matches
    removed = ~is_match
    position[deep] = _counted_positions(
        scores, match_rows[deep], match_scores[deep], match_cols[deep], rows[removed], cols[removed]
    )
    if not deep.all():
        upper = ~deep
        position[upper] += _outranking_upper_matches(
            scores, rows, cols, match_rows[upper], match_scores[upper], match_cols[upper], bound
        )
    return match_rows, order_in_row + 1, position


def _counted_positions(
    scores: np.ndarray,
    match_rows: np.ndarray,
    match_scores: np.ndarray,
    match_cols: np.ndarray,
    removed_rows: np.ndarray,
    removed_cols: np.ndarray,
) -> np.ndarray:
    """Positions of some matches, each counted over its whole row: the valid items ranked before it.

    Args:
        scores: (c, G) the chunk's scores.
        match_rows, match_scores, match_cols: (D,) the matches to place.
        removed_rows, removed_cols: (E,) the same id, same camera items of the chunk (not in the ranking),
            rows ascending.

    Returns:
        (D,) positions.
    """
    ahead = np.fromiter(  # items before the match: equal scores go first on a lower column
        (
            np.count_nonzero(scores[row, :col] >= score) + np.count_nonzero(scores[row, col:] > score)
            for row, score, col in zip(match_rows.tolist(), match_scores.tolist(), match_cols.tolist(), strict=True)
        ),
        dtype=np.int64,
        count=len(match_rows),
    )
    first = np.searchsorted(removed_rows, match_rows)
    owner, index = _expand_spans(first, np.searchsorted(removed_rows, match_rows, side="right"))
    removed_scores, removed_cols = scores[removed_rows[index], removed_cols[index]], removed_cols[index]
    mine, its_col = match_scores[owner], match_cols[owner]
    removed_ahead = (removed_scores > mine) | ((removed_scores == mine) & (removed_cols < its_col))
    return ahead - np.bincount(owner[removed_ahead], minlength=len(match_rows))


def _outranking_upper_matches(
    scores: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    match_rows: np.ndarray,
    match_scores: np.ndarray,
    match_cols: np.ndarray,
    bound: float | None,
) -> np.ndarray:
    """Non-matching valid items ranked before each of some matches (those not counted densely).

    Only items scoring at least the lowest of these matches in their row can outrank one of them, so those are
    compacted and each is placed among its row's matches with one search over float64 keys ``row * stride +
    score`` (equal keys, from equal scores or float64 rounding, are settled exactly on scores and columns).

    Args:
        scores: (c, G) the chunk's scores.
        rows, cols: (P,) every same-id pair of the chunk (true matches and removed items: no competitors).
        match_rows, match_scores, match_cols: (U,) the matches to place, rows ascending, each row's best first.

    Returns:
        (U,) counts, in the order of the matches given.
    """
    num_rows, num_cols = scores.shape
    worst_first = np.lexsort((np.arange(len(match_rows))[::-1], match_rows))  # the order of their keys
    upper_rows, upper_scores, upper_cols = (a[worst_first] for a in (match_rows, match_scores, match_cols))
    per_row = np.bincount(upper_rows, minlength=num_rows)
    end = np.cumsum(per_row)

    threshold = np.full(num_rows, np.inf, dtype=scores.dtype)  # each row's lowest match to place, else nothing
    holding = np.flatnonzero(per_row)
    threshold[holding] = upper_scores[end[holding] - per_row[holding]]
    candidate = scores >= threshold[:, None]  # (c, G)
    candidate[rows, cols] = False
    flat = np.flatnonzero(candidate)  # (N,) row-major
    cand_rows = flat // num_cols
    cand_scores = scores.reshape(-1).take(flat)

    keys = _RowKeys(np.concatenate([cand_scores, upper_scores]), bound)
    upper_keys, cand_keys = keys(upper_rows, upper_scores), keys(cand_rows, cand_scores)
    beaten = np.searchsorted(upper_keys, cand_keys)  # (N,) global end of the matches it outranks
    tied = np.flatnonzero(np.append(upper_keys, np.inf)[beaten] == cand_keys)  # inf: past the end
    if len(tied):
        owner, index = _expand_spans(beaten[tied], np.searchsorted(upper_keys, cand_keys[tied], side="right"))
        mine, theirs = cand_scores[tied][owner], upper_scores[index]
        my_col = flat[tied][owner] - cand_rows[tied][owner] * num_cols
        wins = (mine > theirs) | ((mine == theirs) & (my_col < upper_cols[index]))
        beaten[tied] += np.bincount(owner[wins], minlength=len(tied))
    # Row r's matches occupy [start_r, end_r); shifting by r gives each row its own histogram slots.
    counts = np.bincount(beaten + cand_rows, minlength=len(upper_rows) + num_rows + 1)
    at_least = np.append(np.cumsum(counts[::-1])[::-1], 0)  # at_least[x] = sum(counts[x:])
    outranking = at_least[np.arange(len(upper_rows)) + upper_rows + 1] - at_least[end[upper_rows] + upper_rows + 1]
    in_given_order = np.empty_like(outranking)
    in_given_order[worst_first] = outranking
    return in_given_order


class _RowKeys:
    """Maps (row, score) to float64 keys ordered by row, then score: ``row * stride + score``.

    ``stride`` exceeds the spread of the finite scores keyed, so rows never interleave; infinite scores are
    clamped to the finite range. The map is monotone but not strictly so: equal keys are resolved exactly.
    """

    def __init__(self, values: np.ndarray, bound: float | None):
        if bound is not None:
            self.low, self.high = -bound, bound
        else:
            finite = values[np.isfinite(values)]
            self.low, self.high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
        self.stride = 2.0 * (self.high - self.low) + 3.0

    def __call__(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return np.clip(scores.astype(np.float64), self.low, self.high) + rows * self.stride


def _expand_spans(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (owner, index) with ``low[owner] <= index < high[owner]``, owners ascending: (T,) each."""
    span = high - low
    owner = np.repeat(np.arange(len(low)), span)
    return owner, low[owner] + np.arange(len(owner)) - (np.cumsum(span) - span)[owner]
