"""Model folders and the Hub: save an encoder, load one back strictly, push one with its card.

A model folder (`folders.ModelFolder`) holds exactly `model.safetensors`, `config.json` (the encoder's constructor
arguments, `ReIDEncoder.export_config`) and the card `README.md` (`card.py`), each written atomically. Three plain
functions rather than huggingface_hub's `PyTorchModelHubMixin`: the mixin's `save_pretrained` deletes `config.json`
before its `_save_pretrained` hook runs and keeps an existing `README.md`, writing a new one with a plain `open`, so
a model saved through it is neither atomic nor free of a stale card. Hub failures become `HubError` /
`ModelLoadError` here, with one line a user can act on.
"""

import inspect
import json
import os
from pathlib import Path

import torch
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from reid_accel.card import TrainingRecord, model_card
from reid_accel.errors import HubError, ModelLoadError, first_line
from reid_accel.fileio import atomic_path, write_text_atomic
from reid_accel.folders import ModelFolder, find_model_folder
from reid_accel.modeling import ReIDEncoder

# What a Hub request raises when the Hub is unreachable or refuses: OS errors (offline mode, no token, a file the
# cache lacks) and the HTTP client's errors, whose base class huggingface_hub's own HTTP error extends; a malformed
# repo id is a ValueError.
HUB_REQUEST_ERRORS = (OSError, ValueError, *HfHubHTTPError.__bases__)


def save_pretrained(
    encoder: ReIDEncoder, folder: str | os.PathLike, *, training: TrainingRecord | None = None, repo_id: str = ""
) -> ModelFolder:
    """Write exactly the model folder's three files, each atomically; a file already there is replaced.

    Args:
        encoder: the encoder to save (unwrapped: no DDP or compile wrapper).
        folder: the model folder, created if needed.
        training: the run that trained it, for the card's results and settings.
        repo_id: the Hub repository the card's loading snippet names.
    """
    model = ModelFolder(Path(folder))
    with atomic_path(model.weights) as tmp:
        save_model(encoder, str(tmp))
    write_text_atomic(model.config, json.dumps(encoder.export_config(), indent=2, sort_keys=True))
    write_text_atomic(model.card, model_card(encoder.export_config(), training, repo_id=repo_id))
    return model


def from_pretrained(
    reference: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    map_location: str = "cpu",
) -> ReIDEncoder:
    """Rebuild a saved encoder from a model folder or a Hub repo id, strictly and without pickle.

    An unknown config key, a missing or unexpected weight, a shape that differs, or a weights file that is not
    safetensors is a `ModelLoadError` naming it; ImageNet weights are never fetched.
    """
    reference = str(reference)

    def fetch(path: Path) -> Path:
        if os.path.isdir(reference):
            if not path.is_file():
                raise ModelLoadError(f"{path}: missing (a saved encoder has config.json and model.safetensors)")
            return path
        try:
            return Path(
                hf_hub_download(
                    reference,
                    path.name,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                    token=token,
                )
            )
        except HUB_REQUEST_ERRORS as err:
            raise ModelLoadError(f"{reference}: cannot get {path.name} ({first_line(err)})") from None

    names = ModelFolder(Path(reference))
    config_path = fetch(names.config)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_path}: not a valid JSON config ({err})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path}: expected a JSON object of constructor arguments")
    model = encoder_from_config(config, source=str(config_path))
    weights_path = fetch(names.weights)
    try:
        state = load_file(weights_path, device=map_location)
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({err})") from None
    load_weights_strictly(model, state, source=f"{weights_path}: weights do not match the config")
    return model.eval()


def encoder_from_config(config: dict, *, source: str) -> ReIDEncoder:
    """A randomly initialised encoder built from a saved `ReIDEncoder.export_config()`, strictly: an unknown key, a
    config that cannot build, or a `feature_dim` the backbone does not give is a `ModelLoadError` naming `source`.
    ImageNet weights are never fetched."""
    config = dict(config)
    recorded_dim = config.pop("feature_dim", None)
    allowed = sorted(set(inspect.signature(ReIDEncoder.__init__).parameters) - {"self"})
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ModelLoadError(f"{source}: unknown key(s) {', '.join(unknown)}; expected {', '.join(allowed)}")
    config.update(pretrained=False, pretrained_path=None)
    try:
        model = ReIDEncoder(**config)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{source}: cannot build the encoder ({err})") from None
    if recorded_dim is not None and recorded_dim != model.feature_dim:
        raise ModelLoadError(
            f"{source}: feature_dim {recorded_dim} does not match {config.get('backbone')} ({model.feature_dim})"
        )
    return model


def load_weights_strictly(encoder: ReIDEncoder, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into `encoder` only if it has every key, nothing more and the same shapes.

    Raises:
        ModelLoadError: `source` (what was read, and why it should fit), then what differs.
    """
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"{source}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        raise ModelLoadError(
            f"{source}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
        )
    encoder.load_state_dict(state, strict=True)


def push_to_hub(
    path: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a model folder (or a run folder's `model/`) to a Hub model repo, created if missing; returns the commit URL.

    Only the three model files travel: no checkpoint, optimizer or memory. The card is rendered for `repo_id` from
    the same inputs the engine used (the run's records when the folder belongs to a run); the folder itself is left
    as it is. The token comes from `hf auth login` or `HF_TOKEN` unless given.

    Raises:
        HubError: the Hub cannot be reached or refuses (offline mode, no token, no write access).
    """
    model, run = find_model_folder(path)
    missing = [p.name for p in (model.weights, model.config) if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{model.root}: missing {', '.join(missing)}")
    training = TrainingRecord.read(run) if run is not None else None
    card = model_card(json.loads(model.config.read_text()), training, repo_id=repo_id)
    operations = [
        CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in (model.weights, model.config)
    ]
    operations.append(CommitOperationAdd(path_in_repo=model.card.name, path_or_fileobj=card.encode()))
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(
            repo_id, operations, commit_message="Upload reid-accel model", revision=revision, repo_type="model"
        )
    except HUB_REQUEST_ERRORS as err:
        raise HubError(
            f"cannot push to {repo_id} on the Hugging Face Hub ({first_line(err)}); check the connection and "
            "log in with `hf auth login` or HF_TOKEN"
        ) from None
    return str(getattr(info, "commit_url", info))
