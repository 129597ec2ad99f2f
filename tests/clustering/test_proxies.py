import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from reid_accel.clustering import camera_proxies, cluster_diagnostics, proxy_centroids

LABELS = np.array([1, 0, -1, 1, 0, 2, 1, -1, 2])
CAMIDS = np.array([0, 2, 1, 1, 2, 0, 0, 0, 0])


def test_proxies_are_numbered_by_cluster_then_camera():
    proxies = camera_proxies(LABELS, torch.as_tensor(CAMIDS))
    # pairs: (0, 2) -> 0, (1, 0) -> 1, (1, 1) -> 2, (2, 0) -> 3
    assert proxies.proxy_of_image.tolist() == [1, 0, -1, 2, 0, 3, 1, -1, 3]
    assert proxies.cluster_of_proxy.tolist() == [0, 1, 1, 2]
    assert proxies.camera_of_proxy.tolist() == [2, 0, 1, 0]
    assert proxies.num_proxies == 4 and proxies.proxy_of_image.dtype == torch.int64


def test_one_proxy_per_cluster_without_the_camera_split():
    proxies = camera_proxies(torch.as_tensor(LABELS), CAMIDS, split_by_camera=False)
    assert proxies.proxy_of_image.tolist() == [1, 0, -1, 1, 0, 2, 1, -1, 2]
    assert proxies.cluster_of_proxy.tolist() == [0, 1, 2]
    assert proxies.camera_of_proxy.tolist() == [-1, -1, -1]


def test_bad_proxy_inputs():
    with pytest.raises(ValueError, match="must be equal"):
        camera_proxies(LABELS, CAMIDS[:-1])
    with pytest.raises(ValueError, match="0-based"):
        camera_proxies(LABELS, CAMIDS - 1)


def test_centroids_are_normalised_means_of_each_proxy():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(9, 5, generator=generator)
    proxies = camera_proxies(LABELS, CAMIDS)
    centroids = proxy_centroids(features, proxies.proxy_of_image, proxies.num_proxies)
    expected = torch.stack([features[proxies.proxy_of_image == p].mean(0) for p in range(proxies.num_proxies)])
    torch.testing.assert_close(centroids, F.normalize(expected, dim=1))
    assert centroids.dtype == torch.float32
    again = proxy_centroids(features, proxies.proxy_of_image, proxies.num_proxies)
    assert torch.equal(centroids, again)
    double = proxy_centroids(features.double(), proxies.proxy_of_image, proxies.num_proxies)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double, F.normalize(expected.double(), dim=1))
    with pytest.raises(ValueError, match="at least one image"):
        proxy_centroids(features, proxies.proxy_of_image, proxies.num_proxies + 1)


def test_diagnostics_without_and_with_identities():
    stats = cluster_diagnostics(LABELS, CAMIDS)
    # clusters 0 (camera 2), 1 (cameras 0 and 1), 2 (camera 0): one of three spans cameras
    assert stats == {"clusters": 3.0, "proxies": 4.0, "unclustered_fraction": 2 / 9, "multi_camera_fraction": 1 / 3}
    truth = np.array([5, 6, 7, 5, 6, 8, 9, 7, 8])  # cluster 1 mixes identities 5 and 9
    stats = cluster_diagnostics(torch.as_tensor(LABELS), CAMIDS, truth)
    assert stats["purity"] == pytest.approx(6 / 7)
    clustered = LABELS >= 0
    assert stats["adjusted_rand_index"] == pytest.approx(adjusted_rand_score(truth[clustered], LABELS[clustered]))
    perfect = cluster_diagnostics(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 0]), np.array([3, 3, 4, 4]))
    assert perfect["purity"] == perfect["adjusted_rand_index"] == 1.0 and perfect["multi_camera_fraction"] == 0.5
    nothing = cluster_diagnostics(np.full(3, -1), np.zeros(3, dtype=int), np.arange(3))
    assert nothing == {
        "clusters": 0.0,
        "proxies": 0.0,
        "unclustered_fraction": 1.0,
        "multi_camera_fraction": 0.0,
        "adjusted_rand_index": 0.0,
        "purity": 0.0,
    }
