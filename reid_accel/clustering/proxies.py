"""Camera-aware proxies (CAP, O2CAP): each cluster split by camera, one memory row per (cluster, camera) pair.

A cluster gathers one identity's images from several cameras; its images from one camera look alike for reasons
that have nothing to do with identity (light, angle, background). One proxy per (cluster, camera) lets the losses
pull a sample towards its cluster's proxies in *other* cameras, the invariance the method learns. With
``split_by_camera=False`` a cluster is one proxy: plain cluster contrast.
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class CameraProxies:
    """The proxies of one epoch's pseudo-labels.

    Attributes:
        proxy_of_image: (N,) int64 proxy of each image; -1 for an image left out of the clusters.
        cluster_of_proxy: (M,) int64 cluster of each proxy (non-decreasing).
        camera_of_proxy: (M,) int64 camera of each proxy; -1 when proxies are not split by camera.
    """

    proxy_of_image: Tensor
    cluster_of_proxy: Tensor
    camera_of_proxy: Tensor

    @property
    def num_proxies(self) -> int:
        return len(self.cluster_of_proxy)


def camera_proxies(
    labels: np.ndarray | Tensor, camids: np.ndarray | Tensor, *, split_by_camera: bool = True
) -> CameraProxies:
    """Proxies numbered by cluster, then camera, ascending (the order O2CAP numbers them in).

    Args:
        labels: (N,) cluster of each image, -1 = not clustered.
        camids: (N,) 0-based camera of each image.
        split_by_camera: one proxy per (cluster, camera) pair; False: one per cluster.

    Returns:
        The images' proxies and each proxy's cluster and camera, on the CPU.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    camids = torch.as_tensor(camids, dtype=torch.int64).cpu()
    if labels.shape != camids.shape or labels.ndim != 1:
        raise ValueError(f"labels {tuple(labels.shape)} and camids {tuple(camids.shape)} must be equal (N,) vectors")
    if len(camids) and int(camids.min()) < 0:
        raise ValueError("camids must be 0-based camera indices, got a negative one")
    clustered = labels >= 0
    num_cameras = int(camids.max()) + 1 if split_by_camera and len(camids) else 1
    key = labels[clustered] * num_cameras + (camids[clustered] if split_by_camera else 0)  # (n,)
    pairs, inverse = torch.unique(key, sorted=True, return_inverse=True)  # (M,), (n,)
    proxy_of_image = torch.full_like(labels, -1)
    proxy_of_image[clustered] = inverse
    camera_of_proxy = pairs % num_cameras if split_by_camera else torch.full_like(pairs, -1)
    return CameraProxies(proxy_of_image, pairs // num_cameras, camera_of_proxy)


def proxy_centroids(features: Tensor, proxy_of_image: Tensor, num_proxies: int) -> Tensor:
    """L2-normalised mean feature of each proxy: the memory a clustering method starts each epoch from.

    The means are a sparse (M, N) averaging matrix times the features, multiplied by scipy on the CPU, where each
    row's sum runs in a fixed order (a scatter-add of floats on a GPU does not), so every process gets the same
    bits.

    Args:
        features: (N, D) features of all images (any device).
        proxy_of_image: (N,) proxy of each image, -1 = none (ignored).
        num_proxies: M; every proxy must own at least one image.

    Returns:
        (M, D) unit rows, on the device and in the dtype of `features` (float32 for lower precisions).
    """
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    values = features.detach().to("cpu", dtype).numpy()  # (N, D)
    proxy = torch.as_tensor(proxy_of_image, dtype=torch.int64).cpu().numpy()
    if proxy.shape != (len(values),):
        raise ValueError(f"proxy_of_image has shape {proxy.shape}; expected ({len(values)},)")
    members = np.flatnonzero(proxy >= 0)
    counts = np.bincount(proxy[members], minlength=num_proxies)
    if len(counts) != num_proxies or not counts.all():
        raise ValueError(f"proxy_of_image must give each of the {num_proxies} proxies at least one image")
    weight = (1.0 / counts[proxy[members]]).astype(values.dtype)
    average = scipy.sparse.csr_matrix((weight, (proxy[members], members)), shape=(num_proxies, len(values)))
    means = torch.from_numpy(np.asarray(average @ values))  # (M, D)
    return F.normalize(means, dim=1).to(features.device)
