"""The re-ID encoder: a timm CNN with "last stride 1", global average pooling and a BNNeck.

This is the network users keep and share: images in, one feature per image out. Everything it computes is in this
file: the backbone comes from `timm.create_model` (names, ImageNet weights and preprocessing constants are timm's),
`set_last_stride_one` doubles the final feature map (16x8 for a 256x128 input), and `BNNeck` is a BatchNorm1d whose
bias is frozen at 0. Training-only parts (the source classifier, the exemplar memory) live elsewhere.
"""

import inspect
import json
import logging
import os
from pathlib import Path

import timm
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from timm.data import resolve_model_data_config
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from reid_accel.errors import ConfigError, ModelLoadError
from reid_accel.fileio import atomic_path
from reid_accel.modeling.batchnorm import running_stats_frozen

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
            f"last_stride=1 needs a timm ResNet whose layer4 starts with a downsampling BasicBlock or Bottleneck; "
            f"{type(backbone).__name__} has none (use last_stride=2)"
        )
    conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    main_strided = conv.stride == (2, 2) or not isinstance(block.aa, nn.Identity)
    shortcut_convs = [m for m in block.downsample if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    shortcut_pools = [i for i, m in enumerate(block.downsample) if isinstance(m, nn.AvgPool2d)]
    if not main_strided or not (shortcut_convs or shortcut_pools):
        raise ConfigError(f"last_stride=1: layer4 of {type(backbone).__name__} does not downsample by 2")
    conv.stride = (1, 1)
    block.aa = nn.Identity()
    for shortcut_conv in shortcut_convs:
        shortcut_conv.stride = (1, 1)
    for index in shortcut_pools:
        block.downsample[index] = nn.Identity()


def _create_backbone(backbone: str, *, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    """timm backbone without classifier or pooling: (B, 3, H, W) -> (B, C, h, w)."""
    if not timm.is_model(backbone):
        raise ConfigError(f"model.backbone: {backbone!r} is not a timm model name (see timm.list_models())")
    overlay = None
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise ModelLoadError(f"pretrained_path {path}: no such file (expected a safetensors weights file)")
        overlay = {"file": str(path)}
    try:
        return timm.create_model(
            backbone,
            pretrained=pretrained or overlay is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=0,
            global_pool="",
        )
    except RuntimeError as err:
        source = f"weights {pretrained_path}" if pretrained_path else "backbone"
        raise ModelLoadError(f"cannot build {backbone!r} from {source}: {str(err).splitlines()[0]}") from err


class ReIDEncoder(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="reid-accel",
    repo_url="https://github.com/reid-accel/reid-accel",
    license="apache-2.0",
    tags=["person-reid", "domain-adaptation", "reid-accel"],
    pipeline_tag="image-feature-extraction",
):
    """Person re-ID feature extractor: timm backbone -> global average pool -> BNNeck.

    `forward` returns the BNNeck feature and `embed` its L2-normalised form, which is ranked by cosine similarity.
    `save_pretrained` / `from_pretrained` round-trip it through a folder or the Hub; the exported config always says
    `pretrained=False, pretrained_path=None`, so reloading builds a random backbone and loads our weights on top,
    never fetching ImageNet weights.

    Args:
        backbone: timm model name with its weight tag, e.g. "resnet50.tv_in1k" (bare "resnet50" resolves to
            timm's current default tag, another recipe).
        pretrained: load the tag's ImageNet weights through timm (needs the network or timm's cache).
        pretrained_path: local safetensors file of ImageNet weights for this backbone, loaded through timm instead
            of a download; its classifier weights are dropped.
        last_stride: 1 for the re-ID "last stride 1" surgery (ResNet family only), 2 to keep the backbone as is.
        input_size: (H, W) the encoder is trained and evaluated at; recorded for preprocessing.
        mean: per-channel input mean; defaults to the backbone's pretrained config.
        std: per-channel input std; defaults to the backbone's pretrained config.
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
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ConfigError(f"last_stride must be 1 or 2, got {last_stride}")
        if len(input_size) != 2 or any(int(s) != s or s < 1 for s in input_size):
            raise ConfigError(f"input_size must be (height, width) in pixels, got {input_size}")
        self.backbone_name = backbone
        self.backbone = _create_backbone(backbone, pretrained=pretrained, pretrained_path=pretrained_path)
        if last_stride == 1:
            set_last_stride_one(self.backbone)
        self.last_stride = last_stride
        self.input_size = (int(input_size[0]), int(input_size[1]))
        data_config = resolve_model_data_config(self.backbone)
        self.mean = [float(v) for v in (data_config["mean"] if mean is None else mean)]
        self.std = [float(v) for v in (data_config["std"] if std is None else std)]
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values (RGB), got mean={self.mean} std={self.std}")
        self.feature_dim: int = self.backbone.num_features
        self.neck = BNNeck(self.feature_dim)

    def export_config(self) -> dict:
        """The JSON config that rebuilds this encoder with random weights (ImageNet weights never requested)."""
        return {
            "backbone": self.backbone_name,
            "pretrained": False,
            "pretrained_path": None,
            "last_stride": self.last_stride,
            "input_size": list(self.input_size),
            "mean": self.mean,
            "std": self.std,
            "feature_dim": self.feature_dim,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """The mixin's `save_pretrained`, except that the model card is rewritten every time (never left stale)."""
        (Path(save_directory) / "README.md").unlink(missing_ok=True)
        super().save_pretrained(save_directory, **kwargs)

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
                raise ModelLoadError(f"{reference}: cannot get {filename} ({str(err).splitlines()[0]})") from None

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
        """Write `model.safetensors` and our own `config.json` atomically; the mixin then keeps this config."""
        save_directory = Path(save_directory)
        with atomic_path(save_directory / WEIGHTS_NAME) as tmp:
            save_model(self, str(tmp))
        with atomic_path(save_directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(self.export_config(), indent=2, sort_keys=True))

    def forward_features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, C, h, w) final feature map (16x8 for 256x128 at last stride 1)."""
        return self.backbone.forward_features(pixel_values)

    def forward_head(self, fmap: Tensor, *, neck_batch_stats: bool = False) -> tuple[Tensor, Tensor]:
        """Pool a feature map and pass it through the BNNeck.

        Args:
            fmap: (B, C, h, w) from `forward_features`.
            neck_batch_stats: normalise with the batch's own statistics, leaving the running ones untouched (the
                source half in cross-domain training, so that the running statistics, which serve at test time, come
                from target images only); otherwise the BNNeck runs in its module mode.

        Returns:
            `(pooled, neck)`, both (B, D).
        """
        pooled = fmap.mean(dim=(2, 3))  # (B, D)
        if not neck_batch_stats:
            return pooled, self.neck(pooled)
        with running_stats_frozen(self.neck):  # also right once SyncBatchNorm has replaced the neck
            return pooled, self.neck(pooled)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) BNNeck features."""
        return self.forward_head(self.forward_features(pixel_values))[1]

    def embed(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised BNNeck features: the retrieval descriptor, ranked by cosine."""
        return F.normalize(self(pixel_values), dim=1)
