"""Trained models that travel: model cards with a run's results, pushing to the Hub, loading any model reference.

A model folder holds exactly `model.safetensors`, `config.json` and the card `README.md`. A training run folder
adds `metrics.json` beside its `model/`; the card's results come from there. The card itself is
`reid_accel.modeling.card`'s, the one `ReIDEncoder.save_pretrained` and `push_to_hub` write too.
"""

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from reid_accel.config import load_config
from reid_accel.errors import ModelLoadError
from reid_accel.fileio import write_text_atomic
from reid_accel.modeling import ReIDEncoder
from reid_accel.modeling.card import model_card
from reid_accel.modeling.encoder import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    imagenet_weights_id,
    upload_model_folder,
)

logger = logging.getLogger(__name__)


def write_model_card(
    model_dir: str | os.PathLike, *, metrics_path: str | os.PathLike | None = None, repo_id: str = ""
) -> Path:
    """(Re)write `model_dir/README.md` from its `config.json` and, when given, a run's `metrics.json`."""
    model_dir = Path(model_dir)
    encoder_config = json.loads((model_dir / CONFIG_NAME).read_text())
    metrics = json.loads(Path(metrics_path).read_text()) if metrics_path and Path(metrics_path).is_file() else None
    path = model_dir / CARD_NAME
    write_text_atomic(path, model_card(encoder_config, metrics, repo_id=repo_id))
    return path


def resolve_model_folder(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Map a run folder or a model folder to (model folder, the run's metrics.json or None)."""
    path = Path(path)
    if (path / "model" / CONFIG_NAME).is_file():
        metrics = path / "metrics.json"
        return path / "model", metrics if metrics.is_file() else None
    if (path / CONFIG_NAME).is_file():
        metrics = path.parent / "metrics.json"
        return path, metrics if metrics.is_file() else None
    raise ModelLoadError(f"{path}: neither a model folder (config.json, model.safetensors) nor a run folder (model/)")


def push_model(
    path: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Refresh the card and upload a model folder (or a run's `model/`) to the Hub; returns the commit URL.

    Only the model files travel: no checkpoint, optimizer or memory. The token comes from `hf auth login` or
    `HF_TOKEN` unless given.
    """
    model_dir, metrics = resolve_model_folder(path)
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if not (model_dir / name).is_file()]
    if missing:
        raise ModelLoadError(f"{model_dir}: missing {', '.join(missing)}")
    write_model_card(model_dir, metrics_path=metrics, repo_id=repo_id)
    return upload_model_folder(model_dir, repo_id=repo_id, private=private, revision=revision, token=token)


def load_encoder(reference: str | os.PathLike, *, device: str | torch.device = "cpu") -> ReIDEncoder:
    """Load an encoder from a model folder, a run folder, a training checkpoint folder or a Hub repo id.

    A checkpoint folder (`checkpoints/checkpoint_<i>`) holds the whole training network and the run's config; its
    encoder weights are taken strictly (every key present, none left over).
    """
    path = Path(reference)
    if (path / "train_state.json").is_file():
        return _encoder_from_checkpoint(path).to(device)
    if path.is_dir():
        model_dir, _ = resolve_model_folder(path)
        return ReIDEncoder.from_pretrained(model_dir).to(device)
    if path.exists() or str(reference).startswith((".", "/")) or str(reference).count("/") != 1:
        raise ModelLoadError(f"{reference}: no such model folder, and not a Hub repo id (user/name)")
    return ReIDEncoder.from_pretrained(str(reference)).to(device)


def _encoder_from_checkpoint(folder: Path) -> ReIDEncoder:
    cfg = load_config(folder / "config.yaml")
    started_from_imagenet = cfg.model.pretrained or cfg.model.pretrained_path is not None
    encoder = ReIDEncoder(
        cfg.model.backbone,
        pretrained=False,
        last_stride=cfg.model.last_stride,
        input_size=[cfg.data.height, cfg.data.width],
        base_model=imagenet_weights_id(cfg.model.backbone) if started_from_imagenet else None,
    )
    weights = load_file(folder / WEIGHTS_NAME)
    prefix = "encoder."
    state = {k.removeprefix("module.").removeprefix(prefix): v for k, v in weights.items() if prefix in k}
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{folder}: checkpoint does not match {cfg.model.backbone}: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return encoder.eval()
