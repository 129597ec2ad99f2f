"""Training progress and checkpoints that resume exactly, mid-epoch included, without pickle; reading models back.

`accelerator.save_state` writes the network (safetensors), the optimizer, the grad scaler and the RNG states. The
method's state tensors (the exemplar memory), the progress counters and the resolved config are ours: they go
beside them (`folders.CheckpointFolder`), so a checkpoint folder holds no pickled object of ours. A checkpoint is
read where it is written: resumed by `load_latest_checkpoint`, or its encoder rebuilt by `encoder_from_checkpoint`
from the constructor arguments `setup` uses too (`encoder_arguments`); `load_encoder` resolves any model reference.
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reid_accel.config import ExperimentConfig, load_config
from reid_accel.errors import ConfigError, ModelLoadError, first_line
from reid_accel.fileio import atomic_path, share_as_umask, write_text_atomic
from reid_accel.folders import CheckpointFolder, RunFolder, find_model_folder
from reid_accel.hub import encoder_from_config, from_pretrained, load_weights_strictly
from reid_accel.modeling import ReIDEncoder
from reid_accel.modeling.encoder import imagenet_weights_id

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands: `epoch` (1-based) and the number of its steps already done."""

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0

    def count_step(self) -> None:
        """Count one finished optimizer step of the current epoch."""
        self.step_in_epoch += 1
        self.global_step += 1

    def next_epoch(self) -> None:
        """Move to the start of the next epoch, once the current one's last step is counted."""
        self.epoch += 1
        self.step_in_epoch = 0


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
    accelerator: Accelerator,
    state: TrainState,
    memory: torch.nn.Module | None,
    config_yaml: str,
    encoder_config: dict[str, Any],
) -> CheckpointFolder:
    """Save everything needed to resume; every process calls this (each saves its own RNG state).

    Args:
        accelerator: names the folder (`checkpoints/checkpoint_<i>`) and saves the prepared objects.
        state: the progress counters.
        memory: the method's state tensors, as the buffers of a module identical on every process (the exemplar
            memory); its `state_dict` is saved, and restored by `load_state_dict`. None when there is none.
        config_yaml: the resolved config.
        encoder_config: the encoder's `export_config()`, to rebuild it from the checkpoint alone.

    The counters are written last: a folder without them is incomplete (the run died while saving).
    """
    if memory is not None:
        check_memory_in_sync(accelerator, memory)
    checkpoint = CheckpointFolder(Path(accelerator.save_state()))
    if _writes_checkpoints(accelerator):
        if memory is not None:
            tensors = {k: v.detach().cpu().contiguous() for k, v in memory.state_dict().items()}
            with atomic_path(checkpoint.memory) as tmp:
                save_file(tensors, tmp)
        write_text_atomic(checkpoint.config, config_yaml)
        write_text_atomic(checkpoint.encoder, json.dumps(encoder_config, indent=2, sort_keys=True))
        share_as_umask(checkpoint.root)  # accelerate's weights come out 0o600 (safetensors' own temporary file)
        write_text_atomic(checkpoint.state, json.dumps(asdict(state)))  # last: marks the folder complete
    accelerator.wait_for_everyone()
    return checkpoint


