"""What each folder reid-accel writes holds, named once: a run folder, its checkpoints, a model folder, an evaluation.

Every module that writes or reads these files takes one of these frozen path objects instead of spelling a file
name, so a name changes here or nowhere. A run folder (`reid-accel train --output-dir`) holds the resolved config,
the records, the exported model folder and the checkpoints accelerate numbers; a checkpoint folder holds
accelerate's state plus our progress counters, the method's state tensors and the config; a model folder holds
exactly the three files that travel to the Hub.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from reid_accel.errors import ModelLoadError


@dataclass(frozen=True)
class ModelFolder:
    """An exported encoder: weights, the JSON config that rebuilds it and the model card, nothing else."""

    root: Path

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def files(self) -> tuple[Path, Path, Path]:
        """The three files, the only ones that travel."""
        return (self.weights, self.config, self.card)


@dataclass(frozen=True)
class CheckpointFolder:
    """One checkpoint, `checkpoints/checkpoint_<i>` as accelerate names it.

    accelerate's `save_state` writes the network (`weights`), the optimizer and the random states; reid-accel adds
    the progress counters (`state`, written last: a folder without it is incomplete), the method's state tensors
    (`memory`) and the resolved config that rebuilds the network.
    """

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "train_state.json"

    @property
    def memory(self) -> Path:
        return self.root / "memory.safetensors"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def encoder(self) -> Path:
        """The encoder's constructor arguments (a model folder's `config.json`), which rebuild it whatever the run
        started from (`model.init_from`)."""
        return self.root / "encoder.json"

    @property
    def weights(self) -> Path:
        """The prepared network's weights, under the name accelerate's `save_state` gives the first model."""
        return self.root / "model.safetensors"

    @property
    def number(self) -> int:
        return int(self.root.name.rsplit("_", 1)[1])

    @property
    def complete(self) -> bool:
        return self.state.is_file()


@dataclass(frozen=True)
class RunFolder:
    """A training run's output folder (`train.output_dir`)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def curves(self) -> Path:
        return self.root / "training_curves.png"

    @property
    def model(self) -> ModelFolder:
        return ModelFolder(self.root / "model")

    @property
    def checkpoints_root(self) -> Path:
        """Where accelerate's `automatic_checkpoint_naming` puts `checkpoint_<i>` under its project folder."""
        return self.root / "checkpoints"

    def checkpoints(self) -> list[CheckpointFolder]:
        """The run's checkpoint folders, complete or not, oldest first."""
        if not self.checkpoints_root.is_dir():
            return []
        found = [p for p in self.checkpoints_root.iterdir() if re.fullmatch(r"checkpoint_\d+", p.name)]
        return sorted((CheckpointFolder(p) for p in found), key=lambda c: c.number)


@dataclass(frozen=True)
class EvaluationFolder:
    """What `reid-accel eval --output-dir` writes: the metrics, the ranked features and two pictures."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def features(self) -> Path:
        return self.root / "features.safetensors"

    @property
    def cmc(self) -> Path:
        return self.root / "cmc.png"

    @property
    def rank_list(self) -> Path:
        return self.root / "rank_list.png"


def find_model_folder(path: str | Path) -> tuple[ModelFolder, RunFolder | None]:
    """The model folder a run folder or a model folder names, and the run it belongs to (None when it stands alone).

    Raises:
        ModelLoadError: `path` is neither.
    """
    path = Path(path)
    run = RunFolder(path)
    if run.model.config.is_file():
        return run.model, run
    model = ModelFolder(path)
    if model.config.is_file():
        parent = RunFolder(path.parent)
        return model, parent if parent.metrics.is_file() else None
    raise ModelLoadError(f"{path}: neither a model folder (config.json, model.safetensors) nor a run folder (model/)")
