import pytest
import torch

from reid_accel.data import CrossDomainBatchSampler, ProxyBatchSampler
from reid_accel.errors import ConfigError
from reid_accel.layout import BatchLayout


def make_sampler(num_source, num_target, per_process, *, replicas=1, rank=0, seed=0, bn_batch_size=None):
    """A sampler for `replicas` processes of `per_process` images each."""
    layout = BatchLayout.plan(
        per_process * replicas, replicas, bn_batch_size=bn_batch_size, two_domains=num_target > 0, sync_bn=True
    )
    return CrossDomainBatchSampler(num_source, num_target, layout, rank=rank, seed=seed)


def epoch_batches(sampler: CrossDomainBatchSampler, epoch: int, start_step: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start_step=start_step)
    return list(sampler)


def rank_batches(num_source, num_target, batch_size, replicas, epoch, seed=0, bn=None) -> list[list[list[int]]]:
    """Batches of every rank for one epoch: [rank][step] -> indices."""
    samplers = [
        make_sampler(num_source, num_target, batch_size, replicas=replicas, rank=r, seed=seed, bn_batch_size=bn)
        for r in range(replicas)
    ]
    return [epoch_batches(s, epoch) for s in samplers]


def test_half_and_half_layout_and_step_counts():
    sampler = make_sampler(11, 7, 4)
    # epoch 1 keeps the partial step: ceil(11 / 2) = 6; later epochs drop it: 11 // 2 = 5
    assert (sampler.steps_per_epoch(1), sampler.steps_per_epoch(2), sampler.steps_per_epoch(9)) == (6, 5, 5)
    for epoch, steps in ((1, 6), (2, 5)):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(sampler) == steps
        for batch in batches:
            assert len(batch) == 4
            assert all(0 <= i < 11 for i in batch[:2])
            assert all(11 <= i < 18 for i in batch[2:])


def test_epoch_walks_the_larger_set_once():
    sampler = make_sampler(11, 7, 4)
    source_epoch2 = [i for batch in epoch_batches(sampler, 2) for i in batch[:2]]
    assert len(source_epoch2) == len(set(source_epoch2)) == 10  # a permutation of 11, last partial step dropped
    source_epoch1 = [i for batch in epoch_batches(sampler, 1) for i in batch[:2]]
    assert set(source_epoch1[:11]) == set(range(11))  # the whole permutation, then one random pad index
    # the smaller set: one whole permutation of 7, then random pads
    target_epoch1 = [i - 11 for batch in epoch_batches(sampler, 1) for i in batch[2:]]
    assert sorted(target_epoch1[:7]) == list(range(7))


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize(("num_source", "num_target"), [(23, 10), (5, 13), (12, 12)])
def test_every_target_slot_is_visited_in_epoch_one(replicas, num_source, num_target):
    batches = rank_batches(num_source, num_target, 4, replicas, epoch=1)
    targets = {i - num_source for rank in batches for batch in rank for i in batch[2:]}
    sources = {i for rank in batches for batch in rank for i in batch[:2]}
    assert targets == set(range(num_target))
    assert sources == set(range(num_source))
    steps = -(-max(num_source, num_target) // (2 * replicas))
    assert all(len(rank) == steps for rank in batches)


@pytest.mark.parametrize("replicas", [2, 3])
def test_ranks_take_consecutive_slices_of_one_global_order(replicas):
    per_rank = rank_batches(23, 10, 4, replicas, epoch=2, seed=5)
    # one process with the global batch draws the same global order (same seed, epoch and global half)
    global_batches = epoch_batches(make_sampler(23, 10, 4 * replicas, seed=5), 2)
    assert len(global_batches) == len(per_rank[0]) == 23 // (2 * replicas)
    for step, global_batch in enumerate(global_batches):
        half = 2 * replicas
        for rank in range(replicas):
            assert per_rank[rank][step] == (
                global_batch[2 * rank : 2 * rank + 2] + global_batch[half + 2 * rank : half + 2 * rank + 2]
            )
        # the walked (larger) set has no repeats in epoch 2, so the ranks' shares are disjoint
        sources = [i for rank in range(replicas) for i in per_rank[rank][step][:2]]
        assert len(set(sources)) == len(sources)
    all_sources = [i for rank in per_rank for batch in rank for i in batch[:2]]
    assert len(all_sources) == len(set(all_sources))


def test_determinism_per_seed_and_epoch():
    a, b = make_sampler(30, 20, 6, seed=1), make_sampler(30, 20, 6, seed=1)
    assert epoch_batches(a, 3) == epoch_batches(b, 3)
    assert epoch_batches(a, 3) != epoch_batches(a, 4)
    assert epoch_batches(a, 3) != epoch_batches(make_sampler(30, 20, 6, seed=2), 3)
    assert epoch_batches(a, 3) == epoch_batches(a, 3)  # iterating twice gives the same epoch


@pytest.mark.parametrize(("epoch", "start_step"), [(1, 0), (1, 4), (1, 8), (2, 3), (2, 7)])
def test_resume_from_start_step_gives_the_tail_of_the_epoch(epoch, start_step):
    sampler = make_sampler(15, 9, 4, seed=7)
    full = epoch_batches(sampler, epoch)
    resumed = make_sampler(15, 9, 4, seed=7)
    resumed.set_epoch(epoch, start_step=start_step)
    assert len(resumed) == len(full) - start_step
    assert list(resumed) == full[start_step:]


def test_source_only_batches():
    sampler = make_sampler(10, 0, 4)
    batches = epoch_batches(sampler, 1)
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    assert {i for b in batches for i in b} == set(range(10))
    assert len(epoch_batches(sampler, 2)) == 2


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 10, 4), {}, "do not fit a two-domain layout"),
        ((10, 0, 4), {}, "do not fit a two-domain layout"),
        ((10, 10, 4), {"rank": 2}, r"rank 2 is not in \[0, 2\)"),
        ((5, 3, 6), {}, r"a step of 6 images per domain \(data.batch_size=12\) exceeds the larger training set"),
    ],
)
def test_bad_arguments(args, kwargs, message):
    layout = BatchLayout.plan(2 * args[2], 2)
    with pytest.raises(ConfigError, match=message):
        CrossDomainBatchSampler(*args[:2], layout, **kwargs)


