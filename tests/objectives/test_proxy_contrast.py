"""Proxy contrast losses against per-sample, per-camera loops written as the official codes run them."""

import pytest
import torch
import torch.nn.functional as F

from reid_accel.objectives import cluster_contrast_loss, offline_association_loss, online_association_loss


def loop_offline(features, memory, proxies, cluster_of_proxy, camids, temperature, num_negatives):
    inputs = F.normalize(features, dim=1) @ memory.T / temperature
    total = 0.0
    for camera in torch.unique(camids):
        rows = (camids == camera).nonzero().flatten().tolist()
        loss = 0.0
        for i in rows:
            positives = (cluster_of_proxy == cluster_of_proxy[proxies[i]]).nonzero().flatten()
            masked = inputs[i].detach().clone()
            masked[positives] = 1e4
            chosen = torch.sort(masked)[1][-num_negatives - len(positives) :]
            target = torch.zeros(len(chosen))
            target[-len(positives) :] = 1.0 / len(positives)
            loss = loss - (F.log_softmax(inputs[i, chosen], dim=0) * target).sum()
        total = total + loss / len(rows)
    return total


def loop_online(features, memory, proxies, camera_of_proxy, camids, temperature, num_positives, num_negatives, w):
    unit = F.normalize(features, dim=1)
    score = unit @ memory.T
    inputs = score / temperature
    target = torch.zeros(num_negatives + num_positives)
    target[-num_positives:] = 1.0 / num_positives
    total = 0.0
    for camera in torch.unique(camids):
        rows = (camids == camera).nonzero().flatten().tolist()
        loss = 0.0
        for i in rows:
            sims = w * score[i].detach() + (1 - w) * memory[proxies[i]] @ memory.T
            tops = []
            for c in torch.unique(camera_of_proxy).tolist():
                inds = (camera_of_proxy == c).nonzero().flatten()
                tops.append(inds[sims[inds].argmax()])
            tops = torch.stack(tops)
            best = tops[torch.argsort(sims[tops])[-num_positives:]]
            sims[best] = 1e4
            chosen = torch.sort(sims)[1][-num_negatives - num_positives :]
            loss = loss - (F.log_softmax(inputs[i, chosen], dim=0) * target).sum()
        total = total + loss / len(rows)
    return total


def problem(seed=0, batch=24, num_proxies=70, dim=12, num_cameras=6, num_clusters=20):
    g = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(num_proxies, dim, generator=g, dtype=torch.float64), dim=1)
    cluster_of_proxy = torch.sort(torch.randint(0, num_clusters, (num_proxies,), generator=g))[0]
    camera_of_proxy = torch.arange(num_proxies) % num_cameras
    proxies = torch.randint(0, num_proxies, (batch,), generator=g)
    camids = camera_of_proxy[proxies]
    features = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return features, memory, proxies, cluster_of_proxy, camera_of_proxy, camids


def value_and_grad(loss_fn, features):
    features = features.clone().requires_grad_(True)
    loss = loss_fn(features)
    (grad,) = torch.autograd.grad(loss, features)
    return loss.detach().double(), grad.double()


@pytest.mark.parametrize(("num_negatives", "num_proxies"), [(50, 70), (10, 70), (50, 30)])
def test_offline_matches_the_loop(num_negatives, num_proxies):
    features, memory, proxies, clusters, _, camids = problem(num_proxies=num_proxies)
    ours = value_and_grad(
        lambda x: offline_association_loss(
            x.float(), memory.float(), proxies, clusters, camids, temperature=0.07, num_negatives=num_negatives
        ),
        features,
    )
    theirs = value_and_grad(
        lambda x: loop_offline(x, memory, proxies, clusters, camids, 0.07, num_negatives), features
    )
    assert ours[0].dtype == torch.float64  # compared in float64; our loss itself is float32
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("num_positives", "num_negatives", "seed"), [(3, 50, 0), (2, 20, 1), (3, 50, 2)])
def test_online_matches_the_loop(num_positives, num_negatives, seed):
    features, memory, proxies, _, cameras, camids = problem(seed=seed)
    ours = value_and_grad(
        lambda x: online_association_loss(
            x.float(),
            memory.float(),
            proxies,
            cameras,
            camids,
            num_positives=num_positives,
            num_negatives=num_negatives,
        ),
        features,
    )
    theirs = value_and_grad(
        lambda x: loop_online(x, memory, proxies, cameras, camids, 0.07, num_positives, num_negatives, 0.15), features
    )
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-6)


def test_losses_sum_camera_means():
    """Two identical samples from two cameras count twice as much as two from one camera."""
    features, memory, proxies, clusters, _, _ = problem(batch=2)
    features = features[[0, 0]].float()
    proxies = proxies[[0, 0]]
    one = offline_association_loss(features, memory.float(), proxies, clusters, torch.tensor([1, 1]))
    two = offline_association_loss(features, memory.float(), proxies, clusters, torch.tensor([1, 4]))
    torch.testing.assert_close(two, 2 * one)


def test_cluster_contrast_is_cross_entropy_over_all_centroids():
    features, memory, _, _, _, _ = problem()
    labels = torch.randint(0, len(memory), (len(features),), generator=torch.Generator().manual_seed(3))

    def loop(x):
        unit = F.normalize(x, dim=1)
        return sum(-F.log_softmax(unit[i] @ memory.T / 0.05, dim=0)[labels[i]] for i in range(len(x))) / len(x)

    ours = value_and_grad(lambda x: cluster_contrast_loss(x.float(), memory.float(), labels), features)
    theirs = value_and_grad(loop, features)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-6)


def test_losses_run_in_float32_under_half_inputs():
    features, memory, proxies, clusters, cameras, camids = problem()
    half = features.bfloat16().requires_grad_(True)
    for loss in (
        offline_association_loss(half, memory.bfloat16(), proxies, clusters, camids),
        online_association_loss(half, memory.bfloat16(), proxies, cameras, camids, num_negatives=20),
        cluster_contrast_loss(half, memory.bfloat16(), proxies),
    ):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        assert half.grad.dtype == torch.bfloat16


def test_online_refusals():
    features, memory, proxies, _, cameras, camids = problem(num_proxies=40)
    with pytest.raises(ValueError, match="40 proxies are fewer than num_positives \\+ num_negatives = 53"):
        online_association_loss(features, memory, proxies, cameras, camids)
    features, memory, proxies, _, cameras, camids = problem()
    with pytest.raises(ValueError, match=r"camera\(s\) \[6\] have no proxy"):
        online_association_loss(features, memory, proxies, cameras, camids, num_cameras=7)
    with pytest.raises(ValueError, match="2 cameras are fewer than num_positives=3"):
        online_association_loss(features, memory, proxies, cameras % 2, camids % 2)
    with pytest.raises(ValueError, match="split by camera"):
        online_association_loss(features, memory, proxies, torch.full_like(cameras, -1), camids)
    with pytest.raises(ValueError, match="one entry per sample"):
        online_association_loss(features, memory, proxies[:-1], cameras, camids)
