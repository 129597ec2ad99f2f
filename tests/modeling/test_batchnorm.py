import torch
from timm.layers import BatchNormAct2d
from torch import nn

from reid_accel.modeling.batchnorm import running_stats_frozen


def test_frozen_running_statistics_normalise_with_the_batch_and_touch_no_buffer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4), nn.Flatten(), nn.BatchNorm1d(16)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 3, 2, 2) * 3 + 1
    with running_stats_frozen(model):
        frozen = model(x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "no buffer changed"
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    torch.testing.assert_close(frozen, model(x))  # the same batch statistics as an ordinary training forward
    assert model[1].num_batches_tracked.item() == 1 and not torch.equal(
        model[1].running_mean, before["1.running_mean"]
    )


def test_frozen_running_statistics_in_eval_mode_still_use_the_batch():
    norm = nn.BatchNorm1d(3).eval()
    x = torch.randn(8, 3) * 5 + 2
    with running_stats_frozen(norm):
        out = norm(x)
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + norm.eps)
    torch.testing.assert_close(out, expected)
