"""rank_metrics against a loop-based float64 reference of the Market-1501 protocol."""

import numpy as np
import pytest
import torch

from reid_accel.errors import ReidAccelError
from reid_accel.metrics import cpu_ranking, product, rank_metrics, rank_metrics_from_distance, ranking, top_k_gallery


@pytest.fixture(params=["numpy", "numpy-small-chunks-numpy-blas", "torch"], autouse=True)
def ranking_path(request, monkeypatch):
    """Every test runs each CPU path: numpy ranking (the CPU's; also in chunks of a few rows, after numpy's
    product) and torch ranking (CUDA's)."""
    if request.param == "torch":
        monkeypatch.setattr(ranking, "_numpy_on", lambda device: False)
    elif request.param == "numpy-small-chunks-numpy-blas":
        monkeypatch.setattr(cpu_ranking, "_CHUNK_ENTRIES", 1000)
        monkeypatch.setenv(product.ENV_VAR, "numpy")
    return request.param


def reference_metrics(distmat, q_pids, g_pids, q_cams, g_cams, ap_mode, max_rank):
    """Per query: stable sort by (distance, gallery index), drop junk and same id + same camera, walk the list."""
    aps, cmcs = [], []
    for i in range(distmat.shape[0]):
        order = sorted(range(distmat.shape[1]), key=lambda j, i=i: (distmat[i, j], j))
        ranked = [j for j in order if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        good = [g_pids[j] == q_pids[i] for j in ranked]
        num_good = sum(good)
        if num_good == 0:
            continue
        ap, hits, prev_recall, prev_precision, first = 0.0, 0, 0.0, 1.0, None
        for pos, is_good in enumerate(good):
            hits += is_good
            precision, recall = hits / (pos + 1), hits / num_good
            if ap_mode == "standard":
                ap += precision / num_good if is_good else 0.0
            else:
                ap += (recall - prev_recall) * (prev_precision + precision) / 2
            prev_recall, prev_precision = recall, precision
            if is_good and first is None:
                first = pos
        aps.append(ap)
        cmcs.append([1.0 if first <= k else 0.0 for k in range(max_rank)])
    cmc = np.mean(cmcs, axis=0)
    return {
        "mAP": float(np.mean(aps)),
        "rank1": cmc[0],
        "rank5": cmc[4],
        "rank10": cmc[9],
        "cmc": cmc,
        "num_valid_queries": len(aps),
        "num_queries": distmat.shape[0],
    }


def cosine_distance(query, gallery):
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    return -(query @ gallery.T)


def assert_same(ours, reference, atol=1e-6):
    for key in ("mAP", "rank1", "rank5", "rank10"):
        assert isinstance(ours[key], float)
        assert ours[key] == pytest.approx(reference[key], abs=atol), key
    np.testing.assert_allclose(ours["cmc"], reference["cmc"], atol=atol)
    assert ours["num_valid_queries"] == reference["num_valid_queries"]
    assert ours["num_queries"] == reference["num_queries"]


def random_split(seed, num_query=40, num_gallery=300, dim=16, num_ids=25, num_cams=4, noise=1.5):
    """Ids with junk (-1) and distractors (0) in the gallery, queries without a match, same-camera matches."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids + 5, dim))
    q_pids = rng.integers(1, num_ids + 5, size=num_query)  # ids >= num_ids + 1 never appear in the gallery
    g_pids = rng.integers(-1, num_ids + 1, size=num_gallery)
    q_cams = rng.integers(0, num_cams, size=num_query)
    g_cams = rng.integers(0, num_cams, size=num_gallery)
    query = centers[q_pids] + noise * rng.normal(size=(num_query, dim))
    gallery = centers[np.maximum(g_pids, 0)] + noise * rng.normal(size=(num_gallery, dim))
    return query, gallery, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("ap_mode", ["standard", "trapezoid"])
@pytest.mark.parametrize("seed", [0, 1])
def test_features_match_reference(ap_mode, seed):
    query, gallery, q_pids, g_pids, q_cams, g_cams = random_split(seed)
    ours = rank_metrics(query, gallery, q_pids, g_pids, q_cams, g_cams, ap_mode=ap_mode, chunk_size=7)
    reference = reference_metrics(cosine_distance(query, gallery), q_pids, g_pids, q_cams, g_cams, ap_mode, 50)
    assert 0 < reference["num_valid_queries"] < len(query)  # the data exercise the no-match rule
    assert 0.05 < reference["mAP"] < 0.95
    assert_same(ours, reference)


@pytest.mark.parametrize("chunk_size", [1, 7, 39, 40, 1000, None])
def test_chunk_size_never_changes_the_result(chunk_size):
    query, gallery, q_pids, g_pids, q_cams, g_cams = random_split(2)
    reference = reference_metrics(cosine_distance(query, gallery), q_pids, g_pids, q_cams, g_cams, "trapezoid", 20)
    ours = rank_metrics(
        query, gallery, q_pids, g_pids, q_cams, g_cams, ap_mode="trapezoid", max_rank=20, chunk_size=chunk_size
    )
    assert_same(ours, reference)
    assert ours["cmc"].shape == (20,)


def test_torch_inputs_and_float32_match_numpy():
    query, gallery, q_pids, g_pids, q_cams, g_cams = random_split(3)
    from_numpy = rank_metrics(query, gallery, q_pids, g_pids, q_cams, g_cams)
    as_torch = [torch.from_numpy(a) for a in (query, gallery, q_pids, g_pids, q_cams, g_cams)]
    from_torch = rank_metrics(*as_torch, device="cpu", chunk_size=5)
    assert_same(from_torch, from_numpy, atol=1e-12)
    for tensor, array in zip(as_torch, (query, gallery, q_pids, g_pids, q_cams, g_cams), strict=True):
        np.testing.assert_array_equal(tensor.numpy(), array)  # inputs are never modified
    from_lists = rank_metrics(query.tolist(), gallery.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams, g_cams)
    assert_same(from_lists, from_numpy, atol=1e-12)
    # float32 features: same metrics up to the rare order flip of near-equal scores (none in this draw)
    in_float32 = rank_metrics(query.astype(np.float32), gallery.astype(np.float32), q_pids, g_pids, q_cams, g_cams)
    assert_same(in_float32, from_numpy, atol=1e-6)


@pytest.mark.parametrize("ap_mode", ["standard", "trapezoid"])
@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_ties_are_broken_by_gallery_index(ap_mode, chunk_size):
    rng = np.random.default_rng(4)
    query, gallery, q_pids, g_pids, q_cams, g_cams = random_split(4, num_query=30, num_gallery=120, num_ids=6)
    # integer distances: every query has many exact ties, including ties between matches and non-matches
    distmat = rng.integers(0, 4, size=(30, 120)).astype(np.float64)
    distmat[0, :] = 0.0
    distmat[1, ::2] = -0.0  # -0.0 and 0.0 are equal distances
    reference = reference_metrics(distmat, q_pids, g_pids, q_cams, g_cams, ap_mode, 50)
    ours = rank_metrics_from_distance(distmat, q_pids, g_pids, q_cams, g_cams, ap_mode=ap_mode, chunk_size=chunk_size)
    assert_same(ours, reference)
    # float32 and torch inputs give the same ranking
    ours32 = rank_metrics_from_distance(
        torch.from_numpy(distmat).float(), q_pids, g_pids, q_cams, g_cams, ap_mode=ap_mode, chunk_size=chunk_size
    )
    assert_same(ours32, reference)


def test_tied_features_follow_the_same_rule():
    # one-hot features: cosine similarities are exactly 0 or 1, so ties are everywhere
    rng = np.random.default_rng(5)
    q_pids, g_pids = rng.integers(1, 5, size=25), rng.integers(-1, 5, size=90)
    q_cams, g_cams = rng.integers(0, 3, size=25), rng.integers(0, 3, size=90)
    query = np.eye(4)[np.where(rng.random(25) < 0.7, q_pids - 1, rng.integers(0, 4, size=25))]
    gallery = np.eye(4)[np.where(rng.random(90) < 0.7, np.maximum(g_pids, 1) - 1, rng.integers(0, 4, size=90))]
    for ap_mode in ("standard", "trapezoid"):
        reference = reference_metrics(cosine_distance(query, gallery), q_pids, g_pids, q_cams, g_cams, ap_mode, 50)
        for chunk_size in (1, 7, 100):
            ours = rank_metrics(
                query.astype(np.float32),
                gallery,
                q_pids,
                g_pids,
                q_cams,
                g_cams,
                ap_mode=ap_mode,
                chunk_size=chunk_size,
            )
            assert_same(ours, reference)


@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_infinite_and_large_distances(chunk_size):
    rng = np.random.default_rng(9)
    _, _, q_pids, g_pids, q_cams, g_cams = random_split(9, num_query=20, num_gallery=80, num_ids=5)
    distmat = rng.normal(scale=1e3, size=(20, 80))
    distmat[rng.random((20, 80)) < 0.1] = np.inf
    distmat[rng.random((20, 80)) < 0.05] = -np.inf
    distmat[3, :] = np.inf
    for ap_mode in ("standard", "trapezoid"):
        reference = reference_metrics(distmat, q_pids, g_pids, q_cams, g_cams, ap_mode, 50)
        ours = rank_metrics_from_distance(
            distmat, q_pids, g_pids, q_cams, g_cams, ap_mode=ap_mode, chunk_size=chunk_size
        )
        assert_same(ours, reference)


def test_distance_entry_point_matches_features():
    query, gallery, q_pids, g_pids, q_cams, g_cams = random_split(6)
    distmat = cosine_distance(query, gallery)
    for ap_mode in ("standard", "trapezoid"):
        reference = reference_metrics(distmat, q_pids, g_pids, q_cams, g_cams, ap_mode, 50)
        assert_same(rank_metrics_from_distance(distmat, q_pids, g_pids, q_cams, g_cams, ap_mode=ap_mode), reference)
        via_features = rank_metrics(query, gallery, q_pids, g_pids, q_cams, g_cams, ap_mode=ap_mode)
        assert_same(via_features, reference)


def test_hand_computed_example():
    # ranked (after removals): hit, miss, hit, miss.  Gallery order by distance: 0..5
    g_pids = np.array([7, 7, -1, 3, 7, 0])
    g_cams = np.array([1, 0, 1, 1, 2, 1])  # item 1: same id + same camera (removed); item 2: junk (removed)
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    standard = rank_metrics_from_distance(distmat, [7], g_pids, [0], g_cams, max_rank=3)
    assert standard["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    np.testing.assert_allclose(standard["cmc"], [1.0, 1.0, 1.0])
    trapezoid = rank_metrics_from_distance(distmat, [7], g_pids, [0], g_cams, ap_mode="trapezoid")
    assert trapezoid["mAP"] == pytest.approx(0.5 * (1 + 1) / 2 + 0.5 * (1 / 2 + 2 / 3) / 2)
    assert (standard["ap_mode"], trapezoid["ap_mode"]) == ("standard", "trapezoid")  # each result names its rule
    # first hit at position 2 (1 miss before): rank-1 fails, rank-5 holds
    late = rank_metrics_from_distance(np.array([[0.3, 0.2, 0.3, 0.1, 0.5, 0.6]]), [7], g_pids, [0], g_cams)
    assert (late["rank1"], late["rank5"]) == (0.0, 1.0)
    assert late["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_queries_without_a_match_are_left_out_and_counted():
    distmat = np.array([[0.1, 0.2], [0.3, 0.1], [0.2, 0.2]])
    result = rank_metrics_from_distance(distmat, [1, 2, 3], [1, 1], [0, 0, 0], [1, 0])  # query 2: only same camera
    assert (result["num_queries"], result["num_valid_queries"]) == (3, 1)
    assert result["mAP"] == 1.0
    with pytest.raises(ReidAccelError, match="none of the 3 queries"):
        rank_metrics_from_distance(distmat, [5, 6, 7], [1, 1], [0, 0, 0], [1, 0])


def test_bad_input_is_named():
    query, gallery, q_pids, g_pids, q_cams, g_cams = random_split(7, num_query=5, num_gallery=20)
    with pytest.raises(ReidAccelError, match="gallery_camids has shape"):
        rank_metrics(query, gallery, q_pids, g_pids, q_cams, g_cams[:-1])
    with pytest.raises(ReidAccelError, match="ap_mode='devkit'"):
        rank_metrics(query, gallery, q_pids, g_pids, q_cams, g_cams, ap_mode="devkit")
    with pytest.raises(ReidAccelError, match="dimension"):
        rank_metrics(query, gallery[:, :3], q_pids, g_pids, q_cams, g_cams)
    query[0, 0] = np.nan
    with pytest.raises(ReidAccelError, match="query_features holds NaN"):
        rank_metrics(query, gallery, q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ReidAccelError, match="distmat holds NaN"):
        rank_metrics_from_distance(cosine_distance(query, gallery), q_pids, g_pids, q_cams, g_cams)


def test_top_k_gallery_honours_the_protocol():
    query, gallery, q_pids, g_pids, q_cams, g_cams = random_split(8)
    distmat = cosine_distance(query, gallery)
    ranked, matches = top_k_gallery(query, gallery, q_pids, g_pids, q_cams, g_cams, query_indices=[3, 0], top_k=10)
    assert ranked.shape == matches.shape == (2, 10)
    for row, i in enumerate([3, 0]):
        order = sorted(range(len(gallery)), key=lambda j, i=i: (distmat[i, j], j))
        valid = [j for j in order if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        assert ranked[row].tolist() == valid[:10]
        assert matches[row].tolist() == [bool(g_pids[j] == q_pids[i]) for j in valid[:10]]
    # fewer valid items than top_k: padded with -1
    ranked, matches = top_k_gallery(
        query[:1], gallery[:3], [1], [1, -1, 1], [0], [0, 0, 1], query_indices=[0], top_k=4
    )
    assert ranked.tolist() == [[2, -1, -1, -1]] and matches.tolist() == [[True, False, False, False]]
