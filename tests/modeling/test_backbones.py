"""Every timm family through the encoder: pooling through the backbone's head, last stride, one CAIL training step,
save -> from_pretrained and export, on timm's tiny test models at 64x32."""

import pytest
import torch
import torch.nn.functional as F

from reid_accel.config import ExperimentConfig, ObjectiveConfig
from reid_accel.export import export_encoder
from reid_accel.hub import from_pretrained, save_pretrained
from reid_accel.methods.cail import build_objective
from reid_accel.modeling import CrossDomainNetwork, ReIDEncoder
from reid_accel.objectives import mix_pixels

SIZE = (64, 32)
# timm's tiny model of each family -> the last stride it is trained with ("last stride 1" wherever it can be had).
FAMILIES = {
    "test_resnet": 1,  # ResNet-D stem and average-pool shortcuts: the named surgery
    "test_convnext": 1,  # ConvNeXt: output_stride=16, pooled through its head norm
    "test_efficientnet": 1,  # EfficientNet: output_stride=16
    "test_byobnet": 1,  # ByobNet (the RegNet / ResNet-style block zoo): output_stride=16
    "test_vit": 2,  # ViT: tokens and a class token, built for 64x32; no stride to reduce
}


def build(backbone: str, **options) -> ReIDEncoder:
    torch.manual_seed(0)
    return ReIDEncoder(backbone, last_stride=FAMILIES[backbone], input_size=SIZE, **options)


@pytest.mark.parametrize("backbone", list(FAMILIES))
def test_one_cail_training_step_reaches_every_weight(backbone):
    network = CrossDomainNetwork(build(backbone), num_classes=3).train()
    dim = network.encoder.feature_dim
    pixels = mix_pixels(torch.randn(8, 3, *SIZE), num_source=4, lam=0.7)  # [mixed source | target]
    memory = F.normalize(torch.randn(6, dim), dim=1)
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    every_term = ObjectiveConfig(intra_start_epoch=0, inter_start_epoch=0, mixup_start_epoch=0)
    objective = build_objective(ExperimentConfig(objective=every_term), two_domains=True)

    out = network(pixels, num_source=4)
    total, parts = objective(
        epoch=1,
        source_features=out["source_features"],
        source_logits=out["source_logits"],
        source_labels=torch.tensor([0, 1, 2, 0]),
        classifier_weight=network.classifier.weight,
        target_features=out["target_features"],
        target_camids=torch.tensor([0, 1, 0, 1]),
        target_slots=torch.tensor([0, 1, 2, 3]),
        memory_features=memory,
        memory_camids=torch.tensor([0, 1, 0, 1, 0, 1]),
        lam=0.7,
    )
    total.backward()
    optimizer.step()

    assert set(parts) == {"mixup", "intra", "inter", "total", "source_accuracy"}
    assert torch.isfinite(total) and total > 0
    trainable = {name: p for name, p in network.named_parameters() if p.requires_grad}
    unreached = [name for name, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not unreached, f"no finite gradient reaches {unreached[:3]}"
    # Zero-initialised last norms of residual branches (timm's default) leave those branches a zero gradient at
    # the first step. The loss reaches the input layer, and every weight that got a gradient moved.
    stepped = [name for name, p in trainable.items() if p.grad.abs().max() > 0]
    first = next(name for name in trainable if name.startswith("encoder.backbone."))
    assert {first, "encoder.neck.weight", "classifier.weight"} <= set(stepped)
    assert all(not torch.equal(trainable[name], before[name]) for name in stepped)
    assert torch.equal(network.encoder.neck.bias, before["encoder.neck.bias"])  # frozen at 0


@pytest.mark.parametrize("backbone", list(FAMILIES))
def test_save_reload_and_export_keep_the_features(backbone, tmp_path):
    encoder = build(backbone).eval()
    with torch.no_grad():
        encoder.neck.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(3, 3, *SIZE)
    expected = encoder.embed(x)
    save_pretrained(encoder, tmp_path / "model")

    reloaded = from_pretrained(tmp_path / "model")
    assert torch.equal(reloaded.embed(x), expected)
    # The export is checked against the reloaded encoder, on `x` too, before the file is written.
    report = export_encoder(reloaded, tmp_path / "model.pt2", fmt="exported-program", batch=None, images=x)
    assert report.random_diff < 1e-5 and report.image_diff < 1e-5 and report.path.is_file()


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["test_convnext", "test_efficientnet", "test_byobnet"])
def test_last_stride_one_halves_the_final_stride_through_output_stride(backbone):
    x = torch.randn(1, 3, *SIZE)
    reduced = ReIDEncoder(backbone, last_stride=1, input_size=SIZE).eval()
    kept = ReIDEncoder(backbone, last_stride=2, input_size=SIZE).eval()
    assert reduced.forward_features(x).shape[-2:] == (4, 2)  # stride 16
    assert kept.forward_features(x).shape[-2:] == (2, 1)  # stride 32
    assert reduced.backbone.feature_info[-1]["reduction"] == 16


@torch.no_grad()
def test_convnext_pools_through_its_head_norm():
    encoder = build("test_convnext").eval()
    fmap = encoder.forward_features(torch.randn(2, 3, *SIZE))  # (2, C, 4, 2)
    pooled = encoder.forward_head(fmap, pre_logits=True)
    norm = encoder.backbone.head.norm
    expected = F.layer_norm(fmap.mean(dim=(2, 3)), (fmap.shape[1],), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(pooled, expected)


@torch.no_grad()
def test_vit_is_built_for_the_input_size_and_pools_its_class_token():
    encoder = build("test_vit").eval()
    tokens = encoder.forward_features(torch.randn(2, 3, *SIZE))
    assert tokens.shape == (2, 1 + (64 // 16) * (32 // 16), encoder.feature_dim)  # class token + 4x2 patches
    pooled = encoder.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(pooled, tokens[:, 0])


@torch.no_grad()
def test_swin_runs_at_256x128():
    # Swin's 7x7 windows do not tile 64x32 or 32x16 token maps; timm pads them, so the re-ID input size is fine.
    encoder = ReIDEncoder("swin_tiny_patch4_window7_224", last_stride=2).eval()
    fmap = encoder.forward_features(torch.randn(1, 3, 256, 128))
    assert fmap.shape == (1, 8, 4, 768)  # (B, h, w, C): Swin's maps are channels-last
    assert encoder.embed(torch.randn(2, 3, 256, 128)).shape == (2, 768)
