"""The positions of the true matches in a block of scores on the CPU, exact, with numpy and a few threads.

Same answer as `ranking._block_ranks` (the torch path, kept for CUDA): for every true match its 1-based order
among its query's matches and its 0-based position among the valid gallery items, equal scores ordered by gallery
index. How, for speed on the CPU:

- Candidates are packed into one int64 key each, ordered as the ranking is: the row, then the first 32 bits of an
  order-keeping integer of the score (all of a float32), then the column reversed (of equal scores the lower
  column ranks first). Sorting int64 keys is fast, and only the few candidates sharing a match's score prefix
  (equal float32 scores, float64 scores equal in their first 32 bits) need an exact comparison.
- Each query's deepest true matches are placed by counting their row, one level at a time (every row's worst
  match, then every row's second-worst, ...): the items scoring above the match, or equal on a lower column, less
  the removed (same id, same camera) items among those; two vectorised compares and a bit count per level. The
  deepest matches are often far down the ranking (for the benchmark script's trained-model features at Market
  scale, 7.6 % of the gallery scores at least the worst match, 2.8 % the second-worst; a weak model's 36 % and
  21 %), and counting a row costs about what placing 4 % of it as candidates does, so levels are counted while
  more than `_COUNT_WHILE_ABOVE` of the rows score at least the last match counted.
- The other matches can only be outranked by items scoring at least the lowest of them. Those candidates' keys are
  sorted once, and each match counts the candidates of its row beyond its own score prefix with one search.
  Sorting costs about 10 ns a key, where searching each candidate among the matches cost 90 ns (BENCHMARKS.md).
- Each chunk of rows is ranked by numpy, single-threaded (numpy releases the GIL in its loops), and a thread
  pool hands the chunks to whichever core is free. Torch runs each elementwise op as a parallel region over all
  its threads, which on a busy machine waits for a descheduled sibling every time.
"""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Scores per chunk of rows, at most: enough to amortise a chunk's numpy calls (at Market scale 2**17 took 1.5-3x the
# time of 2**20, 2**21 0.8-1.05x), few enough that the workers finish together.
_CHUNK_ENTRIES = 1 << 20
# Deep matches are counted level by level while more than this share of their rows scores at least the last ones
# counted (the fastest of 0.08, 0.15, 0.3 and counting none, on both models; see the module docstring).
_COUNT_WHILE_ABOVE = 0.3
# A key holds the row, 32 bits of score and the column in 63 bits: rows and columns share 31 bits.
_ROW_AND_COLUMN_BITS = 31


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
    column_bits = _bits(num_cols)
    step = max(1, min(_CHUNK_ENTRIES // max(1, num_cols), 1 << (_ROW_AND_COLUMN_BITS - column_bits)))
    workers = max(1, workers)
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
    num_rows, num_cols = scores.shape
    match_rows, match_cols = rows[is_match], cols[is_match]
    match_scores = scores[match_rows, match_cols]  # (M,)
    order = np.lexsort((-match_cols, match_scores, match_rows))  # rows ascending, each row's matches worst first
    match_rows, match_cols, match_scores = match_rows[order], match_cols[order], match_scores[order]
    per_row = np.bincount(match_rows, minlength=num_rows)  # (c,)
    from_worst = np.arange(len(match_rows)) - (np.cumsum(per_row) - per_row)[match_rows]  # 0-based, worst first
    before = per_row[match_rows] - 1 - from_worst  # matches ranked before it
    position = before.copy()  # the other candidates ranked before it are added below (deep matches: replaced)

    removed_rows, removed_cols = rows[~is_match], cols[~is_match]
    counted, share_above = 0, 1.0  # levels of deep matches (each row's worst, second-worst, ...) counted so far
    while share_above > _COUNT_WHILE_ABOVE:
        deep = np.flatnonzero(from_worst == counted)
        if not len(deep):
            break
        position[deep], at_or_above = _counted_positions(
            scores, match_rows[deep], match_scores[deep], match_cols[deep], removed_rows, removed_cols
        )
        share_above = at_or_above.sum() / (len(deep) * num_cols)
        counted += 1
    upper = from_worst >= counted
    if upper.any():
        position[upper] += _candidates_above(
            scores, rows, cols, match_rows[upper], match_scores[upper], match_cols[upper]
        )
    return match_rows, before + 1, position


def _counted_positions(
    scores: np.ndarray,
    match_rows: np.ndarray,
    match_scores: np.ndarray,
    match_cols: np.ndarray,
    removed_rows: np.ndarray,
    removed_cols: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of at most one match per row, each counted over its whole row: the valid items ranked before it.

    Args:
        scores: (c, G) the chunk's scores.
        match_rows, match_scores, match_cols: (D,) the matches to place, rows distinct.
        removed_rows, removed_cols: (E,) the same id, same camera items of the chunk (not in the ranking),
            rows ascending.

    Returns:
        (D,) positions and (D,) number of items scoring at least the match, itself included.
    """
    threshold = np.full(len(scores), np.inf, dtype=scores.dtype)  # rows without a match to place compare no item
    threshold[match_rows] = match_scores
    ahead = _row_counts(scores > threshold[:, None])[match_rows]  # (D,)
    at_or_above = _row_counts(scores >= threshold[:, None])[match_rows]
    for index in np.flatnonzero(at_or_above - ahead > 1).tolist():  # rare ties: the lower columns go first
        row, col = match_rows[index], match_cols[index]
        ahead[index] += np.count_nonzero(scores[row, :col] == match_scores[index])
    first = np.searchsorted(removed_rows, match_rows)
    owner, index = _expand_spans(first, np.searchsorted(removed_rows, match_rows, side="right"))
    their_cols = removed_cols[index]
    removed_ahead = _ranks_before(
        scores[removed_rows[index], their_cols], their_cols, match_scores[owner], match_cols[owner]
    )
    return ahead - np.bincount(owner[removed_ahead], minlength=len(match_rows)), at_or_above


def _ranks_before(
    scores: np.ndarray, cols: np.ndarray, match_scores: np.ndarray, match_cols: np.ndarray
) -> np.ndarray:
    """(n,) bool: whether each item (score, column) ranks before its match: a higher score, or equal on a lower
    column."""
    return (scores > match_scores) | ((scores == match_scores) & (cols < match_cols))


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """(c,) int64 number of True entries in each row of a (c, G) mask."""
    return np.bitwise_count(np.packbits(mask, axis=1)).sum(axis=1, dtype=np.int64)


def _candidates_above(
    scores: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    match_rows: np.ndarray,
    match_scores: np.ndarray,
    match_cols: np.ndarray,
) -> np.ndarray:
    """For each of some matches, the items of its row other than its query's id that rank before it.

    The candidates' keys are sorted once; a match's row holds, after its own score prefix, only items that outrank
    it, and the few sharing its prefix (equal float32 scores; float64 scores equal in their first 32 bits) are
    compared exactly.

    Args:
        scores: (c, G) the chunk's scores.
        rows, cols: (P,) every same-id pair of the chunk (true matches and removed items: no competitors).
        match_rows, match_scores, match_cols: (U,) the matches to place, rows ascending.

    Returns:
        (U,) counts.
    """
    num_rows, num_cols = scores.shape
    column_bits = _bits(num_cols)
    low_bits = (1 << column_bits) - 1
    threshold = np.full(num_rows, np.inf, dtype=scores.dtype)  # each row's lowest match to place, else nothing
    np.minimum.at(threshold, match_rows, match_scores)
    candidate = scores >= threshold[:, None]  # (c, G)
    candidate[rows, cols] = False
    flat = np.flatnonzero(candidate)  # (N,) row-major
    row_start = np.searchsorted(flat, np.arange(num_rows + 1) * num_cols)  # (c + 1,) each row's first candidate
    row_ids = np.arange(num_rows)
    # A flat index is row * G + column: one subtraction turns each row's part at column 0 into the candidates'.
    keys = np.repeat(_row_and_column(row_ids, -row_ids * num_cols, column_bits), np.diff(row_start)) - flat
    keys += _score_prefix(scores.reshape(-1).take(flat)) << column_bits
    keys.sort()
    group = _row_and_column(match_rows, low_bits, column_bits) + (_score_prefix(match_scores) << column_bits)
    first = np.searchsorted(keys, group)  # (U,) the candidates sharing the match's row and score prefix
    last = np.searchsorted(keys, group + low_bits, side="right")
    ahead = row_start[match_rows + 1] - last
    owner, index = _expand_spans(first, last)
    if len(index):
        their_rows, their_cols = keys[index] >> (32 + column_bits), low_bits - (keys[index] & low_bits)
        wins = _ranks_before(scores[their_rows, their_cols], their_cols, match_scores[owner], match_cols[owner])
        ahead += np.bincount(owner[wins], minlength=len(ahead))
    return ahead


def _row_and_column(rows: np.ndarray, cols: np.ndarray | int, column_bits: int) -> np.ndarray:
    """The row and column part of a candidate's key ``row << (32 + b) | (prefix + 2**31) << b | (2**b - 1 -
    column)`` (b column bits), with the score part's offset of 2**31: keys order as the ranking does, up to the
    score prefix."""
    return (rows << (32 + column_bits)) + ((1 << (31 + column_bits)) + (1 << column_bits) - 1) - cols


def _score_prefix(scores: np.ndarray) -> np.ndarray:
    """(n,) int64 in [-2**31, 2**31): the first 32 bits of an integer that orders as the scores do, all of a float32.

    A float's bits read as a signed integer, with the magnitude bits of negative numbers flipped, order as the
    floats do (-0.0 is made 0.0 first: the two are equal scores).
    """
    if scores.dtype == np.float32:
        bits = (scores + np.float32(0.0)).view(np.int32)
        bits ^= (bits >> 31) & 0x7FFFFFFF
        return bits.astype(np.int64)
    bits = (scores + 0.0).view(np.int64)
    bits ^= (bits >> 63) & 0x7FFFFFFFFFFFFFFF
    return bits >> 32


def _bits(num_cols: int) -> int:
    """Bits of a key that hold the column."""
    return max(1, (num_cols - 1).bit_length())


def _expand_spans(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (owner, index) with ``low[owner] <= index < high[owner]``, owners ascending: (T,) each."""
    span = high - low
    owner = np.repeat(np.arange(len(low)), span)
    return owner, low[owner] + np.arange(len(owner)) - (np.cumsum(span) - span)[owner]
