"""Models saved by earlier releases keep loading: the same encoder, the same features, on every loading path."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from reid_accel.engine.state import load_encoder
from reid_accel.hub import from_pretrained

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAVED_0_1_0 = FIXTURES / "model-0.1.0"  # test_efficientnet at 64x32, saved by reid-accel 0.1.0's save_pretrained


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))  # the images the fixture embedded


def test_a_model_saved_by_0_1_0_gives_the_features_it_gave_then():
    expected = load_file(FIXTURES / "model-0.1.0-features.safetensors")["features"]
    for encoder in (from_pretrained(SAVED_0_1_0), load_encoder(SAVED_0_1_0)):
        assert encoder.backbone_name == "test_efficientnet" and encoder.input_size == (64, 32)
        torch.testing.assert_close(encoder.embed(_images()), expected, rtol=0, atol=1e-6)
