"""Pseudo-labels for clustering methods: k-reciprocal Jaccard graph, DBSCAN, camera-aware proxies, diagnostics.

Everything here is a deterministic function of the features (and cameras): the same features give the same
pseudo-labels on every process and after a resume, so a method may recompute them on each process or compute
them once and broadcast.
"""

from reid_accel.clustering.dbscan import canonical_labels, cluster_dbscan, jaccard_distance_graph
from reid_accel.clustering.diagnostics import cluster_diagnostics
from reid_accel.clustering.proxies import CameraProxies, camera_proxies, proxy_centroids

__all__ = [
    "CameraProxies",
    "camera_proxies",
    "canonical_labels",
    "cluster_dbscan",
    "cluster_diagnostics",
    "jaccard_distance_graph",
    "proxy_centroids",
]
