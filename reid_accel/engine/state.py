"""Training progress and checkpoints that resume exactly, mid-epoch included, without pickle.

`accelerator.save_state` writes the model (safetensors), the optimizer, the grad scaler and the RNG states. The
exemplar memory and the progress counters are ours: they go beside them as `memory.safetensors` and
`train_state.json`, so a checkpoint folder holds no pickled object of ours.
"""

import hashlib
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from reid_accel.errors import ModelLoadError, first_line
from reid_accel.fileio import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
MEMORY_FILE = "memory.safetensors"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainState:
    """Where training stands: `epoch` (1-based) and the number of its steps already done."""

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0

    def advance(self, steps_per_epoch: int) -> None:
        """Count one finished step, rolling over to the next epoch after its last one."""
        self.step_in_epoch += 1
        self.global_step += 1
        if self.step_in_epoch == steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (accelerate names them `checkpoints/checkpoint_<i>`)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := re.fullmatch(r"checkpoint_(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def memory_digest(memory: torch.nn.Module) -> str:
    """SHA-256 of the memory's bytes: equal digests on every process mean bit-identical copies."""
    digest = hashlib.sha256()
    for value in memory.state_dict().values():
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_memory_in_sync(accelerator: Accelerator, memory: torch.nn.Module) -> str:
    """Compare the memory's digest across processes; a mismatch is a bug, so it stops the run."""
    digests = gather_object([memory_digest(memory)])
    if len(set(digests)) != 1:
        raise RuntimeError(f"exemplar memories differ across processes: {digests}")
    logger.info("exemplar memory identical on %d process(es): sha256 %s", len(digests), digests[0][:16])
    return digests[0]


def _writes_checkpoints(accelerator: Accelerator) -> bool:
    """The process that writes a checkpoint's shared files: the main one, or each machine's with `save_on_each_node`."""
    if accelerator.project_configuration.save_on_each_node:
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def save_checkpoint(
    accelerator: Accelerator, state: TrainState, memory: torch.nn.Module | None, config_yaml: str
) -> Path:
    """Save everything needed to resume; every process calls this (each saves its own RNG state).

    `train_state.json` is written last: a folder without it is incomplete (the run died while saving).
    """
    if memory is not None:
        check_memory_in_sync(accelerator, memory)
    location = Path(accelerator.save_state())
    if _writes_checkpoints(accelerator):
        if memory is not None:
            tensors = {k: v.detach().cpu().contiguous() for k, v in memory.state_dict().items()}
            with atomic_path(location / MEMORY_FILE) as tmp:
                save_file(tensors, tmp)
        write_text_atomic(location / CONFIG_FILE, config_yaml)
        write_text_atomic(location / STATE_FILE, json.dumps(asdict(state)))  # last: marks the folder complete
    accelerator.wait_for_everyone()
    return location


def load_latest_checkpoint(
    accelerator: Accelerator, memory: torch.nn.Module | None, output_dir: str | Path
) -> TrainState:
    """Restore the newest complete checkpoint of `output_dir`; a fresh `TrainState` when there is none.

    Incomplete checkpoints (no `train_state.json`: the run died while saving) are removed first, so that saving
    goes on under their numbers.
    """
    folders = checkpoint_dirs(output_dir)
    incomplete = [d for d in folders if not (d / STATE_FILE).is_file()]
    if incomplete and _writes_checkpoints(accelerator):
        for folder in incomplete:
            logger.warning("removing incomplete checkpoint %s (the run stopped while saving it)", folder)
            shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    complete = [d for d in folders if d not in incomplete]
    if not complete:
        logger.info("no checkpoint in %s: starting from scratch", output_dir)
        return TrainState()
    latest = complete[-1]
    try:
        accelerator.load_state(str(latest))
        if memory is not None:
            memory.load_state_dict(load_file(latest / MEMORY_FILE))  # copied into the buffers, on their device
        state = TrainState(**json.loads((latest / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise ModelLoadError(
            f"{latest}: cannot resume (a different config, or a corrupt checkpoint): {first_line(err)}"
        ) from None
    # accelerate numbers new checkpoints from its own counter, which load_state leaves at 0.
    accelerator.project_configuration.iteration = int(latest.name.rsplit("_", 1)[1]) + 1
    logger.info("resumed from %s at epoch %d, step %d", latest, state.epoch, state.step_in_epoch)
    return state
