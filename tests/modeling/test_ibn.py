"""IBN-Net-a: the normalisation it defines, its place in the ResNet, timm registration, and the released weights."""

import timm
import torch
import torch.nn.functional as F

from reid_accel.hub import from_pretrained, save_pretrained
from reid_accel.modeling import IBNResNet, InstanceBatchNorm2d, ReIDEncoder


def test_instance_batch_norm_splits_the_channels_in_half():
    norm = InstanceBatchNorm2d(6).train()
    with torch.no_grad():
        norm.instance_norm.weight.copy_(torch.tensor([2.0, 3.0, 4.0]))
    x = torch.randn(4, 6, 5, 3) * 3 + 1
    out = norm(x)
    weight = norm.instance_norm.weight
    torch.testing.assert_close(out[:, :3], F.instance_norm(x[:, :3], weight=weight, bias=norm.instance_norm.bias))
    torch.testing.assert_close(out[:, 3:], F.batch_norm(x[:, 3:], None, None, training=True))
    torch.testing.assert_close(out[1, :3].mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)  # per image
    assert norm.num_instance == 3 and norm.batch_norm.num_features == 3


def test_resnet50_ibn_a_puts_ibn_in_stages_one_to_three_only():
    assert timm.is_model("resnet50_ibn_a") and timm.is_model("resnet101_ibn_a")
    model = timm.create_model("resnet50_ibn_a", num_classes=0)
    assert isinstance(model, IBNResNet) and [len(model.get_submodule(f"layer{i}")) for i in range(1, 5)] == [
        3,
        4,
        6,
        3,
    ]
    for stage, width in (("layer1", 64), ("layer2", 128), ("layer3", 256)):
        for block in model.get_submodule(stage):
            assert isinstance(block.bn1, InstanceBatchNorm2d) and block.bn1.num_instance == width // 2
            assert isinstance(block.bn2, torch.nn.BatchNorm2d)
    assert all(isinstance(block.bn1, torch.nn.BatchNorm2d) for block in model.layer4)
    assert isinstance(model.bn1, torch.nn.BatchNorm2d)  # the stem stays plain in IBN-a
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, 2048)


def test_released_weights_load_through_pretrained_path_and_the_model_reloads(tmp_path):
    # The authors' release is a pickled state dict with a 1000-class head and `bn1.IN.*` / `bn1.BN.*` keys.
    torch.manual_seed(0)
    source = timm.create_model("resnet50_ibn_a").state_dict()
    release = {
        k.replace(".instance_norm.", ".IN.").replace(".batch_norm.", ".BN."): v.clone() for k, v in source.items()
    }
    assert "layer1.0.bn1.IN.weight" in release and "fc.weight" in release
    path = tmp_path / "resnet50_ibn_a-release.pth"
    torch.save(release, path)

    encoder = ReIDEncoder("resnet50_ibn_a", pretrained_path=str(path), input_size=(64, 32)).eval()
    loaded = encoder.backbone.state_dict()
    assert set(loaded) == set(source) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(value, source[key]) for key, value in loaded.items())
    assert encoder.last_stride == 1 and encoder.forward_features(torch.randn(1, 3, 64, 32)).shape[-2:] == (4, 2)
    assert encoder.base_model is None  # timm has no IBN weights repo to name

    save_pretrained(encoder, tmp_path / "model")
    reloaded = from_pretrained(tmp_path / "model")
    x = torch.randn(2, 3, 64, 32)
    assert torch.equal(reloaded.embed(x), encoder.embed(x))
