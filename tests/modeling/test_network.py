"""CrossDomainNetwork: one backbone pass, and which half of the batch the BNNeck's running statistics come from."""

import copy

import pytest
import torch
import torch.nn.functional as F

from reid_accel.modeling import CrossDomainNetwork, ReIDEncoder


@pytest.fixture
def network():
    torch.manual_seed(0)
    return CrossDomainNetwork(ReIDEncoder("test_resnet"), num_classes=7).train()


def pooled_features(network, pixel_values):
    """What the network pools, from a copy (so the original's BatchNorm statistics stay untouched)."""
    encoder = copy.deepcopy(network.encoder)
    with torch.no_grad():
        return encoder.forward_features(pixel_values).mean(dim=(2, 3))  # (B, D)


def test_target_half_alone_updates_the_neck_running_statistics(network):
    x = torch.randn(8, 3, 64, 32)
    pooled = pooled_features(network, x)
    neck = network.encoder.neck
    mean0, var0 = neck.running_mean.clone(), neck.running_var.clone()
    backbone_calls = []
    network.encoder.backbone.conv1.register_forward_hook(lambda *args: backbone_calls.append(1))

    out = network(x, num_source=4)

    assert len(backbone_calls) == 1  # one pass over [source | target]: backbone BN sees both halves
    source, target = pooled[:4], pooled[4:]
    torch.testing.assert_close(neck.running_mean, 0.9 * mean0 + 0.1 * target.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(neck.running_var, 0.9 * var0 + 0.1 * target.var(0), rtol=1e-4, atol=1e-5)
    expected_source = F.batch_norm(source, None, None, neck.weight, neck.bias, training=True)
    expected_target = F.batch_norm(target, None, None, neck.weight, neck.bias, training=True)
    torch.testing.assert_close(out["source_features"], expected_source, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["target_features"], expected_target, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["source_logits"], out["source_features"] @ network.classifier.weight.T)
    assert out["source_logits"].shape == (4, 7)


def test_source_batch_statistics_do_not_touch_the_running_statistics(network):
    neck = network.encoder.neck
    before = neck.running_mean.clone(), neck.running_var.clone(), neck.num_batches_tracked.clone()
    out = network(torch.randn(4, 3, 64, 32), num_source=4, source_neck="batch")
    assert out["target_features"].shape == (0, network.encoder.feature_dim)
    for now, then in zip((neck.running_mean, neck.running_var, neck.num_batches_tracked), before, strict=True):
        assert torch.equal(now, then)


def test_single_domain_baseline_updates_the_neck_from_the_source(network):
    x = torch.randn(4, 3, 64, 32)
    pooled = pooled_features(network, x)
    mean0 = network.encoder.neck.running_mean.clone()
    network(x, num_source=4, source_neck="train")
    expected = 0.9 * mean0 + 0.1 * pooled.mean(0)
    torch.testing.assert_close(network.encoder.neck.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_backbone_neck_and_classifier_but_not_the_neck_bias(network):
    out = network(torch.randn(8, 3, 64, 32), num_source=4)
    (out["source_logits"].logsumexp(1).sum() + out["target_features"].pow(2).sum()).backward()
    assert network.classifier.weight.grad is not None and network.encoder.neck.weight.grad is not None
    assert network.encoder.neck.bias.grad is None
    assert all(p.grad is not None for p in network.encoder.backbone.parameters())


def test_bad_arguments(network):
    with pytest.raises(ValueError, match="source_neck"):
        network(torch.randn(4, 3, 64, 32), num_source=2, source_neck="eval")
    with pytest.raises(ValueError, match="num_source"):
        network(torch.randn(4, 3, 64, 32), num_source=5)
