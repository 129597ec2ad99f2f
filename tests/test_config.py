import re
from pathlib import Path

import pytest

from reid_accel.config import DomainConfig, ExperimentConfig, dump_config, load_config
from reid_accel.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_published_recipe():
    cfg = ExperimentConfig()
    assert (cfg.optim.lr_backbone, cfg.optim.lr_new, cfg.optim.epochs, cfg.optim.milestones) == (0.01, 0.05, 70, [60])
    assert (cfg.objective.scale, cfg.objective.neighbour_eps, cfg.objective.mixup_alpha) == (10.0, 0.8, 0.6)
    assert (cfg.objective.intra_start_epoch, cfg.objective.inter_start_epoch) == (10, 30)
    assert (cfg.data.batch_size, cfg.model.last_stride, cfg.model.backbone) == (256, 1, "resnet50.tv_in1k")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_published_configs_state_the_batchnorm_group():
    for name in ("duke2market", "market2duke", "market2msmt", "msmt2market"):
        cfg = load_config(CONFIGS[0].parent / f"{name}.yaml")
        assert cfg.data.batch_size == 256 and cfg.data.bn_batch_size == 128
        assert cfg.data.erasing_ratio_rule == "linear", "the authors' torchvision drew the erasing ratio linearly"


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["optim.lr_backbone=0.02", "data.batch_size=64", "optim.milestones=[40, 60]"])
    assert cfg.optim.lr_backbone == 0.02 and cfg.data.batch_size == 64 and cfg.optim.milestones == [40, 60]
    cfg = load_config(None, ["optim.lr_new=1", "data.target={name: market, root: m}", "train.mixed_precision=null"])
    assert cfg.optim.lr_new == 1.0 and isinstance(cfg.optim.lr_new, float)
    assert cfg.data.target == DomainConfig(name="market", root="m") and cfg.train.mixed_precision is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr_backbon=0.1", "optim.lr_backbon: unknown key"),
        ("optim.lr_backbone=fast", "optim.lr_backbone: expected float, got 'fast'"),
        ("data.batch_size=0", "data.batch_size: expected a number > 0, got 0"),
        ("objective.neighbour_eps=1.5", "objective.neighbour_eps: expected a number in [0, 1], got 1.5"),
        ("objective.scale=.nan", "objective.scale: expected a number > 0, got nan"),
        ("optim.milestones=[60, 40]", "optim.milestones: expected increasing epochs within 1..70 (optim.epochs)"),
        ("objective.mixup=1", "objective.mixup: expected bool, got 1"),
        ("train.mixed_precision=fp8", "train.mixed_precision: expected one of 'no', 'fp16', 'bf16', got 'fp8'"),
        ("optim.milestones=60", "optim.milestones: expected a list, got 60"),
        ("data.source=market", "data.source: expected a mapping"),
        ("lr", "override 'lr': expected key=value"),
        ("optim.lr_backbone.x=1", "optim.lr_backbone: expected float, got {"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_bad_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"{missing}: config file not found"):
        load_config(missing)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  lr_backbnoe: 0.1\n")
    with pytest.raises(ConfigError, match=f"{typo}: optim.lr_backbnoe: unknown key"):
        load_config(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        load_config(broken)


def test_relative_roots_resolve_under_the_data_root_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("REID_DATA_ROOT", str(tmp_path))
    assert DomainConfig(root="Market-1501-v15.09.15").resolved_root() == tmp_path / "Market-1501-v15.09.15"
    assert DomainConfig(root="/abs/market").resolved_root() == Path("/abs/market")
    monkeypatch.delenv("REID_DATA_ROOT")
    assert DomainConfig(root="m").resolved_root() == Path("m")


def test_only_true_and_false_are_booleans():
    cfg = load_config(None, ["train.mixed_precision=no", "objective.mixup=false"])
    assert cfg.train.mixed_precision == "no" and cfg.objective.mixup is False
    with pytest.raises(ConfigError, match="objective.mixup: expected bool, got 'yes'"):
        load_config(None, ["objective.mixup=yes"])


def test_old_spellings_of_renamed_keys_still_load(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("objective:\n  neighbor_mode: 0\n  neighbor_eps: 0.7\n")
    cfg = load_config(old)
    assert (cfg.objective.neighbour_mode, cfg.objective.neighbour_eps) == ("camera_agnostic", 0.7)
    assert load_config(None, ["objective.neighbor_mode=1"]).objective.neighbour_mode == "camera_aware"
    assert load_config(old, ["objective.neighbour_mode=camera_aware"]).objective.neighbour_mode == "camera_aware"
    both = tmp_path / "both.yaml"
    both.write_text("objective:\n  neighbor_eps: 0.7\n  neighbour_eps: 0.8\n")
    with pytest.raises(ConfigError, match="objective.neighbor_eps: renamed to objective.neighbour_eps"):
        load_config(both)
