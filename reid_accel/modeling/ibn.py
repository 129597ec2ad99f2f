"""IBN-Net-a ResNets, registered with timm so that `timm.create_model("resnet50_ibn_a")` builds them.

IBN-Net (Pan, Luo, Shi, Tang: "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net",
ECCV 2018, arXiv:1807.09441) puts instance normalisation into the shallow layers of a CNN, where appearance (colour,
lighting, camera style) lives, and keeps batch normalisation for the content the deep layers carry. Variant "a":
in every bottleneck of the first three stages, the normalisation after the first 1x1 conv splits its channels,
the first half through an affine InstanceNorm and the rest through a BatchNorm; the stem and the fourth stage are
plain. Cross-domain re-ID (SpCL, cluster-contrast, OpenUnReID) starts from these backbones for that reason.

timm has no IBN weights. The authors' ImageNet checkpoints (`resnet50_ibn_a-d9d0bb7b.pth`, downloaded by hand) load
through `ReIDEncoder(..., pretrained_path=...)`: timm reads the file and `_checkpoint_filter` renames the
release's `bn1.IN.*` / `bn1.BN.*` keys to ours.
"""

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import Tensor, nn

INSTANCE_RATIO = 0.5
IBN_STAGES = ("layer1", "layer2", "layer3")
RELEASE_KEYS = {".bn1.IN.": ".bn1.instance_norm.", ".bn1.BN.": ".bn1.batch_norm."}


class InstanceBatchNorm2d(nn.Module):
    """Normalise the first `ratio` of the channels per image (affine InstanceNorm), the rest per batch (BatchNorm).

    Args:
        num_features: channels C of the (B, C, H, W) input.
        ratio: share of the channels that go through InstanceNorm (IBN-a: one half).
    """

    def __init__(self, num_features: int, ratio: float = INSTANCE_RATIO) -> None:
        super().__init__()
        self.num_instance = int(num_features * ratio)
        self.instance_norm = nn.InstanceNorm2d(self.num_instance, affine=True)
        self.batch_norm = nn.BatchNorm2d(num_features - self.num_instance)

    def forward(self, x: Tensor) -> Tensor:
        instance, batch = x.split([self.num_instance, x.shape[1] - self.num_instance], dim=1)
        return torch.cat([self.instance_norm(instance), self.batch_norm(batch)], dim=1)  # (B, C, H, W)


class IBNResNet(ResNet):
    """timm's ResNet with IBN-a normalisation after the first conv of every bottleneck in stages 1-3."""

    def __init__(self, **kwargs) -> None:  # timm's ResNet arguments, as `build_model_with_cfg` passes them
        super().__init__(**kwargs)
        for stage in IBN_STAGES:
            for block in getattr(self, stage):
                block.bn1 = InstanceBatchNorm2d(block.bn1.num_features)


def _checkpoint_filter(state_dict: dict[str, Tensor], model: IBNResNet) -> dict[str, Tensor]:
    """Rename the IBN-Net release's keys (`layer1.0.bn1.IN.weight`) to this module's (`...instance_norm.weight`)."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in RELEASE_KEYS.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def _cfg() -> dict:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "paper_ids": "arXiv:1807.09441",
    }


# Read by timm's `register_model`, which looks up `default_cfgs` in the module of each entrypoint.
default_cfgs = generate_default_cfgs({"resnet50_ibn_a": _cfg(), "resnet101_ibn_a": _cfg()})


def _create_ibn_resnet(variant: str, pretrained: bool, layers: tuple[int, ...], **kwargs) -> IBNResNet:
    kwargs.setdefault("zero_init_last", False)  # IBN-Net initialises every norm to (1, 0), as torchvision does
    return build_model_with_cfg(
        IBNResNet,
        variant,
        pretrained,
        pretrained_filter_fn=_checkpoint_filter,
        block=Bottleneck,
        layers=layers,
        **kwargs,
    )


@register_model
def resnet50_ibn_a(pretrained: bool = False, **kwargs) -> IBNResNet:
    """ResNet-50 IBN-a: Bottleneck stages of 3, 4, 6, 3 blocks."""
    return _create_ibn_resnet("resnet50_ibn_a", pretrained, (3, 4, 6, 3), **kwargs)


@register_model
def resnet101_ibn_a(pretrained: bool = False, **kwargs) -> IBNResNet:
    """ResNet-101 IBN-a: Bottleneck stages of 3, 4, 23, 3 blocks."""
    return _create_ibn_resnet("resnet101_ibn_a", pretrained, (3, 4, 23, 3), **kwargs)
