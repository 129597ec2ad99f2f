"""Camera-aware proxy cluster contrast (O2CAP, TIP 2022), and plain cluster contrast as its ablation.

No identity labels: every epoch the target's training images are embedded (test transform, each process a shard,
gathered), clustered (k-reciprocal Jaccard distances, DBSCAN; un-clustered images sit the epoch out), and each
cluster split by camera into proxies. The proxy memory restarts from the proxies' normalised mean features; each
step's images are P proxies x K images; the loss contrasts each image's BNNeck feature with the memory (offline
association: all proxies of its cluster; online association: the best proxy of each camera by a blended
similarity); after the optimizer step the memory moves towards the global batch's features, gathered from every
process in global order (CLUSTERING-METHODS.md). With `camera_proxy.proxies: cluster`, one centroid per cluster
and the cluster contrast loss: plain cluster contrast.

The epoch's pseudo-labels and the memory are the method's state, saved with every checkpoint: a run resumed
mid-epoch restores them as they were, never re-clustering from weights that have moved since. The clustering is
computed once, on the main process, from features identical on every process, and its labels broadcast;
Jaccard distances break ties by index and DBSCAN's labels are renumbered canonically, so nothing in it is random.
"""

from collections.abc import Sequence
from typing import Any

import torch
from accelerate.utils import broadcast
from torch import Tensor, nn

from reid_accel.clustering import (
    CameraProxies,
    camera_proxies,
    cluster_dbscan,
    cluster_diagnostics,
    jaccard_distance_graph,
    proxy_centroids,
)
from reid_accel.config import DomainConfig, ExperimentConfig
from reid_accel.data import ProxyBatchSampler, ReIDImageDataset
from reid_accel.errors import ConfigError
from reid_accel.methods.base import BuildInputs, Embed, GroupLoss, Method, MethodParts
from reid_accel.modeling import FeatureNetwork, ProxyMemory
from reid_accel.objectives import cluster_contrast_loss, offline_association_loss, online_association_loss

DIAGNOSTIC_PREFIX = "clusters/"  # the epoch's clustering diagnostics, as history.json and the curves name them


