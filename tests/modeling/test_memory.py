"""ExemplarMemory: initial noise, momentum updates, the duplicate-slot rule, state dicts, and 2-process agreement."""

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from reid_accel.modeling import ExemplarMemory


def reference_update(memory, features, slots, momentum):
    """Slot by slot in float64: mean of the normalised features of each slot, then one momentum step."""
    memory = memory.double().clone()
    features = F.normalize(features.double(), dim=1)
    for slot in slots.unique().tolist():
        mean = features[slots == slot].mean(0)
        memory[slot] = F.normalize(momentum * memory[slot] + (1 - momentum) * mean, dim=0)
    return memory


def test_initial_noise_and_buffers():
    memory = ExemplarMemory(5000, 64, torch.zeros(5000, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert memory.features.dtype == torch.float32 and memory.camids.dtype == torch.long
    assert memory.features.std().item() == pytest.approx(0.001, rel=0.01)
    assert abs(memory.features.mean().item()) < 1e-5
    again = ExemplarMemory(5000, 64, [0] * 5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.features, memory.features)
    assert set(memory.state_dict()) == {"features", "camids"}
    with pytest.raises(ValueError, match="one entry per slot"):
        ExemplarMemory(4, 8, [0, 1, 2])


def test_momentum_zero_overwrites_and_rows_stay_unit():
    memory = ExemplarMemory(10, 4, torch.arange(10) % 3)
    untouched = memory.features.clone()
    features = torch.tensor([[3.0, 0.0, 4.0, 0.0], [0.0, -2.0, 0.0, 0.0]])
    memory.update(features, torch.tensor([7, 2]), momentum=0.0)
    torch.testing.assert_close(memory.features[7], torch.tensor([0.6, 0.0, 0.8, 0.0]))
    torch.testing.assert_close(memory.features[2], torch.tensor([0.0, -1.0, 0.0, 0.0]))
    others = [k for k in range(10) if k not in (2, 7)]
    assert torch.equal(memory.features[others], untouched[others])

    # m = 0.6 on a unit row: normalize(0.6 * [0.6, 0, 0.8, 0] + 0.4 * [1, 0, 0, 0]) = [0.76, 0, 0.48, 0] / 0.8989.
    memory.update(torch.tensor([[5.0, 0.0, 0.0, 0.0]]), torch.tensor([7]), momentum=0.6)
    norm = (0.76**2 + 0.48**2) ** 0.5
    torch.testing.assert_close(memory.features[7], torch.tensor([0.76 / norm, 0.0, 0.48 / norm, 0.0]))
    assert memory.features[[2, 7]].norm(dim=1).tolist() == pytest.approx([1.0, 1.0])


def test_duplicate_slots_average_their_features():
    memory = ExemplarMemory(6, 3, torch.zeros(6, dtype=torch.long))
    memory.update(torch.eye(3)[[0, 1, 2]], torch.tensor([0, 1, 2]), momentum=0.0)
    start = memory.features.clone()
    features = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0], [0.0, 3.0, 0.0]])
    slots = torch.tensor([1, 4, 1, 1])  # slot 1 three times: mean of e0, e2, e1
    memory.update(features, slots, momentum=0.5)
    expected = F.normalize(0.5 * start[1] + 0.5 * torch.tensor([1.0, 1.0, 1.0]) / 3, dim=0)
    torch.testing.assert_close(memory.features[1], expected)
    torch.testing.assert_close(memory.features[4], F.normalize(0.5 * start[4] + 0.5 * features[1], dim=0))


def test_random_updates_match_the_float64_reference():
    g = torch.Generator().manual_seed(0)
    memory = ExemplarMemory(50, 16, torch.randint(0, 4, (50,), generator=g), generator=g)
    for momentum in (0.0, 0.6, 0.6):
        features, slots = torch.randn(32, 16, generator=g), torch.randint(0, 50, (32,), generator=g)
        expected = reference_update(memory.features, features, slots, momentum)
        memory.update(features, slots, momentum)
        torch.testing.assert_close(memory.features.double(), expected, rtol=0, atol=1e-6)


def test_state_dict_round_trip():
    memory = ExemplarMemory(8, 4, torch.arange(8) % 2)
    memory.update(torch.randn(3, 4), torch.tensor([1, 5, 6]), momentum=0.0)
    restored = ExemplarMemory(8, 4, torch.zeros(8, dtype=torch.long))
    restored.load_state_dict(memory.state_dict())
    assert torch.equal(restored.features, memory.features) and torch.equal(restored.camids, memory.camids)


NUM_SLOTS, DIM, PER_PROCESS, STEPS = 40, 8, 6, 4


def batches(rank):
    """This process's (features, slots) per step; slots repeat within and across processes."""
    g = torch.Generator().manual_seed(100 + rank)
    return [
        (torch.randn(PER_PROCESS, DIM, generator=g), torch.randint(0, 12, (PER_PROCESS,), generator=g))
        for _ in range(STEPS)
    ]


def momenta():
    return [0.0] + [0.6] * (STEPS - 1)


def run_process(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        memory = ExemplarMemory(
            NUM_SLOTS, DIM, torch.arange(NUM_SLOTS) % 3, generator=torch.Generator().manual_seed(0)
        )
        for (features, slots), momentum in zip(batches(rank), momenta(), strict=True):
            memory.update(features, slots, momentum)
        save_file({"features": memory.features}, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_hold_identical_memories_equal_to_one_process(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[2]))  # spawned processes import this module by name
    mp.spawn(run_process, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = load_file(tmp_path / "rank0.safetensors")["features"]
    rank1 = load_file(tmp_path / "rank1.safetensors")["features"]
    assert torch.equal(rank0, rank1)

    single = ExemplarMemory(NUM_SLOTS, DIM, torch.arange(NUM_SLOTS) % 3, generator=torch.Generator().manual_seed(0))
    for (f0, s0), (f1, s1), momentum in zip(batches(0), batches(1), momenta(), strict=True):
        single.update(torch.cat([f0, f1]), torch.cat([s0, s1]), momentum)
    assert torch.equal(rank0, single.features)
    assert not torch.equal(rank0, ExemplarMemory(NUM_SLOTS, DIM, [0] * NUM_SLOTS).features)
