"""Every backbone a shipped config names builds at random init, at the config's input size, with the expected
feature width: a recipe never fails on its first line."""

from pathlib import Path

import pytest
import torch

from reid_accel.config import load_config
from reid_accel.modeling import ReIDEncoder

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
MODELS = sorted(
    {(c.model.backbone, c.model.last_stride, c.data.height, c.data.width) for c in map(load_config, CONFIGS)}
)
FEATURE_DIMS = {
    "resnet50.tv_in1k": 2048,
    "resnet50_ibn_a": 2048,
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": 768,
    "test_resnet": 96,
}


@torch.no_grad()
@pytest.mark.parametrize(("backbone", "last_stride", "height", "width"), MODELS, ids=lambda v: str(v))
def test_each_configured_backbone_builds_and_embeds(backbone, last_stride, height, width):
    encoder = ReIDEncoder(backbone, last_stride=last_stride, input_size=(height, width)).eval()
    assert encoder.feature_dim == FEATURE_DIMS[backbone]
    assert encoder.embed(torch.randn(1, 3, height, width)).shape == (1, FEATURE_DIMS[backbone])
