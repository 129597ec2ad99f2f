"""The positions of the true matches in a block of scores on the CPU, exact, with numpy and a few threads.

Same answer as `ranking._block_ranks` (the torch path, kept for CUDA): for every true match its 1-based order
among its query's matches and its 0-based position among the valid gallery items, equal scores ordered by gallery
index. How, for speed on the CPU:

- Each query's worst match is placed by counting its row: the items scoring above it (two compares and bit counts
  over the row), equal scores settled on the gallery index.
- The other matches can only be outranked by items scoring at least the second-worst (for the benchmark script's
  trained-model features at Market scale 3 % of the gallery on average, for a weak model's 21 %). Those candidates
  are sorted and each match counts the ones above it with one binary search. A row with many candidates is
  gathered (``np.compress``) and sorted on its own: numpy sorts float32 with SIMD, about 4 ns a score. Rows with
  few are sorted together, as int64 keys (row, then an integer ordering as the float32 score): about 12 ns a
  score with building the keys, but one call for all of them, where a few numpy calls per row would make the
  threads queue for the GIL, each call giving it up and waiting to take it back.
- The same id, same camera items (not in the ranking) ahead of each match are then taken off, compared one by one.
- Each chunk of rows is ranked by numpy, single-threaded (numpy releases the GIL in its loops), and a thread
  pool hands the chunks to whichever core is free. Torch runs each elementwise op as a parallel region over all
  its threads, which on a busy machine waits for a descheduled sibling every time.
"""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Scores per chunk of rows, at most: enough to amortise a chunk's numpy calls, few enough that the workers finish
# together and a chunk's mask and candidates stay small.
_CHUNK_ENTRIES = 1 << 20
# Rows with more candidates than this are sorted one by one, the others together (float32 scores; float64 rows are
# always sorted one by one). Of 1,024, 2,048, 4,096 and 8,192, 2,048 ranked the weak model's features at Market
# scale fastest (0.8x the time of 4,096), and the others as fast as any.
_SORT_ALONE_FROM = 2048


