"""The CPU ranking (numpy, in chunks over threads) against the torch ranking."""

import numpy as np
import pytest
import torch

from reid_accel.metrics import cpu_ranking, ranking


@pytest.mark.parametrize("seed", [0, 4])
def test_numpy_positions_equal_the_torch_ones_in_any_chunking(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(1, 8, size=40), rng.integers(-1, 7, size=300)  # junk, distractors, no-match ids
    q_cams, g_cams = rng.integers(0, 4, size=40), rng.integers(0, 4, size=300)
    scores = rng.integers(-4, 1, size=(40, 300)).astype(np.float32)  # many ties, between matches too
    scores[::3] = rng.normal(size=(14, 300))
    scores[5, ::2] = -0.0
    protocol = ranking._Protocol.build(q_pids, g_pids, q_cams, g_cams, 40, 300)
    keep = protocol.kept_columns.numpy()
    block = torch.from_numpy(np.ascontiguousarray(scores[:, keep]))
    pairs = protocol.same_pid_pairs(0, 40)
    rows, hits, positions = ranking._block_ranks(block, *pairs, bound=None)
    order = np.lexsort((hits.numpy(), rows.numpy()))  # the torch path lists each row's matches worst first
    expected = [a.numpy()[order] for a in (rows, hits, positions)]
    assert len(expected[0]) > 100 and np.any(hits.numpy() > 3)
    for chunk_entries, workers in ((1 << 20, 1), (1000, 1), (300, 3), (1, 2)):
        monkeypatch.setattr(cpu_ranking, "_CHUNK_ENTRIES", chunk_entries)
        found = cpu_ranking.match_positions(block.numpy(), *(t.numpy() for t in pairs), bound=None, workers=workers)
        for ours, theirs in zip(found, expected, strict=True):
            np.testing.assert_array_equal(ours, theirs)