def load_latest_checkpoint(accelerator: Accelerator, memory: torch.nn.Module | None, run: RunFolder) -> TrainState:
    """Restore the newest complete checkpoint of `run`; a fresh `TrainState` when there is none.

    Incomplete checkpoints (no counters: the run died while saving) are removed first, so that saving goes on
    under their numbers.
    """
    checkpoints = run.checkpoints()
    incomplete = [c for c in checkpoints if not c.complete]
    if incomplete and _writes_checkpoints(accelerator):
        for checkpoint in incomplete:
            logger.warning("removing incomplete checkpoint %s (the run stopped while saving it)", checkpoint.root)
            shutil.rmtree(checkpoint.root)
    accelerator.wait_for_everyone()
    complete = [c for c in checkpoints if c not in incomplete]
    if not complete:
        logger.info("no checkpoint in %s: starting from scratch", run.root)
        return TrainState()
    latest = complete[-1]
    try:
        accelerator.load_state(str(latest.root))
        if memory is not None:
            memory.load_state_dict(load_file(latest.memory))  # copied into the buffers, on their device
        state = TrainState(**json.loads(latest.state.read_text()))
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise ModelLoadError(
            f"{latest.root}: cannot resume (a different config, or a corrupt checkpoint): {first_line(err)}"
        ) from None
    # accelerate numbers new checkpoints from its own counter, which load_state leaves at 0.
    accelerator.project_configuration.iteration = latest.number + 1
    logger.info("resumed from %s at epoch %d, step %d", latest.root, state.epoch, state.step_in_epoch)
    return state


def encoder_arguments(cfg: ExperimentConfig) -> dict[str, Any]:
    """`ReIDEncoder`'s constructor arguments for a run: `setup` builds the encoder it trains from them, and
    `encoder_from_checkpoint` the one a checkpoint holds (with ImageNet weights not fetched)."""
    return {
        "backbone": cfg.model.backbone,
        "pretrained": cfg.model.pretrained,
        "pretrained_path": cfg.model.pretrained_path,
        "last_stride": cfg.model.last_stride,
        "input_size": [cfg.data.height, cfg.data.width],
        "pooling": cfg.model.pooling,
    }


def encoder_from_checkpoint(checkpoint: CheckpointFolder) -> ReIDEncoder:
    """The encoder of a training checkpoint, rebuilt from its stored constructor arguments (checkpoints written
    before they were stored: from the run config) and given the checkpoint's weights strictly.

    The weights file holds the whole training network (`encoder.*` beside the method's head), under DDP's `module.`
    prefix when it was saved wrapped; every encoder key must be there and nothing else under `encoder.`.
    """
    try:
        if checkpoint.encoder.is_file():
            encoder = encoder_from_config(json.loads(checkpoint.encoder.read_text()), source=str(checkpoint.encoder))
        else:
            cfg = load_config(checkpoint.config)
            arguments = encoder_arguments(cfg)
            started_from_imagenet = arguments["pretrained"] or arguments["pretrained_path"] is not None
            base_model = imagenet_weights_id(cfg.model.backbone) if started_from_imagenet else None
            arguments.update(pretrained=False, pretrained_path=None, base_model=base_model)  # the card still names it
            encoder = ReIDEncoder(**arguments)
        weights = load_file(checkpoint.weights)
    except (ConfigError, OSError, SafetensorError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{checkpoint.root}: not a readable checkpoint ({first_line(err)})") from None
    state = {}
    for key, value in weights.items():
        key = key.removeprefix("module.")
        if key.startswith("encoder."):
            state[key.removeprefix("encoder.")] = value
    load_weights_strictly(
        encoder, state, source=f"{checkpoint.root}: checkpoint does not match {encoder.backbone_name}"
    )
    return encoder.eval()


def load_encoder(reference: str | os.PathLike, *, device: str | torch.device = "cpu") -> ReIDEncoder:
    """Load an encoder from a model folder, a run folder, a training checkpoint folder or a Hub repo id.

    What `reid-accel eval`, `export` and `embed` accept as MODEL.
    """
    path = Path(reference)
    checkpoint = CheckpointFolder(path)
    if checkpoint.complete:
        return encoder_from_checkpoint(checkpoint).to(device)
    if path.is_dir():
        model, _ = find_model_folder(path)
        return from_pretrained(model.root).to(device)
    if path.exists() or str(reference).startswith((".", "/")) or str(reference).count("/") != 1:
        raise ModelLoadError(f"{reference}: no such model folder, and not a Hub repo id (user/name)")
    return from_pretrained(str(reference)).to(device)
