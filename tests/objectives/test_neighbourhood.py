"""Neighbourhood losses against hand-worked values and a loop-based float64 reference written the original way."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid_accel.objectives import (
    camera_agnostic_neighbourhood_loss,
    camera_aware_neighbourhood_loss,
    neighbour_statistics,
)


def reference_losses(sim, camids, memory_camids, slots, *, scale, eps, camera_aware=True):
    """Row by row, slot by slot: p = exp(s * sim) / sum over the group (no max shift), clamped only if camera-aware.

    Returns (intra, inter) for the camera-aware loss, (loss, 0) for the camera-agnostic one.
    """
    batch, num_slots = sim.shape
    neighbour_terms = {"intra": [], "inter": []}
    instance_terms = []
    for i in range(batch):
        k = int(slots[i])
        if camera_aware:
            intra = [j for j in range(num_slots) if int(memory_camids[j]) == int(camids[i])]
            inter = [j for j in range(num_slots) if int(memory_camids[j]) != int(camids[i])]
        else:
            intra, inter = list(range(num_slots)), []

        def log_prob(group, j, i=i):
            p = torch.exp(scale * sim[i, j]) / torch.exp(scale * sim[i, group]).sum()
            return p.clamp(min=1e-5).log() if camera_aware else p.log()

        for name, group, candidates in (("intra", intra, [j for j in intra if j != k]), ("inter", inter, inter)):
            if not candidates:
                continue
            best = max(float(sim[i, j].detach()) for j in candidates)
            neighbours = [j for j in candidates if float(sim[i, j].detach()) > eps * best]
            if neighbours:
                neighbour_terms[name].append(-torch.stack([log_prob(group, j) for j in neighbours]).mean())
        instance_terms.append(-log_prob(intra, k))

    def mean(terms):
        return torch.stack(terms).mean() if terms else sim.new_zeros(())

    return mean(neighbour_terms["intra"]) + mean(instance_terms), mean(neighbour_terms["inter"])


def random_problem(seed, *, batch=6, num_slots=40, num_cameras=3, dim=8, dtype=torch.float64):
    """Unit features against a unit memory; the batch's slots are distinct, its cameras those of its slots."""
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=1)
    memory = F.normalize(torch.randn(num_slots, dim, generator=g, dtype=dtype), dim=1)
    memory_camids = torch.randint(0, num_cameras, (num_slots,), generator=g)
    slots = torch.randperm(num_slots, generator=g)[:batch]
    # Pull each memory slot towards its image, so the own slot is the best match, as after a few epochs.
    memory[slots] = F.normalize(memory[slots] + 2 * features, dim=1)
    return features @ memory.T, memory_camids[slots], memory_camids, slots


def test_hand_worked_camera_aware_example():
    # Row camera 0, self slot 0. Intra slots {0, 1}, inter slots {2, 3}; scale 1, eps 0.8.
    sim = torch.tensor([[0.9, 0.5, 0.4, 0.1]], dtype=torch.float64)
    camids, memory_camids, slots = torch.tensor([0]), torch.tensor([0, 0, 1, 1]), torch.tensor([0])
    intra, inter = camera_aware_neighbourhood_loss(sim, camids, memory_camids, slots, scale=1.0, eps=0.8)
    # Intra: best non-self 0.5, so slot 1 is the only neighbour; p(1) = 1 / (1 + e^0.4), p(0) = 1 / (1 + e^-0.4).
    assert intra.item() == pytest.approx(math.log1p(math.exp(0.4)) + math.log1p(math.exp(-0.4)), abs=1e-12)
    # Inter: best 0.4, threshold 0.32: slot 2 only; p(2) = e^0.4 / (e^0.4 + e^0.1).
    assert inter.item() == pytest.approx(math.log1p(math.exp(-0.3)), abs=1e-12)


def test_probabilities_are_clamped_before_the_log():
    # scale 20: the neighbour's probability 1 / (1 + e^12) = 6.1e-6 is clamped to 1e-5; the instance term is not.
    sim = torch.tensor([[0.9, 0.3, 0.0]], dtype=torch.float64, requires_grad=True)
    camids, memory_camids, slots = torch.tensor([0]), torch.tensor([0, 0, 1]), torch.tensor([0])
    intra, _ = camera_aware_neighbourhood_loss(sim, camids, memory_camids, slots, scale=20.0, eps=0.8)
    assert intra.item() == pytest.approx(-math.log(1e-5) + math.log1p(math.exp(-12.0)), abs=1e-12)
    (grad,) = torch.autograd.grad(intra, sim)
    # Only the instance term passes a gradient: d/dsim of log(1 + e^(-20 (s0 - s1))).
    p1 = 1.0 / (1.0 + math.exp(12.0))
    assert grad[0].tolist() == pytest.approx([-20 * p1, 20 * p1, 0.0], abs=1e-12)