class ClusteringState(nn.Module):
    """The method's state, as buffers a checkpoint carries: the epoch's pseudo-labels and the proxy memory.

    Args:
        num_images: N, the target's training images.
        dim: feature dimension D.
    """

    def __init__(self, num_images: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("labels", torch.full((num_images,), -1, dtype=torch.long))  # (N,) -1: not clustered
        self.memory = ProxyMemory(0, dim)


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


class CameraProxy(Method):
    """O2CAP on the engine: per-epoch clustering, camera proxies, offline + online association, proxy memory."""

    name = "camera_proxy"

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.settings = cfg.camera_proxy
        self.state: ClusteringState | None = None
        self.sampler: ProxyBatchSampler | None = None
        self.embed_set: ReIDImageDataset | None = None
        self.camids: Tensor | None = None  # (N,) camera of each training image
        self.true_pids: Tensor | None = None  # (N,) identities the folder carries: diagnostics only
        self.num_cameras = 0
        self.proxies: CameraProxies | None = None
        self.device = torch.device("cpu")

    @property
    def two_domains(self) -> bool:
        return False

    @property
    def domains(self) -> dict[str, DomainConfig]:
        return {"data.target": self.cfg.data.target}

    def camera_setting(self, key: str) -> str | None:
        if self.settings.proxies == "camera":
            return "camera_proxy.proxies=camera (proxies=cluster with cross_camera=false trains without them)"
        if self.settings.cross_camera:
            return "camera_proxy.cross_camera=true"
        return None

    def build(self, inputs: BuildInputs) -> MethodParts:
        split = inputs.train_splits["data.target"]
        dataset = ReIDImageDataset(split, inputs.load_transform, preload=self.cfg.data.preload)
        self.embed_set = ReIDImageDataset(split, inputs.test_transform)
        self.camids = torch.tensor(dataset.camids, dtype=torch.long)
        self.num_cameras = int(self.camids.max()) + 1
        if self.cfg.train.neighbour_diagnostics:
            self.true_pids = torch.tensor(dataset.pids, dtype=torch.long)
        s = self.settings
        self.sampler = ProxyBatchSampler(
            inputs.layout,
            images_per_proxy=s.images_per_proxy,
            steps_per_epoch=s.steps_per_epoch,
            camids=self.camids,
            cross_camera=s.cross_camera,
            rank=inputs.rank,
            seed=self.cfg.train.seed,
        )
        self.state = ClusteringState(len(dataset), inputs.encoder.feature_dim)
        return MethodParts(dataset, self.sampler, FeatureNetwork(inputs.encoder), self.state)

    def to(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.state.to(device)

    def before_epoch(self, epoch: int, *, start_step: int, embed: Embed) -> dict[str, float]:
        """Cluster the target anew and restart the memory from the proxies' centroids; a run resumed mid-epoch
        keeps the pseudo-labels and memory its checkpoint restored."""
        if start_step == 0:
            features = embed(self.embed_set)  # (N, D), identical on every process
            labels = torch.zeros_like(self.state.labels)
            if _is_main_process():
                labels = self.cluster(features).to(labels.device)
            self.state.labels.copy_(broadcast(labels))
        self.proxies = camera_proxies(
            self.state.labels, self.camids, split_by_camera=self.settings.proxies == "camera"
        )
        self.check_proxies(self.proxies)
        if start_step == 0:
            self.state.memory.reset(proxy_centroids(features, self.proxies.proxy_of_image, self.proxies.num_proxies))
        self.sampler.set_proxies(self.proxies.proxy_of_image)
        p = self.proxies
        self.proxies = CameraProxies(
            p.proxy_of_image.to(self.device), p.cluster_of_proxy.to(self.device), p.camera_of_proxy.to(self.device)
        )
        diagnostics = cluster_diagnostics(self.state.labels, self.camids, self.true_pids)
        return {f"{DIAGNOSTIC_PREFIX}{name}": value for name, value in diagnostics.items()}

    def cluster(self, features: Tensor) -> Tensor:
        """(N,) pseudo-labels of the features: Jaccard distances, then DBSCAN; -1 = not clustered."""
        s = self.settings
        distance = jaccard_distance_graph(features, k1=s.k1, k2=s.k2)
        return torch.from_numpy(cluster_dbscan(distance, eps=s.eps, min_samples=s.min_samples))

    def check_proxies(self, proxies: CameraProxies) -> None:
        """Refuse, in one line saying what to change, a clustering the losses cannot train on."""
        s = self.settings
        per_step = self.cfg.data.batch_size // s.images_per_proxy
        looser = "a larger camera_proxy.eps or a smaller camera_proxy.min_samples"
        if proxies.num_proxies < per_step:
            raise ConfigError(
                f"the clustering gave {proxies.num_proxies} proxies, fewer than the {per_step} a step draws "
                f"(data.batch_size / camera_proxy.images_per_proxy); lower data.batch_size or try {looser}"
            )
        if s.proxies != "camera" or not s.online_weight:
            return
        needed = s.online_positives + s.num_negatives
        if proxies.num_proxies < needed:
            raise ConfigError(
                f"the clustering gave {proxies.num_proxies} proxies; online association needs at least {needed} "
                f"(camera_proxy.online_positives + camera_proxy.num_negatives): lower camera_proxy.num_negatives "
                f"or try {looser}"
            )
        empty = sorted(set(range(self.num_cameras)) - set(proxies.camera_of_proxy.tolist()))
        if empty:
            raise ConfigError(
                f"no cluster holds an image of camera(s) {empty}; online association needs a proxy in every "
                f"camera: try {looser}, or camera_proxy.online_weight=0"
            )

    def group_loss(self, outputs: Tensor, batch: dict[str, Tensor], *, epoch: int, step: int, group: int) -> GroupLoss:
        s, memory = self.settings, self.state.memory.features
        proxies = self.proxies.proxy_of_image[batch["index"]]  # (b,)
        camids = batch["camid"]
        components: dict[str, Tensor] = {}
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            if s.proxies == "cluster":
                total = components["cluster_contrast"] = cluster_contrast_loss(
                    outputs, memory, proxies, temperature=s.temperature
                )
            else:
                offline = components["offline"] = offline_association_loss(
                    outputs,
                    memory,
                    proxies,
                    self.proxies.cluster_of_proxy,
                    camids,
                    temperature=s.temperature,
                    num_negatives=s.num_negatives,
                )
                total = s.offline_weight * offline
                if s.online_weight:
                    online = components["online"] = online_association_loss(
                        outputs,
                        memory,
                        proxies,
                        self.proxies.camera_of_proxy,
                        camids,
                        temperature=s.temperature,
                        num_positives=s.online_positives,
                        num_negatives=s.num_negatives,
                        weight_self=s.online_self_weight,
                        num_cameras=self.num_cameras,
                    )
                    total = total + s.online_weight * online
        components["total"] = total
        return GroupLoss(total, {k: v.detach() for k, v in components.items()}, (outputs.detach(), proxies))

    def after_step(self, carries: Sequence[Any], batch: dict[str, Tensor], *, epoch: int, step: int) -> None:
        """Move the proxies towards the global batch's features (gathered in global order by the memory)."""
        features = torch.cat([f for f, _ in carries])  # (P, D) this process's images in position order
        proxies = torch.cat([p for _, p in carries])  # (P,)
        s = self.settings
        self.state.memory.update(features, proxies, s.memory_momentum, mode=s.memory_update)

    def describe(self, epoch: int, averages: dict[str, float]) -> list[str]:
        """The epoch's clustering, e.g. `clustering: 702 clusters, 2,801 proxies, 9 % of images left out, 63 % of
        clusters span several cameras; purity 0.91, adjusted Rand 0.84`."""
        d = {k[len(DIAGNOSTIC_PREFIX) :]: v for k, v in averages.items() if k.startswith(DIAGNOSTIC_PREFIX)}
        if not d:
            return []
        line = (
            f"clustering: {d['clusters']:,.0f} clusters, {d['proxies']:,.0f} proxies, "
            f"{100 * d['unclustered_fraction']:.0f} % of images left out, "
            f"{100 * d['multi_camera_fraction']:.0f} % of clusters span several cameras"
        )
        if "purity" in d:
            line += f"; purity {d['purity']:.2f}, adjusted Rand {d['adjusted_rand_index']:.2f}"
        return [line]
