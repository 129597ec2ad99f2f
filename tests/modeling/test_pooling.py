import pytest
import torch
import torch.nn.functional as F

from reid_accel.modeling import GeM


def test_p_one_is_average_pooling_and_large_p_approaches_max():
    fmap = torch.rand(2, 5, 4, 3, generator=torch.Generator().manual_seed(0)) + 0.1
    torch.testing.assert_close(GeM(p=1.0)(fmap), fmap.mean((2, 3)))
    torch.testing.assert_close(GeM(p=1.0)(fmap), F.adaptive_avg_pool2d(fmap, 1).flatten(1))
    torch.testing.assert_close(GeM(p=200.0, trainable=False)(fmap), fmap.amax((2, 3)), rtol=0.02, atol=0)


def test_p_three_by_hand_and_the_eps_floor():
    fmap = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])  # negatives and zeros are floored at eps
    expected = ((1.0 + 8.0 + 2e-18) / 4) ** (1 / 3)
    assert GeM()(fmap).item() == pytest.approx(expected)


def test_trainable_p_gets_a_gradient_and_is_saved():
    gem = GeM()
    fmap = torch.rand(3, 4, 2, 2) + 0.5
    gem(fmap).sum().backward()
    assert [name for name, _ in gem.named_parameters()] == ["p"] and gem.p.grad.abs().item() > 0
    fixed = GeM(p=4.0, trainable=False)
    assert list(fixed.parameters()) == [] and torch.equal(fixed.state_dict()["p"], torch.tensor([4.0]))
    restored = GeM(p=1.0)
    restored.load_state_dict({"p": torch.tensor([2.5])})
    assert restored.p.item() == 2.5 and "p=2.5000" in repr(restored)
    with pytest.raises(ValueError, match="p=0"):
        GeM(p=0)
