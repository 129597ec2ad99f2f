"""CAILObjective: which terms enter the total in which epoch, and that zero-weight terms carry no gradient."""

import pytest
import torch
import torch.nn.functional as F

from reid_accel.config import ExperimentConfig, ObjectiveConfig
from reid_accel.methods.cail import build_objective
from reid_accel.objectives import (
    CAILObjective,
    camera_agnostic_neighbourhood_loss,
    camera_aware_neighbourhood_loss,
    mixup_virtual_class_loss,
)

NUM_CLASSES, DIM, NUM_SLOTS = 5, 16, 60


def published(*, target_branch: bool = True, **overrides) -> CAILObjective:
    """The objective of the published recipe (the config's defaults), with `overrides` of objective keys."""
    return build_objective(ExperimentConfig(objective=ObjectiveConfig(**overrides)), two_domains=target_branch)


def make_inputs(seed=0, batch=6):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(NUM_CLASSES, DIM, generator=g, requires_grad=True)
    source_features = torch.randn(batch, DIM, generator=g, requires_grad=True)
    memory_camids = torch.randint(0, 3, (NUM_SLOTS,), generator=g)
    slots = torch.randperm(NUM_SLOTS, generator=g)[:batch]
    return {
        "source_features": source_features,
        "source_logits": source_features @ weight.T,
        "source_labels": torch.randint(0, NUM_CLASSES, (batch,), generator=g),
        "classifier_weight": weight,
        "target_features": torch.randn(batch, DIM, generator=g, requires_grad=True),
        "target_camids": memory_camids[slots],
        "target_slots": slots,
        "memory_features": F.normalize(torch.randn(NUM_SLOTS, DIM, generator=g), dim=1),
        "memory_camids": memory_camids,
    }


def target_sim(inputs):
    return F.normalize(inputs["target_features"], dim=1) @ inputs["memory_features"].T


def aware_losses(inputs):
    return camera_aware_neighbourhood_loss(
        target_sim(inputs), inputs["target_camids"], inputs["memory_camids"], inputs["target_slots"], scale=10, eps=0.8
    )


def test_single_domain_baseline_is_plain_cross_entropy():
    inputs = make_inputs()
    source_only = {k: inputs[k] for k in ("source_features", "source_logits", "source_labels", "classifier_weight")}
    total, parts = published(target_branch=False)(epoch=40, **source_only)
    ce = F.cross_entropy(inputs["source_logits"], inputs["source_labels"])
    torch.testing.assert_close(total, ce)
    assert set(parts) == {"source_ce", "total", "source_accuracy"}
    accuracy = (inputs["source_logits"].argmax(1) == inputs["source_labels"]).float().mean()
    torch.testing.assert_close(parts["source_accuracy"], accuracy)


def test_target_losses_are_logged_but_carry_no_gradient_before_they_start():
    inputs = make_inputs()
    total, parts = published()(epoch=5, **inputs)
    intra, inter = aware_losses(inputs)
    assert set(parts) == {"source_ce", "intra", "inter", "total", "source_accuracy"}
    torch.testing.assert_close(parts["intra"], intra.detach())
    torch.testing.assert_close(parts["inter"], inter.detach())
    torch.testing.assert_close(total, F.cross_entropy(inputs["source_logits"], inputs["source_labels"]))
    total.backward()
    assert inputs["target_features"].grad is None
    assert not parts["intra"].requires_grad


@pytest.mark.parametrize(("epoch", "w_intra", "w_inter"), [(11, 1.0, 0.0), (31, 1.0, 0.5)])
def test_weighted_total_and_its_gradient(epoch, w_intra, w_inter):
    inputs = make_inputs()
    total, parts = published()(epoch=epoch, **inputs)
    intra, inter = aware_losses(inputs)
    ce = F.cross_entropy(inputs["source_logits"], inputs["source_labels"])
    expected = ce + w_intra * intra + w_inter * inter
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["total"], expected.detach())
    (grad,) = torch.autograd.grad(total, inputs["target_features"], retain_graph=True)
    (expected_grad,) = torch.autograd.grad(w_intra * intra + w_inter * inter, inputs["target_features"])
    torch.testing.assert_close(grad, expected_grad)


def test_mixup_replaces_the_source_cross_entropy():
    inputs = make_inputs()
    total, parts = published()(epoch=2, lam=0.3, **inputs)
    mixup = mixup_virtual_class_loss(
        inputs["source_features"],
        inputs["classifier_weight"],
        inputs["memory_features"][inputs["target_slots"]],
        inputs["source_labels"],
        0.3,
    )
    assert "source_ce" not in parts
    torch.testing.assert_close(parts["mixup"], mixup.detach())
    torch.testing.assert_close(total, mixup)
    with pytest.raises(ValueError, match="mixup is off"):
        published()(epoch=1, lam=0.3, **inputs)
    with pytest.raises(ValueError, match="mixup is off"):
        published(mixup=False)(epoch=5, lam=0.3, **inputs)


def test_camera_agnostic_mode():
    inputs = make_inputs()
    total, parts = published(neighbour_mode="camera_agnostic")(epoch=11, **inputs)
    agnostic = camera_agnostic_neighbourhood_loss(target_sim(inputs), inputs["target_slots"], scale=10, eps=0.8)
    assert set(parts) == {"source_ce", "agnostic", "total", "source_accuracy"}
    torch.testing.assert_close(
        total, F.cross_entropy(inputs["source_logits"], inputs["source_labels"]) + 0.1 * agnostic
    )


def test_bf16_autocast_gives_finite_float32_losses():
    inputs = make_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = inputs["source_features"] @ inputs["classifier_weight"].T
        assert logits.dtype == torch.bfloat16
        total, parts = published()(
            epoch=31,
            lam=0.4,
            **{**inputs, "source_logits": logits, "target_features": inputs["target_features"].bfloat16()},
        )
    assert total.dtype == torch.float32
    assert all(torch.isfinite(v) for v in parts.values())
    total.backward()
    assert torch.isfinite(inputs["target_features"].grad).all()


def test_missing_target_inputs_are_named():
    inputs = make_inputs()
    del inputs["memory_camids"]
    with pytest.raises(ValueError, match="memory_camids"):
        published()(epoch=11, **inputs)


def test_known_identities_add_neighbour_diagnostics_without_changing_the_loss():
    inputs = make_inputs()
    pids = torch.arange(NUM_SLOTS) // 4
    plain, _ = published()(epoch=11, **inputs)
    total, parts = published()(epoch=11, memory_pids=pids, **inputs)
    torch.testing.assert_close(total, plain)
    assert {"neighbours/intra_precision", "neighbours/inter_recall", "neighbours/inter_empty"} <= set(parts)
    _, agnostic = published(neighbour_mode="camera_agnostic")(epoch=11, memory_pids=pids, **inputs)
    assert {k for k in agnostic if k.startswith("neighbours/")} == {
        f"neighbours/all_{name}" for name in ("precision", "recall", "neighbours", "empty")
    }
