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

import logging
from pathlib import Path
from typing import Any

import timm
import torch.nn.functional as F
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from timm.data import resolve_model_data_config
from timm.layers import SelectAdaptivePool2d
from timm.models import get_pretrained_cfg, is_model_in_modules
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from reid_accel.errors import ConfigError, ModelLoadError, first_line
from reid_accel.modeling import ibn
from reid_accel.modeling.batchnorm import running_stats_frozen
from reid_accel.modeling.pooling import GeM

logger = logging.getLogger(__name__)

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


class ReIDEncoder(nn.Module):
    """Person re-ID feature extractor: timm backbone -> the backbone's pooling (pre-logits) -> BNNeck.

    `forward` returns the BNNeck feature and `embed` its L2-normalised form, which is ranked by cosine similarity.
    `export_config` is the JSON-able set of constructor arguments that rebuilds it; it always says
    `pretrained=False, pretrained_path=None`, so a saved encoder (`reid_accel.hub`) is rebuilt with a random
    backbone and our weights loaded on top, never fetching ImageNet weights.

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

    def forward_features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> the backbone's unpooled features.

        A CNN gives (B, C, h, w) (16x8 for 256x128 at last stride 1), a ViT its tokens (B, N, C), Swin (B, h, w, C):
        whatever the backbone's own `forward_head` pools. Rows are images, so a slice of rows is a sub-batch.
        """
        return self.backbone.forward_features(pixel_values)

    def forward_head(self, fmap: Tensor, *, pre_logits: bool = False, neck_batch_stats: bool = False) -> Tensor:
        """Pool features as the backbone does before its classifier, then pass them through the BNNeck.

        Args:
            fmap: features of B images from `forward_features` (or a slice of their rows).
            pre_logits: return the pooled features, before the BNNeck.
            neck_batch_stats: normalise with the batch's own statistics, leaving the running ones untouched (the
                source half in cross-domain training, so that the running statistics, which serve at test time, come
                from target images only); otherwise the BNNeck runs in its module mode.

        Returns:
            (B, D) BNNeck features, or the pooled ones with `pre_logits`.
        """
        pooled = self.backbone.forward_head(fmap, pre_logits=True)  # (B, D): average pool, class token, head norm
        if pre_logits:
            return pooled
        if not neck_batch_stats:
            return self.neck(pooled)
        with running_stats_frozen(self.neck):  # also right once SyncBatchNorm has replaced the neck
            return self.neck(pooled)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) BNNeck features."""
        return self.forward_head(self.forward_features(pixel_values))

    def embed(self, pixel_values: Tensor, *, flip: bool = False) -> Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised BNNeck features in float32: the retrieval descriptor.

        Evaluation, the inference API and exported models all compute this. With `flip`, the feature of each image
        and of its mirror image are summed before normalising. Under autocast the sum and the norm stay in float32.
        """
        features = self(pixel_values).float()  # (B, D)
        if flip:
            features = features + self(pixel_values.flip(-1)).float()
        return F.normalize(features, dim=1)
