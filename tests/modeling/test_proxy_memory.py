"""ProxyMemory: resets, the per-sample momentum chain against a Python loop, hardest-sample updates, state dicts."""

import pytest
import torch
import torch.nn.functional as F

from reid_accel.modeling import ProxyMemory


def loop_update(bank, features, proxies, momentum):
    """The official loop: one momentum step per sample, in batch order."""
    bank = bank.clone()
    for x, y in zip(F.normalize(features, dim=1), proxies.tolist(), strict=True):
        bank[y] = F.normalize(momentum * bank[y] + (1 - momentum) * x, dim=0)
    return bank


def loop_hardest(bank, features, proxies, momentum):
    """Cluster contrast's --use-hard loop: per proxy, its least similar sample to the pre-update row."""
    bank, start = bank.clone(), bank.clone()
    features = F.normalize(features, dim=1)
    for y in dict.fromkeys(proxies.tolist()):
        mine = features[proxies == y]
        hardest = mine[int(torch.argmin(mine @ start[y]))]
        bank[y] = F.normalize(momentum * bank[y] + (1 - momentum) * hardest, dim=0)
    return bank


def random_memory(num_proxies=12, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    memory = ProxyMemory(dim=dim)
    memory.reset(F.normalize(torch.randn(num_proxies, dim, generator=g), dim=1))
    return memory, g


@pytest.mark.parametrize("momentum", [0.2, 0.1, 0.0])
def test_sequential_update_equals_the_per_sample_loop(momentum):
    memory, g = random_memory()
    for _ in range(3):
        features, proxies = torch.randn(32, 16, generator=g), torch.randint(0, 12, (32,), generator=g)
        expected = loop_update(memory.features, features, proxies, momentum)
        memory.update(features, proxies, momentum)
        torch.testing.assert_close(memory.features, expected, rtol=0, atol=1e-6)
    assert memory.features.norm(dim=1).tolist() == pytest.approx([1.0] * 12)


def test_hardest_update_equals_the_loop():
    memory, g = random_memory(seed=1)
    for _ in range(3):
        features, proxies = torch.randn(32, 16, generator=g), torch.randint(0, 12, (32,), generator=g)
        expected = loop_hardest(memory.features, features, proxies, 0.1)
        memory.update(features, proxies, 0.1, mode="hardest")
        torch.testing.assert_close(memory.features, expected, rtol=0, atol=1e-6)


def test_order_across_proxies_does_not_matter_order_within_does():
    memory, g = random_memory(seed=2)
    features, proxies = torch.randn(24, 16, generator=g), torch.randint(0, 6, (24,), generator=g)
    # a permutation keeping each proxy's samples in their order: sort by proxy, stably
    regrouped = torch.argsort(proxies, stable=True)
    results = []
    for order in (torch.arange(24), regrouped):
        copy = ProxyMemory(dim=16)
        copy.reset(memory.features)
        copy.update(features[order], proxies[order], 0.2)
        results.append(copy.features)
    assert torch.equal(results[0], results[1])
    # reversing the samples of one proxy changes its row (the chain is not commutative within a proxy)
    copy = ProxyMemory(dim=16)
    copy.reset(memory.features)
    copy.update(features.flip(0), proxies.flip(0), 0.2)
    assert not torch.equal(copy.features, results[0])


def test_untouched_proxies_stay_and_duplicates_chain():
    memory = ProxyMemory(dim=2)
    memory.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    memory.update(torch.tensor([[0.0, 2.0], [0.0, 1.0]]), torch.tensor([0, 0]), 0.5)
    first = F.normalize(torch.tensor([0.5, 0.5]), dim=0)
    second = F.normalize(0.5 * first + torch.tensor([0.0, 0.5]), dim=0)
    torch.testing.assert_close(memory.features[0], second)
    assert memory.features[1:].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_reset_resizes_and_state_dicts_carry_the_size():
    memory, g = random_memory(num_proxies=5, dim=8)
    assert memory.num_proxies == 5 and memory.features.dtype == torch.float32
    memory.reset(torch.randn(9, 8, generator=g).double())
    assert memory.features.shape == (9, 8) and memory.features.dtype == torch.float32
    restored = ProxyMemory(num_proxies=3, dim=8)
    restored.load_state_dict(memory.state_dict())
    assert torch.equal(restored.features, memory.features)
    with pytest.raises(RuntimeError, match="size mismatch"):
        ProxyMemory(dim=4).load_state_dict(memory.state_dict())


def test_bad_arguments():
    memory, _ = random_memory(num_proxies=4, dim=3)
    with pytest.raises(ValueError, match="expected \\(M, 3\\)"):
        memory.reset(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        memory.update(torch.randn(2, 3), torch.tensor([0, 4]), 0.2)
    with pytest.raises(ValueError, match="outside"):
        memory.update(torch.randn(2, 3), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="mode"):
        memory.update(torch.randn(2, 3), torch.tensor([0, 1]), 0.2, mode="mean")