def test_hand_worked_camera_agnostic_example_uses_a_strict_threshold():
    sim = torch.tensor([[0.9, 0.5, 0.4, 0.1]], dtype=torch.float64)
    loss = camera_agnostic_neighbourhood_loss(sim, torch.tensor([0]), scale=1.0, eps=0.8)
    # Best non-self 0.5: 0.4 is not > 0.8 * 0.5, so slot 1 is the only neighbour; one softmax over all four slots.
    log_norm = math.log(sum(math.exp(v) for v in (0.9, 0.5, 0.4, 0.1)))
    assert loss.item() == pytest.approx(-(0.5 - log_norm) - (0.9 - log_norm), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("scale", "eps"), [(10.0, 0.8), (30.0, 0.5), (2.0, 0.95)])
def test_camera_aware_matches_the_loop_reference(seed, scale, eps):
    sim, camids, memory_camids, slots = random_problem(seed)
    sim.requires_grad_(True)
    intra, inter = camera_aware_neighbourhood_loss(sim, camids, memory_camids, slots, scale=scale, eps=eps)
    ref_intra, ref_inter = reference_losses(sim, camids, memory_camids, slots, scale=scale, eps=eps)
    torch.testing.assert_close(torch.stack([intra, inter]), torch.stack([ref_intra, ref_inter]), rtol=0, atol=1e-10)
    grad = torch.autograd.grad(0.7 * intra + 0.3 * inter, sim)[0]
    ref_grad = torch.autograd.grad(0.7 * ref_intra + 0.3 * ref_inter, sim)[0]
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_camera_agnostic_matches_the_loop_reference(seed):
    sim, camids, memory_camids, slots = random_problem(seed)
    sim.requires_grad_(True)
    loss = camera_agnostic_neighbourhood_loss(sim, slots, scale=10.0, eps=0.8)
    ref, _ = reference_losses(sim, camids, memory_camids, slots, scale=10.0, eps=0.8, camera_aware=False)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.autograd.grad(loss, sim)[0], torch.autograd.grad(ref, sim)[0], rtol=0, atol=1e-10)


def test_a_batch_may_hold_one_slot_twice():
    sim, camids, memory_camids, slots = random_problem(7)
    sim, camids, slots = torch.cat([sim, sim[:2]]), torch.cat([camids, camids[:2]]), torch.cat([slots, slots[:2]])
    got = camera_aware_neighbourhood_loss(sim, camids, memory_camids, slots, scale=10.0, eps=0.8)
    ref = reference_losses(sim, camids, memory_camids, slots, scale=10.0, eps=0.8)
    torch.testing.assert_close(torch.stack(got), torch.stack(ref), rtol=0, atol=1e-10)


def test_gradient_of_any_sign_and_a_second_backward():
    sim, camids, memory_camids, slots = random_problem(5)
    sim.requires_grad_(True)
    intra, inter = camera_aware_neighbourhood_loss(sim, camids, memory_camids, slots, scale=10.0, eps=0.8)
    ref_intra, ref_inter = reference_losses(sim, camids, memory_camids, slots, scale=10.0, eps=0.8)
    objective, ref_objective = -intra + 0.5 * inter, -ref_intra + 0.5 * ref_inter  # opposite signs per group
    first = torch.autograd.grad(objective, sim, retain_graph=True)[0]
    second = torch.autograd.grad(objective, sim)[0]  # the first gradient's buffer is not reused
    ref_grad = torch.autograd.grad(ref_objective, sim)[0]
    torch.testing.assert_close(first, ref_grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(second, ref_grad, rtol=0, atol=1e-10)


def test_gradcheck_float64():
    sim, camids, memory_camids, slots = random_problem(3, batch=4, num_slots=12)
    sim.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s: camera_aware_neighbourhood_loss(s, camids, memory_camids, slots, scale=10.0, eps=0.8), (sim,)
    )
    assert torch.autograd.gradcheck(
        lambda s: camera_agnostic_neighbourhood_loss(s, slots, scale=10.0, eps=0.8), (sim,)
    )


