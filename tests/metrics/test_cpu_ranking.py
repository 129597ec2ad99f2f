"""The CPU ranking (numpy, each row's candidates sorted, in chunks over threads) against the torch ranking."""

import numpy as np
import pytest
import torch

from reid_accel.metrics import cpu_ranking, ranking

# Rows sorted together as keys (float32 only), then each row sorted alone.
BOTH_WAYS = [(1 << 20, 1, 1 << 20), (1000, 2, 0)]


def assert_numpy_positions_equal_torch_ones(scores: np.ndarray, ids, monkeypatch, chunkings) -> list[np.ndarray]:
    """The numpy path's positions in each (chunk entries, workers, rows sorted alone from) equal the torch path's,
    which are returned. ``ids``: query and gallery ids, query and gallery cameras."""
    protocol = ranking._Protocol.build(*ids, *scores.shape)
    block = torch.from_numpy(np.ascontiguousarray(scores[:, protocol.kept_columns.numpy()]))
    pairs = protocol.same_pid_pairs(0, len(scores))
    expected = [t.numpy() for t in ranking._block_ranks(block, *pairs, bound=None)]
    for chunk_entries, workers, sort_alone_from in chunkings:
        monkeypatch.setattr(cpu_ranking, "_CHUNK_ENTRIES", chunk_entries)
        monkeypatch.setattr(cpu_ranking, "_SORT_ALONE_FROM", sort_alone_from)
        found = cpu_ranking.match_positions(block.numpy(), *(t.numpy() for t in pairs), workers=workers)
        for mine, theirs in zip(found, expected, strict=True):
            np.testing.assert_array_equal(mine, theirs)
    return expected


def few_ids(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Ids and cameras of 6 queries and 500 gallery items: many matches per query."""
    return (
        rng.integers(1, 4, size=6),
        rng.integers(0, 4, size=500),
        rng.integers(0, 3, size=6),
        rng.integers(0, 3, size=500),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 4])
def test_numpy_positions_equal_the_torch_ones_in_any_chunking(seed, dtype, monkeypatch):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(1, 8, size=40), rng.integers(-1, 7, size=300)  # junk, distractors, no-match ids
    q_cams, g_cams = rng.integers(0, 4, size=40), rng.integers(0, 4, size=300)
    scores = rng.integers(-4, 1, size=(40, 300)).astype(dtype)  # many ties, between matches too
    scores[::3] = rng.normal(size=(14, 300))
    scores[5, ::2] = -0.0  # equal to 0.0
    scores[7, ::5] = np.inf
    scores[8, ::4] = -np.inf
    # rows sorted together (float32 only), one by one (0), or by their number of candidates (30)
    chunkings = [(1 << 20, 1, 1 << 20), (1000, 1, 0), (300, 3, 30), (1, 2, 1 << 20), (1000, 2, 0)]
    expected = assert_numpy_positions_equal_torch_ones(
        scores, (q_pids, g_pids, q_cams, g_cams), monkeypatch, chunkings
    )
    assert len(expected[0]) > 100 and np.any(expected[1] > 3)


def test_scores_one_ulp_apart_and_subnormal_scores_rank_exactly(monkeypatch):
    rng = np.random.default_rng(1)
    ids = few_ids(rng)
    steps = rng.integers(-3, 4, size=(6, 500), dtype=np.int32)  # a few ulps around one value
    scores = (np.full((6, 500), 0.731, dtype=np.float32).view(np.int32) + steps).view(np.float32)
    scores[3] = rng.integers(-2, 3, size=500) * np.float32(1e-45)  # subnormals, both signs, and zeros
    assert_numpy_positions_equal_torch_ones(scores, ids, monkeypatch, BOTH_WAYS)


def test_float64_scores_a_few_ulps_apart_rank_exactly(monkeypatch):
    rng = np.random.default_rng(2)
    ids = few_ids(rng)
    # a few ulps of float64 apart: closer than the torch path's float64 keys resolve, and not float32-representable
    steps = rng.integers(-3, 4, size=(6, 500))
    scores = (np.full((6, 500), 0.731).view(np.int64) + steps).view(np.float64)
    scores[2] = -scores[2]
    assert_numpy_positions_equal_torch_ones(scores, ids, monkeypatch, BOTH_WAYS)


def test_other_dtypes_are_refused():
    with pytest.raises(TypeError, match="float16"):
        cpu_ranking.match_positions(
            np.zeros((2, 3), np.float16), *(np.zeros(0, dtype=np.int64),) * 2, np.zeros(0, bool), workers=1
        )


def brute_force_positions(scores, rows, cols, is_match) -> np.ndarray:
    """Each true match's position by counting, rows ascending, each row's matches worst first."""
    found = []
    for row in range(len(scores)):
        mine = rows == row
        removed, matches = set(cols[mine & ~is_match].tolist()), cols[mine & is_match].tolist()
        for col in sorted(matches, key=lambda c, row=row: (scores[row, c], -c)):
            ahead = [
                j
                for j in range(scores.shape[1])
                if j != col
                and j not in removed
                and (scores[row, j] > scores[row, col] or (scores[row, j] == scores[row, col] and j < col))
            ]
            found.append(len(ahead))
    return np.array(found, dtype=np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_rankings_equal_a_brute_force_count_on_scores_ulps_apart(dtype, monkeypatch):
    rng = np.random.default_rng(5)
    integer = np.int32 if dtype == np.float32 else np.int64
    for trial in range(150):
        num_rows, num_cols = rng.integers(1, 4), rng.integers(2, 9)
        steps = rng.integers(-3, 4, size=(num_rows, num_cols)).astype(integer)
        scores = (np.full((num_rows, num_cols), 0.731, dtype=dtype).view(integer) + steps).view(dtype)
        scores[rng.random(scores.shape) < 0.1] *= -1
        pairs = [(r, c) for r in range(num_rows) for c in range(num_cols) if rng.random() < 0.4]
        is_match = rng.random(len(pairs)) < 0.7
        if not is_match.any():
            continue
        rows, cols = (np.array(column, dtype=np.int64) for column in zip(*pairs, strict=True))
        expected = brute_force_positions(scores, rows, cols, is_match)
        monkeypatch.setattr(cpu_ranking, "_SORT_ALONE_FROM", [0, 1 << 20][trial % 2])
        ours = cpu_ranking.match_positions(scores, rows, cols, is_match, workers=1)
        torch_path = ranking._block_ranks(*(torch.from_numpy(a) for a in (scores, rows, cols, is_match)), bound=None)
        np.testing.assert_array_equal(ours[2], expected)
        np.testing.assert_array_equal(torch_path[2].numpy(), expected)
