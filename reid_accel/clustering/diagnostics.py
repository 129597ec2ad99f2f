"""What a clustering epoch produced, in numbers a log line, history.json and a curve can hold."""

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from reid_accel.clustering.proxies import camera_proxies


def cluster_diagnostics(
    labels: np.ndarray | torch.Tensor,
    camids: np.ndarray | torch.Tensor,
    true_pids: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """Cluster counts, the share of images left out, how often clusters span cameras, and (with identities) purity.

    The multi-camera fraction watches the camera trap: clusters that gather one camera's look-alikes instead of
    one person seen by several cameras. Purity and the adjusted Rand index compare the clustered images' labels
    with the true identities (images left out do not count; both are 0 when none is clustered).

    Args:
        labels: (N,) cluster of each image, -1 = not clustered.
        camids: (N,) 0-based camera of each image.
        true_pids: (N,) true identities, when known.

    Returns:
        ``clusters``, ``proxies`` (cluster, camera pairs), ``unclustered_fraction``, ``multi_camera_fraction``, and
        with `true_pids` also ``adjusted_rand_index`` and ``purity``; all floats.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu().numpy()
    proxies = camera_proxies(labels, camids)
    clustered = labels >= 0
    _, cameras_per_cluster = np.unique(proxies.cluster_of_proxy.numpy(), return_counts=True)  # (clusters,)
    num_clusters = len(cameras_per_cluster)
    out = {
        "clusters": float(num_clusters),
        "proxies": float(proxies.num_proxies),
        "unclustered_fraction": float(1.0 - clustered.mean()) if len(labels) else 0.0,
        "multi_camera_fraction": float((cameras_per_cluster > 1).mean()) if num_clusters else 0.0,
    }
    if true_pids is not None:
        truth = torch.as_tensor(true_pids, dtype=torch.int64).cpu().numpy()
        if truth.shape != labels.shape:
            raise ValueError(f"true_pids has shape {truth.shape}; expected {labels.shape}")
        mine, theirs = labels[clustered], truth[clustered]
        if len(mine):
            _, pid_index = np.unique(theirs, return_inverse=True)
            table = np.zeros((labels.max() + 1, pid_index.max() + 1), dtype=np.int64)  # (clusters, identities)
            np.add.at(table, (mine, pid_index), 1)
            out["adjusted_rand_index"] = float(adjusted_rand_score(theirs, mine))
            out["purity"] = float(table.max(1).sum() / len(mine))
        else:
            out["adjusted_rand_index"] = out["purity"] = 0.0
    return out