def test_rows_without_neighbours_are_left_out_and_never_nan():
    # Row 0: its camera holds only its own slot (no intra candidate). Row 1: every cosine negative (no neighbour
    # anywhere, since best <= 0). Row 2 has both kinds of neighbours.
    sim = torch.tensor(
        [[0.9, 0.2, 0.1, 0.3, 0.2], [-0.1, -0.5, -0.2, -0.3, -0.4], [0.1, 0.6, 0.7, 0.65, 0.2]],
        dtype=torch.float64,
        requires_grad=True,
    )
    memory_camids, slots = torch.tensor([0, 1, 1, 2, 2]), torch.tensor([0, 1, 2])
    camids = memory_camids[slots]
    intra, inter = camera_aware_neighbourhood_loss(sim, camids, memory_camids, slots, scale=10.0, eps=0.8)
    ref_intra, ref_inter = reference_losses(sim, camids, memory_camids, slots, scale=10.0, eps=0.8)
    torch.testing.assert_close(torch.stack([intra, inter]), torch.stack([ref_intra, ref_inter]), rtol=0, atol=1e-12)
    grad = torch.autograd.grad(intra + inter, sim)[0]
    assert torch.isfinite(grad).all()

    # No row has any neighbour: both neighbour terms are 0, intra is the instance term alone, gradients finite.
    negative = -torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    negative.requires_grad_(True)
    intra, inter = camera_aware_neighbourhood_loss(negative, camids, memory_camids, slots, scale=10.0, eps=0.8)
    assert inter.item() == 0.0
    _, ref_inter = reference_losses(negative, camids, memory_camids, slots, scale=10.0, eps=0.8)
    assert ref_inter.item() == 0.0
    own_camera = memory_camids[None, :] == camids[:, None]  # (3, 5)
    log_p = torch.log_softmax((10 * negative).masked_fill(~own_camera, -math.inf), dim=1)
    instance = -log_p[torch.arange(3), slots].mean()
    torch.testing.assert_close(intra, instance, rtol=0, atol=1e-12)
    assert torch.isfinite(torch.autograd.grad(intra + inter, negative)[0]).all()
    agnostic = camera_agnostic_neighbourhood_loss(negative, slots, scale=10.0, eps=0.8)
    assert torch.isfinite(agnostic)


def test_float32_at_scale_and_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(16, 64, generator=g, requires_grad=True)
    memory = F.normalize(torch.randn(500, 64, generator=g), dim=1)
    memory_camids = torch.randint(0, 6, (500,), generator=g)
    slots = torch.randperm(500, generator=g)[:16]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = F.normalize(features, dim=1) @ memory.T
        assert sim.dtype == torch.bfloat16
        intra, inter = camera_aware_neighbourhood_loss(
            sim, memory_camids[slots], memory_camids, slots, scale=10.0, eps=0.8
        )
        agnostic = camera_agnostic_neighbourhood_loss(sim, slots, scale=10.0, eps=0.8)
    assert intra.dtype == inter.dtype == agnostic.dtype == torch.float32
    (intra + inter + agnostic).backward()
    assert torch.isfinite(torch.stack([intra, inter, agnostic])).all()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


@pytest.mark.parametrize(("scale", "eps"), [(0.0, 0.8), (10.0, 1.5), (10.0, -0.1)])
def test_bad_numbers_are_rejected(scale, eps):
    sim, camids, memory_camids, slots = random_problem(0)
    with pytest.raises(ValueError, match="scale|eps"):
        camera_aware_neighbourhood_loss(sim, camids, memory_camids, slots, scale=scale, eps=eps)


def test_neighbour_statistics_by_hand():
    """Three rows against six slots (cameras 0 0 0 1 1 1, identities 7 7 8 7 8 8), eps 0.8."""
    memory_camids, memory_pids = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([7, 7, 8, 7, 8, 8])
    slots = torch.tensor([0, 5, 2])
    sim = torch.tensor(
        [
            [1.0, 0.9, 0.5, 0.95, 0.85, 0.1],  # intra {1}: right; inter {3, 4}: one right
            [0.2, 0.1, 0.3, 0.6, 0.7, 1.0],  # intra {3, 4}: one right; inter {2}: right
            [0.3, 0.2, 1.0, -0.1, -0.2, -0.3],  # intra {0}: wrong, no other 8 in camera 0; inter: best <= 0, none
        ]
    )
    stats = neighbour_statistics(sim, memory_camids[slots], memory_camids, slots, memory_pids, eps=0.8)
    expected = {
        "intra_precision": (1 + 0.5 + 0) / 3,
        "inter_precision": (0.5 + 1) / 2,
        "intra_recall": (1 + 1) / 2,  # the third row has no other image of its identity in its camera
        "inter_recall": (1 + 1 + 0) / 3,
        "intra_neighbours": 4 / 3,
        "inter_neighbours": 1.0,
        "intra_empty": 0.0,
        "inter_empty": 1 / 3,
    }
    assert stats.keys() == expected.keys()
    for name, value in expected.items():
        assert stats[name].item() == pytest.approx(value), name
