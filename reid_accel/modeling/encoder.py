"""The re-ID encoder: any timm backbone with "last stride 1", the backbone's own pooling and a BNNeck.

This is the network users keep and share: images in, one feature per image out. Everything it computes is in this
file: the backbone comes from `timm.create_model` (names, ImageNet weights, preprocessing constants and pooling are
timm's), "last stride 1" doubles the final feature map (16x8 for a 256x128 input) and `BNNeck` is a BatchNorm1d
whose bias is frozen at 0. Training-only parts (the source classifier, the exemplar memory) live elsewhere.

"Last stride 1" is the published recipe's surgery on ResNets (timm's `resnet` module and IBN-Net): the first block
of the last stage gets stride 1, with no dilation. Every other family that takes timm's `output_stride=16` gets
that instead (timm dilates the stages after the stride it removes); a family without it (ViT, Swin, DenseNet)
keeps its own stride (`last_stride=2`). Models whose timm config says their input size is fixed (ViT, DeiT, Swin)
are built for the encoder's `input_size` (`img_size`; timm resamples position embeddings when loading weights).
"""

import inspect
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download, upload_folder
from huggingface_hub import create_repo as hub_create_repo
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from timm.data import resolve_model_data_config
from timm.layers import SelectAdaptivePool2d
from timm.models import get_pretrained_cfg, is_model_in_modules
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from reid_accel.errors import ConfigError, HubError, ModelLoadError, first_line
from reid_accel.fileio import atomic_path, write_text_atomic
from reid_accel.modeling import ibn
from reid_accel.modeling.batchnorm import running_stats_frozen
from reid_accel.modeling.card import model_card
from reid_accel.modeling.pooling import GeM

logger = logging.getLogger(__name__)

