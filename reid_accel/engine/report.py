"""What a run leaves for people to read: the metrics, the loss history, the log and the training curves.

Only the main process records. Every file is rewritten atomically after each change, so a run killed at any
moment leaves the last complete version behind, and a resumed run carries on the same files.
"""

import importlib.metadata
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from reid_accel.fileio import atomic_path, write_json_atomic, write_text_atomic
from reid_accel.folders import RunFolder
from reid_accel.methods.camera_proxy import DIAGNOSTIC_PREFIX as CLUSTER_PREFIX
from reid_accel.objectives import NEIGHBOUR_PREFIX

logger = logging.getLogger(__name__)

METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10")
CLUSTER_SHARES = ("fraction", "purity", "rand_index")  # those of them that are shares in [0, 1]
PACKAGES = ("reid-accel", "torch", "torchvision", "timm", "accelerate", "datasets", "huggingface_hub", "safetensors")


def environment_info() -> dict[str, Any]:
    """Versions of Python and the stack, recorded with every run and exported model."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "packages": versions,
    }


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


class RunRecorder:
    """Keeps the run's records on disk: per-epoch loss averages and the evaluations, with config and run info."""

    def __init__(self, folder: RunFolder, *, config: dict[str, Any], run_info: dict[str, Any]) -> None:
        self.folder = folder
        self.config = config
        self.run_info = run_info
        self.evaluations: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self._log_handler: logging.Handler | None = None

    def flat_config(self) -> dict[str, Any]:
        """The config as flat `section.key` scalars, the form trackers accept as hyper-parameters."""
        return _flatten(self.config)

    def start(self, *, resumed: bool, config_yaml: str) -> None:
        """Open the log, write the resolved config, and reload earlier records when resuming."""
        self.folder.root.mkdir(parents=True, exist_ok=True)
        package_logger = logging.getLogger("reid_accel")
        if package_logger.getEffectiveLevel() > logging.INFO:
            package_logger.setLevel(logging.INFO)
        self._log_handler = logging.FileHandler(self.folder.log)
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(self._log_handler)
        write_text_atomic(self.folder.config, config_yaml)
        if resumed:
            if self.folder.metrics.is_file():
                self.evaluations = json.loads(self.folder.metrics.read_text())["evaluations"]
            if self.folder.history.is_file():
                self.history = json.loads(self.folder.history.read_text())
        self._write_metrics()

    def record_epoch(self, epoch: int, losses: dict[str, float]) -> None:
        self.history = [h for h in self.history if h["epoch"] != epoch] + [{"epoch": epoch, **losses}]
        write_json_atomic(self.folder.history, self.history)

    def record_evaluation(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Append one evaluation (fractions) to the metrics, replacing an earlier one of the same epoch.

        `metrics` is the dict of `rank_metrics`; the entry keeps its AP convention (`ap_mode`) beside the numbers.
        """
        entry = {"epoch": epoch, **{k: float(metrics[k]) for k in METRIC_KEYS}}
        entry["num_valid_queries"] = int(metrics["num_valid_queries"])
        entry["ap_mode"] = metrics["ap_mode"]
        self.evaluations = [e for e in self.evaluations if e["epoch"] != epoch] + [entry]
        self._write_metrics()

    def _write_metrics(self) -> None:
        write_json_atomic(
            self.folder.metrics, {"evaluations": self.evaluations, "run": self.run_info, "config": self.config}
        )

    def finish(self) -> None:
        """Draw the training curves when matplotlib is installed (the `viz` extra) and close the log."""
        try:
            plot_training_curves(self.history, self.evaluations, self.folder.curves)
        except ImportError:
            logger.warning("matplotlib is not installed: no training_curves.png (pip install 'reid-accel[viz]')")
        if self._log_handler is not None:
            logging.getLogger("reid_accel").removeHandler(self._log_handler)
            self._log_handler.close()


def plot_training_curves(history: list[dict[str, Any]], evaluations: list[dict[str, Any]], path: str | Path) -> None:
    """Loss components per epoch; the neighbour sets' precision, recall and empty share, or the clustering's
    shares (un-clustered, multi-camera clusters, purity, adjusted Rand), when recorded; and target mAP and rank-1
    per evaluated epoch. Records named `<group>/<measure>` are diagnostics, the others losses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    keys = list(dict.fromkeys(k for h in history for k in h))  # every key, in order of first appearance
    losses = [k for k in keys if k not in ("epoch", "source_accuracy") and "/" not in k]
    shares = [k for k in keys if k.startswith(NEIGHBOUR_PREFIX) and not k.endswith("_neighbours")]
    shares += [k for k in keys if k.startswith(CLUSTER_PREFIX) and k.endswith(CLUSTER_SHARES)]
    fig = Figure(figsize=(16 if shares else 11, 4), constrained_layout=True)  # no pyplot: no global backend switch
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if shares else 2)
    ax_loss, ax_eval = axes[0], axes[-1]
    epochs = [h["epoch"] for h in history]

    def curve(ax, key: str, **style) -> None:
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], **style)

    for name in losses:
        curve(ax_loss, name, label=name, lw=2 if name == "total" else 1)
    ax_loss.set(title="training losses (epoch mean)", xlabel="epoch", ylabel="loss")
    if losses:
        ax_loss.legend(fontsize=8)
    if shares:
        ax_nb = axes[1]
        styles = {"precision": "-", "recall": "--", "empty": ":"}
        colours = {}
        for key in shares:
            if key.startswith(CLUSTER_PREFIX):
                curve(ax_nb, key, label=key[len(CLUSTER_PREFIX) :].replace("_", " "))
                continue
            group, measure = key[len(NEIGHBOUR_PREFIX) :].split("_", 1)
            colour = colours.setdefault(group, f"C{len(colours)}")
            label = f"{group} {'rows without' if measure == 'empty' else measure}"
            curve(ax_nb, key, label=label, ls=styles[measure], color=colour)
        what = "clusters" if shares[0].startswith(CLUSTER_PREFIX) else "neighbour sets"
        ax_nb.set(title=f"target {what} (true identities)", xlabel="epoch", ylabel="share", ylim=(0, 1))
        ax_nb.legend(fontsize=8)
    eval_epochs = [e["epoch"] for e in evaluations]
    for key, label in (("mAP", "mAP"), ("rank1", "rank-1")):
        values = [100 * e[key] for e in evaluations]
        ax_eval.plot(eval_epochs, values, marker="o", label=label)
        if values:
            ax_eval.annotate(
                f"{values[-1]:.1f}", (eval_epochs[-1], values[-1]), textcoords="offset points", xytext=(4, 4)
            )
    ax_eval.set(title="target retrieval", xlabel="epoch", ylabel="%", ylim=(0, 100))
    ax_eval.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