def match_positions(
    scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, is_match: np.ndarray, *, workers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place the true matches of one block of queries.

    Args:
        scores: (c, G) float32 or float64 similarities of the block's queries to the kept gallery, higher first.
        rows, cols, is_match: (P,) the block's same-id pairs, rows ascending, columns ascending within a row.
        workers: threads ranking chunks of rows at once.

    Returns:
        (M,) row, (M,) 1-based order among the row's matches and (M,) 0-based position among the valid gallery
        items of every true match; rows ascending, each row's matches worst first.
    """
    if scores.dtype not in (np.float32, np.float64):
        raise TypeError(f"scores have dtype {scores.dtype}; the CPU ranking takes float32 or float64 scores")
    num_rows, num_cols = scores.shape
    workers = max(1, workers)
    step = max(1, _CHUNK_ENTRIES // max(1, num_cols))
    chunks = math.ceil(math.ceil(num_rows / step) / workers) * workers  # a multiple of the workers: none waits alone
    step = max(1, math.ceil(num_rows / chunks))
    bounds = np.searchsorted(rows, np.arange(0, num_rows + step, step).clip(max=num_rows))

    def chunk(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, first, last = index * step, bounds[index], bounds[index + 1]
        found = _chunk_positions(
            scores[start : start + step], rows[first:last] - start, cols[first:last], is_match[first:last]
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
    scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, is_match: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`match_positions` for one chunk of rows, single-threaded."""
    match_rows, match_cols = rows[is_match], cols[is_match]
    match_scores = scores[match_rows, match_cols]  # (M,)
    order = np.lexsort((-match_cols, match_scores, match_rows))  # rows ascending, each row's matches worst first
    match_rows, match_cols, match_scores = match_rows[order], match_cols[order], match_scores[order]
    per_row = np.bincount(match_rows, minlength=len(scores))  # (c,)
    row_first = np.cumsum(per_row) - per_row  # (c,) each row's worst match
    before = per_row[match_rows] - 1 - (np.arange(len(match_rows)) - row_first[match_rows])  # matches ranked before
    ahead = _items_ahead(scores, match_rows, match_scores, match_cols, per_row, row_first)

    removed_rows, removed_cols = rows[~is_match], cols[~is_match]  # rows ascending
    owner, index = _expand_spans(
        np.searchsorted(removed_rows, match_rows), np.searchsorted(removed_rows, match_rows, side="right")
    )
    their_scores, their_cols = scores[removed_rows[index], removed_cols[index]], removed_cols[index]
    mine, my_cols = match_scores[owner], match_cols[owner]
    removed_ahead = (their_scores > mine) | ((their_scores == mine) & (their_cols < my_cols))
    return match_rows, before + 1, ahead - np.bincount(owner[removed_ahead], minlength=len(match_rows))


def _items_ahead(
    scores: np.ndarray,
    match_rows: np.ndarray,
    match_scores: np.ndarray,
    match_cols: np.ndarray,
    per_row: np.ndarray,
    row_first: np.ndarray,
) -> np.ndarray:
    """(M,) for each match, the items of its row ranked before it (a higher score, or equal on a lower column),
    removed ones included.

    Args:
        scores: (c, G) the chunk's scores.
        match_rows, match_scores, match_cols: (M,) the chunk's matches, rows ascending, each row's worst first.
        per_row, row_first: (c,) each row's number of matches and the index of its worst one.
    """
    above = np.empty(len(match_scores), dtype=np.int64)  # items scoring above the match
    tied = np.empty(len(match_scores), dtype=bool)  # whether another item may score exactly as the match

    rows = np.flatnonzero(per_row)
    worst = row_first[rows]
    threshold = np.full(len(scores), np.inf, dtype=scores.dtype)
    threshold[rows] = match_scores[worst]
    above[worst] = _row_counts(scores > threshold[:, None])[rows]
    tied[worst] = _row_counts(scores >= threshold[:, None])[rows] - above[worst] > 1

    rows = np.flatnonzero(per_row > 1)
    threshold[:] = np.inf
    threshold[rows] = match_scores[row_first[rows] + 1]
    candidate = scores >= threshold[:, None]  # (c, G) the items that may outrank a match other than the worst
    counts = _row_counts(candidate)
    together = (per_row > 1) & (counts <= _SORT_ALONE_FROM) & (scores.dtype == np.float32)
    for row in rows[~together[rows]].tolist():
        mine = slice(row_first[row] + 1, row_first[row] + per_row[row])
        values = np.compress(candidate[row], scores[row])
        values.sort()
        above[mine], tied[mine] = _count_above(values, match_scores[mine])
    if together.any():
        candidate[~together] = False
        keyed = np.where(together, counts, 0)  # (c,) each row's keys
        values = scores.reshape(-1).take(np.flatnonzero(candidate))  # row-major
        keys = (np.repeat(np.arange(len(scores)), keyed) << 32) + _order_keys(values)
        keys.sort()
        mine = np.flatnonzero(together[match_rows] & (np.arange(len(match_rows)) > row_first[match_rows]))
        found_above, tied[mine] = _count_above(keys, (match_rows[mine] << 32) + _order_keys(match_scores[mine]))
        # Past a row's keys are the later rows': they are not above its matches.
        above[mine] = found_above - (len(keys) - np.cumsum(keyed))[match_rows[mine]]

    for index in np.flatnonzero(tied).tolist():  # rare ties: of equal scores the lower columns go first
        row, col = match_rows[index], match_cols[index]
        above[index] += np.count_nonzero(scores[row, :col] == match_scores[index])
    return above


def _count_above(ordered: np.ndarray, needles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For needles found in the sorted ``ordered`` (each equal to one of its entries): (n,) the entries above
    each, and (n,) whether another entry equals it (a false alarm where ``ordered`` holds a single entry)."""
    higher = ordered.searchsorted(needles, side="right")  # past the needle and the entries equal to it
    return len(ordered) - higher, ordered[higher - 2] == needles  # the entry before the last equal one equals it


def _order_keys(values: np.ndarray) -> np.ndarray:
    """(n,) int64 in [-2**31, 2**31) ordering as the float32 ``values`` do, equal exactly where they are equal
    (-0.0 and 0.0 too): the bits read as a signed integer, negative numbers' magnitude bits flipped."""
    bits = (values + np.float32(0.0)).view(np.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """(c,) int64 number of True entries in each row of a (c, G) mask."""
    return np.bitwise_count(np.packbits(mask, axis=1)).sum(axis=1, dtype=np.int64)


def _expand_spans(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (owner, index) with ``low[owner] <= index < high[owner]``, owners ascending: (T,) each."""
    span = high - low
    owner = np.repeat(np.arange(len(low)), span)
    return owner, low[owner] + np.arange(len(owner)) - (np.cumsum(span) - span)[owner]