# What a Hub request raises when the Hub is unreachable or refuses: OS errors (offline mode, no token) and the HTTP
# client's errors, whose base class huggingface_hub's own HTTP error extends.
HUB_REQUEST_ERRORS = (OSError, *HfHubHTTPError.__bases__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
MODEL_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
# timm modules whose models get the named last-stride surgery rather than `output_stride=16` (which dilates).
SURGERY_MODULES = ("resnet", ibn.__name__.rsplit(".", 1)[-1])
REDUCED_OUTPUT_STRIDE = 16


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d over pooled features with its bias frozen at 0 (no gradient), as in the BNNeck re-ID baseline.

    Its output is the inference feature (running statistics) and the classifier input in training.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.bias.requires_grad_(False)


def set_last_stride_one(backbone: nn.Module) -> None:
    """Give the last stage of a timm ResNet stride 1 instead of 2, without dilation ("last stride 1").

    In the first block of `layer4` the strided 3x3 conv (conv2 of a Bottleneck, conv1 of a BasicBlock) and the
    shortcut's strided conv get stride 1; an anti-aliasing pool after the 3x3 conv and an average-pool shortcut
    (the `-d` variants) become identities, which is what timm itself builds for a stride-1 block. A 256x128 input
    then gives a 16x8 final map instead of 8x4.

    Args:
        backbone: a model from `timm.create_model` with ResNet stages (`resnet*`, `seresnet*`, `resnet*d`, ...).

    Raises:
        ConfigError: the backbone has no ResNet `layer4` whose first block downsamples by 2.
    """
    stage = getattr(backbone, "layer4", None)
    block = stage[0] if isinstance(stage, nn.Sequential) and len(stage) > 0 else None
    if not isinstance(block, (BasicBlock, Bottleneck)) or not isinstance(block.downsample, nn.Sequential):
        raise ConfigError(
            f"model.last_stride=1 needs a timm ResNet whose layer4 starts with a downsampling BasicBlock or "
            f"Bottleneck; {type(backbone).__name__} has none (use model.last_stride=2)"
        )
    conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    main_strided = conv.stride == (2, 2) or not isinstance(block.aa, nn.Identity)
    shortcut_convs = [m for m in block.downsample if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    shortcut_pools = [i for i, m in enumerate(block.downsample) if isinstance(m, nn.AvgPool2d)]
    if not main_strided or not (shortcut_convs or shortcut_pools):
        raise ConfigError(f"model.last_stride=1: layer4 of {type(backbone).__name__} does not downsample by 2")
    conv.stride = (1, 1)
    block.aa = nn.Identity()
    for shortcut_conv in shortcut_convs:
        shortcut_conv.stride = (1, 1)
    for index in shortcut_pools:
        block.downsample[index] = nn.Identity()


def imagenet_weights_id(backbone: str) -> str | None:
    """The Hub repo of the timm weights a backbone name resolves to (`timm/resnet50.tv_in1k`), if timm has one."""
    cfg = get_pretrained_cfg(backbone)
    return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None


def _create_backbone(
    backbone: str, *, pretrained: bool, pretrained_path: str | None, last_stride: int, input_size: tuple[int, int]
) -> nn.Module:
    """timm backbone without classifier, keeping its pooling: (B, 3, H, W) -> features -> (B, D) pre-logits."""
    if not timm.is_model(backbone):
        raise ConfigError(f"model.backbone: {backbone!r} is not a timm model name (see timm.list_models())")
    overlay = None
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise ModelLoadError(f"model.pretrained_path {path}: no such file (a safetensors or .pth weights file)")
        overlay = {"file": str(path)}
    cfg = get_pretrained_cfg(backbone)
    if pretrained and overlay is None and not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(
            f"model.pretrained: timm has no weights to download for {backbone!r}; give model.pretrained_path"
        )
    surgery = is_model_in_modules(backbone.split(".")[0], SURGERY_MODULES)
    options: dict[str, Any] = {}
    if last_stride == 1 and not surgery:
        options["output_stride"] = REDUCED_OUTPUT_STRIDE
    if cfg.fixed_input_size:
        options["img_size"] = input_size
    try:
        model = timm.create_model(
            backbone,
            pretrained=pretrained or overlay is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=0,
            **options,
        )
    except (TypeError, AssertionError) as err:
        # timm refuses output_stride in one of two ways: the model takes no such argument (TypeError naming it), or
        # it asserts that only 32 is valid (VGG, DLA, HRNet, DPN, GhostNet).
        if "output_stride" not in options or (isinstance(err, TypeError) and "output_stride" not in str(err)):
            raise
        raise ConfigError(
            f"model.last_stride=1: timm's {backbone!r} cannot reduce its last stride (no output_stride=16); "
            "use model.last_stride=2 to keep its own stride"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError) as err:  # pretrained weights that cannot be fetched
        raise ModelLoadError(
            f"model.pretrained: cannot fetch the ImageNet weights of {backbone!r} ({imagenet_weights_id(backbone)}) "
            f"from the Hugging Face Hub ({first_line(err)}); download them where the Hub is reachable, or pass a "
            "local file with model.pretrained_path=/path/to/model.safetensors"
        ) from None
    except RuntimeError as err:
        source = f"weights {pretrained_path}" if pretrained_path else "backbone"
        raise ModelLoadError(f"cannot build {backbone!r} from {source}: {first_line(err)}") from err
    if last_stride == 1 and surgery:
        set_last_stride_one(model)
    return model


POOLINGS = ("avg", "gem")


def use_gem_pooling(backbone: nn.Module, name: str) -> None:
    """Replace a timm CNN's global average pool by GeM (trainable p from 3), as cluster contrast pools its maps.

    timm's CNNs pool in `global_pool` (a `SelectAdaptivePool2d` giving (B, C)) inside their own `forward_head`,
    so swapping that module keeps every other step of the head (dropout, head norm) as it was.
    """
    if not isinstance(getattr(backbone, "global_pool", None), SelectAdaptivePool2d):
        raise ConfigError(f"model.pooling=gem: {name!r} does not pool a CNN feature map (use model.pooling=avg)")
    backbone.global_pool = GeM()


class ReIDEncoder(nn.Module, PyTorchModelHubMixin):
    """Person re-ID feature extractor: timm backbone -> the backbone's pooling (pre-logits) -> BNNeck.

    `forward` returns the BNNeck feature and `embed` its L2-normalised form, which is ranked by cosine similarity.
    `save_pretrained` / `push_to_hub` / `from_pretrained` round-trip it through a folder or the Hub with the
    reid-accel card (`card.py`, whose metadata replaces the mixin's); the exported config always says
    `pretrained=False, pretrained_path=None`, so reloading builds a random backbone and loads our weights on top,
    never fetching ImageNet weights.

    Args:
        backbone: timm model name with its weight tag, e.g. "resnet50.tv_in1k" (bare "resnet50" resolves to
            timm's current default tag, another recipe), or "resnet50_ibn_a" (IBN-Net, see `ibn.py`).
        pretrained: load the tag's ImageNet weights through timm (needs the network or timm's cache).
        pretrained_path: local weights file (safetensors or a PyTorch state dict) for this backbone, loaded through
            timm instead of a download; its classifier weights are dropped.
        last_stride: 1 for "last stride 1" (the ResNet surgery, or timm's `output_stride=16` for other families),
            2 to keep the backbone's own stride.
        input_size: (H, W) the encoder is trained and evaluated at; recorded for preprocessing and given to
            backbones built for one input size (ViT, Swin).
        mean: per-channel input mean; defaults to the backbone's pretrained config.
        std: per-channel input std; defaults to the backbone's pretrained config.
        pooling: "avg" (the backbone's own pooling) or "gem" (generalised mean, CNN backbones only).
        base_model: the Hub repo of the ImageNet weights training started from, for the model card; by default
            timm's repo for the tag when `pretrained` or `pretrained_path` loads weights (a local file is taken to
            hold the tag's weights), none for a random start.
    """

    def __init__(
        self,
        backbone: str = "resnet50.tv_in1k",
        *,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        last_stride: int = 1,
        input_size: tuple[int, int] | list[int] = (256, 128),
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pooling: str = "avg",
        base_model: str | None = None,
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ConfigError(f"last_stride must be 1 or 2, got {last_stride}")
        if len(input_size) != 2 or any(int(s) != s or s < 1 for s in input_size):
            raise ConfigError(f"input_size must be (height, width) in pixels, got {input_size}")
        self.backbone_name = backbone
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.backbone = _create_backbone(
            backbone,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            last_stride=last_stride,
            input_size=self.input_size,
        )
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if pooling == "gem":
            use_gem_pooling(self.backbone, backbone)
        self.pooling = pooling
        self.last_stride = last_stride
        weights_loaded = pretrained or pretrained_path is not None
        self.base_model = base_model if base_model is not None or not weights_loaded else imagenet_weights_id(backbone)
        data_config = resolve_model_data_config(self.backbone)
        self.mean = [float(v) for v in (data_config["mean"] if mean is None else mean)]
        self.std = [float(v) for v in (data_config["std"] if std is None else std)]
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values (RGB), got mean={self.mean} std={self.std}")
        self.feature_dim: int = self.backbone.head_hidden_size  # width of the pre-logits output
        self.neck = BNNeck(self.feature_dim)

    def export_config(self) -> dict:
        """The JSON config that rebuilds this encoder with random weights (ImageNet weights never requested)."""
        config = {
            "backbone": self.backbone_name,
            "pretrained": False,
            "pretrained_path": None,
            "last_stride": self.last_stride,
            "input_size": list(self.input_size),
            "mean": self.mean,
            "std": self.std,
            "feature_dim": self.feature_dim,
        }
        config |= (
            {"pooling": self.pooling} if self.pooling != "avg" else {}
        )  # folders saved before GeM stay as they were
        return config | ({"base_model": self.base_model} if self.base_model else {})

    def generate_model_card(self, *, repo_id: str = "", metrics: dict | None = None) -> ModelCard:
        """The reid-accel card (the one `reid-accel push` writes), with a run's results when `metrics` is given.

        Args:
            repo_id: the Hub repository, used in the loading snippet.
            metrics: a training run's `metrics.json` content.
        """
        return ModelCard(model_card(self.export_config(), metrics, repo_id=repo_id))

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, repo_id: str = "", metrics: dict | None = None
    ) -> None:
        """Write exactly `model.safetensors`, `config.json` and the model card `README.md`, each atomically.

        Args:
            save_directory: the model folder (created if needed); the three files are replaced, never left stale.
            repo_id: the Hub repository the card's loading snippet names.
            metrics: a training run's `metrics.json` content, for the card's results.
        """
        save_directory = Path(save_directory)
        self._save_pretrained(save_directory)
        card = self.generate_model_card(repo_id=repo_id, metrics=metrics)
        write_text_atomic(save_directory / CARD_NAME, str(card))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        token: str | None = None,
        metrics: dict | None = None,
    ) -> str:
        """Upload the three model files, with the reid-accel card, to a Hub model repo; returns the commit URL.

        Args:
            repo_id: USER/NAME on the Hub (created if missing).
            private: create the repository as private.
            revision: branch to push to (default: main).
            token: Hub token; default `hf auth login`'s or `HF_TOKEN`.
            metrics: a training run's `metrics.json` content, for the card's results.
        """
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, repo_id=repo_id, metrics=metrics)
            return upload_model_folder(tmp, repo_id=repo_id, private=private, revision=revision, token=token)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
    ) -> "ReIDEncoder":
        """Rebuild a saved encoder from a folder or a Hub repo id, strictly and without pickle.

        Unlike the mixin's loader, an unknown config key, a missing or unexpected weight, or a weights file that is
        not safetensors is a `ModelLoadError` naming it; ImageNet weights are never fetched.
        """
        reference = str(pretrained_model_name_or_path)

        def fetch(filename: str) -> Path:
            if os.path.isdir(reference):
                path = Path(reference) / filename
                if not path.is_file():
                    raise ModelLoadError(f"{path}: missing (a saved encoder has {CONFIG_NAME} and {WEIGHTS_NAME})")
                return path
            try:
                return Path(
                    hf_hub_download(
                        reference,
                        filename,
                        revision=revision,
                        cache_dir=cache_dir,
                        local_files_only=local_files_only,
                        token=token,
                    )
                )
            except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as err:
                raise ModelLoadError(f"{reference}: cannot get {filename} ({first_line(err)})") from None

        config_path = fetch(CONFIG_NAME)
        try:
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{config_path}: not a valid JSON config ({err})") from None
        if not isinstance(config, dict):
            raise ModelLoadError(f"{config_path}: expected a JSON object of constructor arguments")
        recorded_dim = config.pop("feature_dim", None)
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ModelLoadError(
                f"{config_path}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}"
            )
        config.update(pretrained=False, pretrained_path=None)
        try:
            model = cls(**config)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ModelLoadError(f"{config_path}: cannot build the encoder ({err})") from None
        if recorded_dim is not None and recorded_dim != model.feature_dim:
            raise ModelLoadError(
                f"{config_path}: feature_dim {recorded_dim} does not match {config.get('backbone')} ({model.feature_dim})"
            )
        weights_path = fetch(WEIGHTS_NAME)
        try:
            state = load_file(weights_path, device=map_location)
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({err})") from None
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelLoadError(
                f"{weights_path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        wrong = [k for k in expected if expected[k].shape != state[k].shape]
        if wrong:
            raise ModelLoadError(
                f"{weights_path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                f"expected {tuple(expected[wrong[0]].shape)}"
            )
        model.load_state_dict(state, strict=True)
        return model.eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write `model.safetensors` and `config.json` atomically (the mixin's hook, kept for its other callers)."""
        save_directory = Path(save_directory)
        with atomic_path(save_directory / WEIGHTS_NAME) as tmp:
            save_model(self, str(tmp))
        with atomic_path(save_directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(self.export_config(), indent=2, sort_keys=True))

    def forward_features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> the backbone's unpooled features.

        A CNN gives (B, C, h, w) (16x8 for 256x128 at last stride 1), a ViT its tokens (B, N, C), Swin (B, h, w, C):
        whatever the backbone's own `forward_head` pools. Rows are images, so a slice of rows is a sub-batch.
        """
        return self.backbone.forward_features(pixel_values)

    def forward_head(self, fmap: Tensor, *, neck_batch_stats: bool = False) -> tuple[Tensor, Tensor]:
        """Pool features as the backbone does before its classifier, then pass them through the BNNeck.

        Args:
            fmap: features of B images from `forward_features` (or a slice of their rows).
            neck_batch_stats: normalise with the batch's own statistics, leaving the running ones untouched (the
                source half in cross-domain training, so that the running statistics, which serve at test time, come
                from target images only); otherwise the BNNeck runs in its module mode.

        Returns:
            `(pooled, neck)`, both (B, D).
        """
        pooled = self.backbone.forward_head(fmap, pre_logits=True)  # (B, D): average pool, class token, head norm
        if not neck_batch_stats:
            return pooled, self.neck(pooled)
        with running_stats_frozen(self.neck):  # also right once SyncBatchNorm has replaced the neck
            return pooled, self.neck(pooled)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) BNNeck features."""
        return self.forward_head(self.forward_features(pixel_values))[1]

    def embed(self, pixel_values: Tensor, *, flip: bool = False) -> Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised BNNeck features in float32: the retrieval descriptor.

        Evaluation, the inference API and exported models all compute this. With `flip`, the feature of each image
        and of its mirror image are summed before normalising. Under autocast the sum and the norm stay in float32.
        """
        features = self(pixel_values).float()  # (B, D)
        if flip:
            features = features + self(pixel_values.flip(-1)).float()
        return F.normalize(features, dim=1)


def upload_model_folder(
    folder: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Create the Hub model repo if needed and upload a model folder's three files; returns the commit URL.

    Raises:
        HubError: the Hub cannot be reached or refuses (offline mode, no token, no write access).
    """
    try:
        hub_create_repo(repo_id, private=private, exist_ok=True, token=token, repo_type="model")
        info = upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=list(MODEL_FILES),
            revision=revision,
            token=token,
            commit_message="Upload reid-accel model",
        )
    except HUB_REQUEST_ERRORS as err:
        raise HubError(
            f"cannot push to {repo_id} on the Hugging Face Hub ({first_line(err)}); check the connection and "
            "log in with `hf auth login` or HF_TOKEN"
        ) from None
    return str(getattr(info, "commit_url", info))
