import PIL.Image
import pytest
import torch

from reid_accel.data import build_transform

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def test_test_transform_resizes_and_normalises():
    image = PIL.Image.new("RGB", (10, 30), (255, 0, 127))
    transform = build_transform(8, 4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 0.25), train=False)
    out = transform(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 8, 4)
    expected = torch.tensor([(1.0 - 0.5) / 0.25, (0.0 - 0.5) / 0.5, (127 / 255 - 0.5) / 0.25])
    torch.testing.assert_close(out, expected[:, None, None].expand(3, 8, 4), atol=1e-6, rtol=0)


def test_train_transform_output_and_pad_fill():
    torch.manual_seed(0)
    image = PIL.Image.new("RGB", (20, 50), (255, 255, 255))
    transform = build_transform(32, 16, **IDENTITY, train=True, flip_prob=0.0, erasing_prob=0.0)
    outputs = torch.stack([transform(image) for _ in range(20)])  # (20, 3, 32, 16)
    assert outputs.shape == (20, 3, 32, 16) and outputs.dtype == torch.float32
    # only the image's white and the grey padding shifted in by the crop
    assert outputs.unique().tolist() == pytest.approx([127 / 255, 1.0])
    pad_share = (outputs < 1).float().mean().item()
    assert 0 < pad_share < 0.5


def test_train_transform_flips():
    image = PIL.Image.new("RGB", (8, 16), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 4, 16))  # left half white
    flip = build_transform(16, 8, **IDENTITY, train=True, pad=0, flip_prob=1.0, erasing_prob=0.0)
    out = flip(image)
    assert out[:, :, :4].max() == 0 and out[:, :, 4:].min() == 1


def test_train_transform_erases_with_zero():
    torch.manual_seed(0)
    image = PIL.Image.new("RGB", (32, 64), (255, 255, 255))
    erase = build_transform(64, 32, **IDENTITY, train=True, pad=0, flip_prob=0.0, erasing_prob=1.0)
    shares = []
    for _ in range(10):
        out = erase(image)
        assert set(out.unique().tolist()) == {0.0, 1.0}
        zero = out[0] == 0
        assert torch.equal(zero, out[1] == 0) and torch.equal(zero, out[2] == 0)  # one box over all channels
        shares.append(zero.float().mean().item())
    assert all(0.02 - 1e-3 <= share <= 0.25 + 0.05 for share in shares)
