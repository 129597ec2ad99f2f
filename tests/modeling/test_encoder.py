"""ReIDEncoder on ResNets: last-stride surgery, BNNeck, channels-last, torch.compile, local ImageNet weights, hub round
trip. Other timm families are in test_backbones.py."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from reid_accel.errors import ConfigError, ModelLoadError
from reid_accel.hub import from_pretrained, save_pretrained
from reid_accel.modeling import ReIDEncoder, set_last_stride_one


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50.tv_in1k"])
def test_last_stride_one_gives_a_16x8_map_at_256x128(backbone):
    encoder = ReIDEncoder(backbone).eval()
    fmap = encoder.forward_features(torch.randn(1, 3, 256, 128))
    assert fmap.shape == (1, encoder.feature_dim, 16, 8)
    assert encoder.feature_dim == {"resnet18": 512, "resnet50.tv_in1k": 2048}[backbone]
    assert encoder.forward_head(fmap).shape == (1, encoder.feature_dim)


@torch.no_grad()
def test_last_stride_two_keeps_the_backbone():
    encoder = ReIDEncoder("resnet18", last_stride=2).eval()
    assert encoder.forward_features(torch.randn(1, 3, 256, 128)).shape == (1, 512, 8, 4)


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["test_resnet", "resnet10t", "resnet50d", "seresnet50"])
def test_last_stride_one_across_the_resnet_family(backbone):
    # Average-pool shortcuts (test_resnet, resnet10t, resnet50d) and squeeze-excite blocks (seresnet50); a 64x32
    # input gives 2x1 at stride 32.
    encoder = ReIDEncoder(backbone).eval()
    assert encoder.forward_features(torch.randn(1, 3, 64, 32)).shape[-2:] == (4, 2)


def test_last_stride_one_is_refused_where_impossible():
    for backbone in ("test_vit", "ghostnet_100"):  # no output_stride argument; an assertion that only 32 is valid
        with pytest.raises(ConfigError, match=f"last_stride=1: timm's '{backbone}' cannot reduce its last stride"):
            ReIDEncoder(backbone, input_size=(64, 32))
    with pytest.raises(ConfigError, match="last_stride=1 needs a timm ResNet"):
        set_last_stride_one(timm.create_model("test_efficientnet"))
    with pytest.raises(ConfigError, match="last_stride must be 1 or 2"):
        ReIDEncoder("test_resnet", last_stride=4)
    with pytest.raises(ConfigError, match="not a timm model"):
        ReIDEncoder("no_such_net")


def test_bnneck_bias_is_frozen_at_zero():
    encoder = ReIDEncoder("test_resnet")
    assert not encoder.neck.bias.requires_grad and encoder.neck.weight.requires_grad
    assert torch.count_nonzero(encoder.neck.bias) == 0


def test_forward_head_batch_statistics_leave_running_statistics_alone():
    encoder = ReIDEncoder("test_resnet").train()
    fmap = torch.randn(6, encoder.feature_dim, 4, 2)
    before = {k: v.clone() for k, v in encoder.neck.state_dict().items()}
    neck = encoder.forward_head(fmap, neck_batch_stats=True)
    pooled = encoder.forward_head(fmap, pre_logits=True)
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    mean, var = pooled.mean(0), pooled.var(0, unbiased=False)
    torch.testing.assert_close(neck, (pooled - mean) / torch.sqrt(var + 1e-5) * encoder.neck.weight)
    for key, value in encoder.neck.state_dict().items():
        assert torch.equal(value, before[key]), key
    encoder.forward_head(fmap)
    assert not torch.equal(encoder.neck.running_mean, before["running_mean"])


def test_batch_statistics_path_survives_syncbatchnorm_conversion():
    encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ReIDEncoder("test_resnet"))
    assert isinstance(encoder.neck, torch.nn.SyncBatchNorm) and not encoder.neck.bias.requires_grad
    fmap = torch.randn(4, encoder.feature_dim, 2, 1)
    neck = encoder.forward_head(fmap, neck_batch_stats=True)
    pooled = encoder.forward_head(fmap, pre_logits=True)
    torch.testing.assert_close(neck, F.batch_norm(pooled, None, None, encoder.neck.weight, None, training=True))


@torch.no_grad()
def test_embed_is_the_unit_bnneck_feature_in_eval():
    encoder = ReIDEncoder("test_resnet").eval()
    encoder.neck.running_mean.uniform_(-1, 1)
    encoder.neck.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 64, 32)
    pooled = encoder.forward_features(x).mean(dim=(2, 3))
    neck = (pooled - encoder.neck.running_mean) / torch.sqrt(encoder.neck.running_var + 1e-5)
    torch.testing.assert_close(encoder(x), neck)
    torch.testing.assert_close(encoder.embed(x), F.normalize(neck, dim=1))


@torch.no_grad()
def test_channels_last_gives_the_same_features():
    encoder = ReIDEncoder("resnet18").eval()
    x = torch.randn(2, 3, 128, 64)
    reference = encoder(x)
    encoder = encoder.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        encoder(x.contiguous(memory_format=torch.channels_last)), reference, rtol=1e-4, atol=1e-4
    )


def test_mean_and_std_come_from_the_backbone_unless_given():
    assert ReIDEncoder("test_resnet").mean == [0.5, 0.5, 0.5]
    assert ReIDEncoder("resnet18").std == pytest.approx([0.229, 0.224, 0.225])
    assert ReIDEncoder("test_resnet", mean=[0.1, 0.2, 0.3]).mean == [0.1, 0.2, 0.3]


def test_local_imagenet_weights_load_through_timm_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = timm.create_model("test_resnet")  # with its 1000-class head, like a real checkpoint
    path = tmp_path / "test_resnet.safetensors"
    save_file(source.state_dict(), str(path))
    encoder = ReIDEncoder("test_resnet", pretrained_path=str(path))
    loaded = encoder.backbone.state_dict()
    assert set(loaded) == set(source.state_dict()) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, source.state_dict()[key]), key

    missing = tmp_path / "absent.safetensors"
    with pytest.raises(ModelLoadError, match=str(missing)):
        ReIDEncoder("test_resnet", pretrained_path=str(missing))
    with pytest.raises(ModelLoadError, match="cannot build 'resnet18'"):
        ReIDEncoder("resnet18", pretrained_path=str(path))


def test_save_and_from_pretrained_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = tmp_path / "imagenet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    encoder = ReIDEncoder("test_resnet", pretrained_path=str(weights), input_size=(64, 32), std=[0.2, 0.3, 0.4])
    encoder.neck.running_mean.uniform_(-1, 1)
    encoder.eval()
    save_pretrained(encoder, tmp_path / "model")

    assert {p.name for p in (tmp_path / "model").iterdir()} == {"model.safetensors", "config.json", "README.md"}
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config == {
        "backbone": "test_resnet",
        "pretrained": False,
        "pretrained_path": None,
        "last_stride": 1,
        "input_size": [64, 32],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.3, 0.4],
        "feature_dim": 96,
        "base_model": "timm/test_resnet.r160_in1k",
    }
    weights.unlink()  # reloading must not need the ImageNet file
    reloaded = from_pretrained(tmp_path / "model")
    assert (reloaded.input_size, reloaded.std) == ((64, 32), [0.2, 0.3, 0.4])
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.embed(x), encoder.embed(x), rtol=0, atol=0)
    assert not reloaded.neck.bias.requires_grad


def test_torch_compile_traces_the_training_forward_without_graph_breaks():
    # Inductor code generation takes ~35 s on 2 CPU cores, so this checks tracing (fullgraph) with the eager backend.
    encoder = ReIDEncoder("test_resnet").train()
    x = torch.randn(4, 3, 64, 32)

    def step(pixel_values):
        fmap = encoder.forward_features(pixel_values)
        return encoder.forward_head(fmap, neck_batch_stats=True)

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), step(x))


def test_gem_pooling_is_the_generalised_mean_and_round_trips(tmp_path):
    torch.manual_seed(0)
    encoder = ReIDEncoder("test_resnet", input_size=(64, 32), pooling="gem").eval()
    pixels = torch.randn(2, 3, 64, 32)
    fmap = encoder.forward_features(pixels)  # (2, C, h, w)
    expected = fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)  # p starts at 3
    torch.testing.assert_close(encoder.backbone.forward_head(fmap, pre_logits=True), expected)
    assert "backbone.global_pool.p" in dict(encoder.named_parameters())
    save_pretrained(encoder, tmp_path / "gem")
    loaded = from_pretrained(tmp_path / "gem")
    assert loaded.pooling == "gem"
    torch.testing.assert_close(loaded.embed(pixels), encoder.embed(pixels))
    with pytest.raises(ConfigError, match="model.pooling=gem"):
        ReIDEncoder("test_vit", input_size=(64, 32), last_stride=2, pooling="gem")