@pytest.mark.parametrize(("replicas", "bn_batch_size"), [(2, 4), (4, 2), (2, 2)])
def test_micro_batches_hold_the_images_the_processes_would(replicas, bn_batch_size):
    """One process running micro-batches draws, group by group, what several processes draw."""
    per_rank = rank_batches(23, 10, 8 // replicas, replicas, epoch=2, seed=3, bn=bn_batch_size)
    single = epoch_batches(make_sampler(23, 10, 8, bn_batch_size=bn_batch_size, seed=3), 2)
    for step, batch in enumerate(single):
        groups = [batch[i : i + bn_batch_size] for i in range(0, 8, bn_batch_size)]
        ranks = [i for rank in per_rank for i in rank[step]]
        assert [i for group in groups for i in group] == ranks
        half = bn_batch_size // 2
        assert all(i < 23 for group in groups for i in group[:half]) and all(
            i >= 23 for group in groups for i in group[half:]
        )


def test_set_epoch_checks():
    sampler = make_sampler(10, 10, 4)
    with pytest.raises(ValueError, match="1-based"):
        sampler.set_epoch(0)
    with pytest.raises(ValueError, match=r"start_step 6 is not in \[0, 5\]"):
        sampler.set_epoch(2, start_step=6)
    sampler.set_epoch(2, start_step=5)
    assert len(sampler) == 0 and list(sampler) == []


# ProxyBatchSampler: 40 images, cameras i % 3; proxy p < 9 owns the images i with i % 10 == p, except those left
# out (-1): proxy 9's, 5 and 15 (proxy 5 keeps two, fewer than K = 4) and 37 (proxy 7 keeps three).
PROXY_OF_IMAGE = torch.tensor([-1 if i % 10 == 9 or i in (5, 15, 37) else i % 10 for i in range(40)])
CAMIDS = torch.arange(40) % 3


def proxy_sampler(per_process=16, replicas=1, rank=0, *, k=4, steps=12, seed=0, bn=None, **kwargs):
    layout = BatchLayout.plan(per_process * replicas, replicas, bn_batch_size=bn, two_domains=False, sync_bn=True)
    sampler = ProxyBatchSampler(
        layout, images_per_proxy=k, steps_per_epoch=steps, camids=CAMIDS, rank=rank, seed=seed, **kwargs
    )
    sampler.set_proxies(PROXY_OF_IMAGE)
    return sampler


def test_proxy_batches_are_p_proxies_of_k_images():
    sampler = proxy_sampler()
    batches = epoch_batches(sampler, 1)
    assert len(batches) == len(sampler) == 12
    slots = []
    for batch in batches:
        assert len(batch) == 16
        for start in range(0, 16, 4):
            group = PROXY_OF_IMAGE[batch[start : start + 4]]
            assert (group == group[0]).all() and group[0] >= 0  # K images of one proxy, never a left-out image
            slots.append(int(group[0]))
            images = batch[start : start + 4]
            if group[0] == 5:  # two images: each twice
                assert sorted(images) == [25, 25, 35, 35]
            elif group[0] == 7:  # three images: all of them, then one repeat
                assert set(images) == {7, 17, 27}
            else:
                assert len(set(images)) == 4
    # back-to-back passes, every proxy once per pass
    for start in range(0, len(slots) - 9, 9):
        assert sorted(slots[start : start + 9]) == list(range(9))


def test_proxy_batches_are_rank_free_resumable_and_seeded():
    single = epoch_batches(proxy_sampler(16, seed=3), 2)
    for replicas, bn in ((2, None), (4, None), (2, 4)):
        per_rank = [
            epoch_batches(proxy_sampler(16 // replicas, replicas, r, seed=3, bn=bn), 2) for r in range(replicas)
        ]
        for step, batch in enumerate(single):
            assert [i for rank in per_rank for i in rank[step]] == batch
    sampler = proxy_sampler(seed=3)
    sampler.set_epoch(2, start_step=5)
    assert len(sampler) == 7 and list(sampler) == single[5:]
    assert epoch_batches(proxy_sampler(seed=3), 3) != single
    assert epoch_batches(proxy_sampler(seed=4), 2) != single


def test_proxies_change_between_epochs():
    sampler = proxy_sampler(8, k=2)
    merged = PROXY_OF_IMAGE.clone()
    merged[merged == 8] = 7  # proxies 7 and 8 become one
    sampler.set_proxies(merged)
    indices = {i for batch in epoch_batches(sampler, 1) for i in batch}
    assert {int(merged[i]) for i in indices} == set(range(8))


def test_cross_camera_draws_other_cameras_first():
    sampler = proxy_sampler(cross_camera=True, steps=20)
    for batch in epoch_batches(sampler, 1):
        for start in range(0, 16, 4):
            anchor, rest = batch[start], batch[start + 1 : start + 4]
            assert (PROXY_OF_IMAGE[rest] == PROXY_OF_IMAGE[anchor]).all()
            others = [
                i for i in range(40) if PROXY_OF_IMAGE[i] == PROXY_OF_IMAGE[anchor] and CAMIDS[i] != CAMIDS[anchor]
            ]
            assert all(CAMIDS[i] != CAMIDS[anchor] for i in rest) == bool(others)
    # one camera only: the other images of the cluster, else the anchor again
    layout = BatchLayout.plan(4, 1, two_domains=False)
    lonely = ProxyBatchSampler(layout, images_per_proxy=2, steps_per_epoch=3, camids=torch.zeros(3), cross_camera=True)
    lonely.set_proxies(torch.tensor([0, 0, 1]))
    for batch in epoch_batches(lonely, 1):
        pairs = sorted([batch[:2], batch[2:]])
        assert pairs in ([[0, 1], [2, 2]], [[1, 0], [2, 2]])


def test_proxy_sampler_refusals():
    one_domain = BatchLayout.plan(16, 1, two_domains=False)
    with pytest.raises(ConfigError, match="one domain"):
        ProxyBatchSampler(BatchLayout.plan(16, 1))
    with pytest.raises(ConfigError, match="not a whole number of proxies of 3 images"):
        ProxyBatchSampler(one_domain, images_per_proxy=3)
    with pytest.raises(ValueError, match="camids"):
        ProxyBatchSampler(one_domain, cross_camera=True)
    sampler = ProxyBatchSampler(BatchLayout.plan(40, 1, two_domains=False), images_per_proxy=4)
    with pytest.raises(RuntimeError, match="set_proxies"):
        list(sampler)
    with pytest.raises(ConfigError, match="gave 9 proxies, fewer than the 10 a step draws"):
        sampler.set_proxies(PROXY_OF_IMAGE)
    with pytest.raises(ValueError, match="at least one image"):
        sampler.set_proxies(torch.tensor([0, 2] * 20))
