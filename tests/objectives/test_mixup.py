"""Cross-domain mixup: pixel mixing, the virtual-class loss (hand-worked and float64 reference), lambda sampling."""

import math

import pytest
import torch

from reid_accel.objectives import mix_pixels, mixup_virtual_class_loss, sample_mixup_lambda


def reference_loss(features, weight, memory_rows, labels, lam):
    """Sample by sample: logits [f . w_c for each class] + [(f . m) * ||w_y||], soft target lam * y + (1 - lam) * C."""
    total = 0.0
    for f, m, y in zip(features, memory_rows, labels, strict=True):
        logits = torch.cat([weight @ f, ((f * m).sum() * weight[y].detach().norm())[None]])
        log_p = logits - torch.logsumexp(logits, 0)
        total = total - lam * log_p[y] - (1 - lam) * log_p[-1]
    return total / len(labels)


def test_hand_worked_example():
    features = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0], [0.0, 3.0], [4.0, 0.0]], dtype=torch.float64)  # ||w_1|| = 3
    memory_rows = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    loss = mixup_virtual_class_loss(features, weight, memory_rows, torch.tensor([1]), 0.25)
    # Logits: classes 1, 6, 4; virtual (0.6 + 1.6) * 3 = 6.6.
    log_norm = math.log(math.exp(1) + math.exp(6) + math.exp(4) + math.exp(6.6))
    expected = 0.25 * (log_norm - 6.0) + 0.75 * (log_norm - 6.6)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0])
def test_matches_reference_with_the_norm_taken_without_gradient(lam):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    memory_rows = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 3, 1, 3, 2])
    loss = mixup_virtual_class_loss(features, weight, memory_rows, labels, lam)
    ref = reference_loss(features, weight, memory_rows, labels, lam)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(loss, (features, weight))
    ref_grads = torch.autograd.grad(ref, (features, weight))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_gradcheck_float64():
    # With respect to the features only: the weight's gradient deliberately ignores ||W[y]|| (checked above).
    g = torch.Generator().manual_seed(1)
    features = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, generator=g, dtype=torch.float64)
    memory_rows = torch.randn(3, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([4, 0, 2])
    assert torch.autograd.gradcheck(
        lambda f: mixup_virtual_class_loss(f, weight, memory_rows, labels, 0.6), (features,)
    )


def test_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(4, 16, generator=g).bfloat16().requires_grad_(True)
    weight = torch.randn(10, 16, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mixup_virtual_class_loss(features, weight, torch.randn(4, 16, generator=g), torch.arange(4), 0.3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(weight.grad).all()


def test_mix_pixels_replaces_the_source_half_only():
    source, target = torch.full((2, 3, 4, 2), 2.0), torch.full((2, 3, 4, 2), -1.0)
    mixed = mix_pixels(torch.cat([source, target]), num_source=2, lam=0.25)
    torch.testing.assert_close(mixed[:2], torch.full_like(source, 0.25 * 2.0 + 0.75 * -1.0))
    torch.testing.assert_close(mixed[2:], target)


def test_mix_pixels_pairs_image_i_with_target_i_and_keeps_channels_last():
    pixels = torch.randn(4, 3, 8, 4).contiguous(memory_format=torch.channels_last)
    mixed = mix_pixels(pixels, num_source=2, lam=0.6)
    torch.testing.assert_close(mixed[1], 0.6 * pixels[1] + 0.4 * pixels[3])
    assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_mix_pixels_needs_equal_halves():
    with pytest.raises(ValueError, match="equal source and target halves"):
        mix_pixels(torch.randn(5, 3, 4, 2), num_source=3, lam=0.5)


def test_lambda_is_reproducible_per_generator_and_beta_distributed():
    draws = [sample_mixup_lambda(0.6, generator=torch.Generator().manual_seed(s)) for s in range(2000)]
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert sample_mixup_lambda(0.6, generator=torch.Generator().manual_seed(5)) == draws[5]
    assert len(set(draws)) == len(draws)
    # Beta(0.6, 0.6): mean 1/2, variance 1 / (4 * (2 * 0.6 + 1)) = 0.1136.
    mean = sum(draws) / len(draws)
    variance = sum((d - mean) ** 2 for d in draws) / len(draws)
    assert mean == pytest.approx(0.5, abs=0.03)
    assert variance == pytest.approx(1 / 8.8, abs=0.01)
    with pytest.raises(ValueError, match="alpha"):
        sample_mixup_lambda(0.0)
