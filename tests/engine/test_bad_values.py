"""Every key of every config section, given a bad value, is refused in one line before anything is parsed or built.

`BAD_VALUES` holds one bad value (as typed on the command line) per key; a key added to the config without an
entry here fails `test_every_key_has_a_bad_value`.
"""

import dataclasses
import logging
import types
import typing

import pytest

from reid_accel.cli import main
from reid_accel.config import ExperimentConfig

BAD_VALUES = {
    "data": "3",
    "data.source": "market",
    "data.source.name": "imagenet",
    "data.source.root": "''",
    "data.source.options": "{bogus: 1}",
    "data.target": "3",
    "data.target.name": "imagenet",
    "data.target.root": "''",
    "data.target.options": "{bogus: 1}",
    "data.eval": "3",
    "data.eval.name": "imagenet",
    "data.eval.root": "/nonexistent/Market-1501",
    "data.eval.options": "42",
    "data.height": "0",
    "data.width": "-1",
    "data.batch_size": "0",
    "data.bn_batch_size": "12",
    "data.eval_batch_size": "0",
    "data.num_workers": "-1",
    "data.preload": "3",
    "data.pad": "-2",
    "data.flip_prob": "1.5",
    "data.erasing_prob": "-0.1",
    "data.erasing_ratio_rule": "cubic",
    "model": "3",
    "model.backbone": "resnet_unknown",
    "model.pretrained": "maybe",
    "model.pretrained_path": "/nonexistent/weights.safetensors",
    "model.last_stride": "3",
    "model.pooling": "max",
    "model.init_from": "/nonexistent/model",
    "model.channels_last": "3",
    "model.compile": "3",
    "method": "3",
    "method.name": "clustering",
    "objective": "3",
    "objective.target_branch": "3",
    "objective.neighbour_mode": "1.5",
    "objective.scale": "0",
    "objective.neighbour_eps": "1.5",
    "objective.intra_start_epoch": "-1",
    "objective.intra_weight": "-1",
    "objective.inter_start_epoch": "-1",
    "objective.inter_weight": "-0.5",
    "objective.agnostic_weight": "-0.1",
    "objective.memory_momentum": "1.0",
    "objective.mixup": "3",
    "objective.mixup_start_epoch": "-1",
    "objective.mixup_alpha": "0",
    "objective.mixup_lambda_per": "process",
    "camera_proxy": "3",
    "camera_proxy.proxies": "person",
    "camera_proxy.k1": "0",
    "camera_proxy.k2": "0",
    "camera_proxy.eps": "0",
    "camera_proxy.min_samples": "1",
    "camera_proxy.images_per_proxy": "0",
    "camera_proxy.steps_per_epoch": "0",
    "camera_proxy.cross_camera": "3",
    "camera_proxy.temperature": "0",
    "camera_proxy.memory_momentum": "1",
    "camera_proxy.memory_update": "random",
    "camera_proxy.offline_weight": "-1",
    "camera_proxy.online_weight": "-1",
    "camera_proxy.num_negatives": "0",
    "camera_proxy.online_positives": "0",
    "camera_proxy.online_self_weight": "1.5",
    "optim": "3",
    "optim.optimizer": "adagrad",
    "optim.lr_backbone": "-0.01",
    "optim.lr_new": ".nan",
    "optim.momentum": "1.5",
    "optim.weight_decay": "-1e-4",
    "optim.epochs": "0",
    "optim.milestones": "[2, 1]",
    "optim.gamma": "0",
    "optim.warmup_epochs": "-1",
    "optim.warmup_factor": "0",
    "train": "3",
    "train.seed": "-1",
    "train.mixed_precision": "fp8",
    "train.output_dir": "''",
    "train.max_steps": "0",
    "train.eval_interval": "0",
    "train.checkpoint_interval": "0",
    "train.keep_checkpoints": "0",
    "train.resume": "maybe",
    "train.log_with": "wandb",
    "train.log_interval": "0",
    "train.neighbour_diagnostics": "3",
    "train.deterministic": "3",
    "train.collective_timeout_s": "0",
    "train.save_on_each_node": "3",
}


def config_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every field of every config dataclass, as a dotted key (sections and nested datasets included)."""
    keys = []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        keys.append(key)
        annotation = typing.get_type_hints(cls)[field.name]
        options = (
            typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
        )
        nested = [t for t in (annotation, *options) if dataclasses.is_dataclass(t)]
        if nested:
            keys += config_keys(nested[0], f"{key}.")
    return keys


def test_every_key_has_a_bad_value():
    missing = sorted(set(config_keys()) - set(BAD_VALUES))
    assert not missing, f"add a bad value for each new config key to BAD_VALUES: {missing}"
    assert not set(BAD_VALUES) - set(config_keys()), "BAD_VALUES names keys the config no longer has"


@pytest.mark.parametrize("key", config_keys())
def test_a_bad_value_is_one_line_naming_the_key_before_any_work(key, write_config, tmp_path, capsys, caplog):
    config = write_config(data={"batch_size": 32})
    with caplog.at_level(logging.INFO, logger="reid_accel"):
        status = main(["train", str(config), f"{key}={BAD_VALUES[key]}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("reid-accel: error: ") and key in err[0], err
    assert "Traceback" not in err[0]
    assert not [r for r in caplog.records if r.name.startswith("reid_accel.data")], "a dataset was read"
    assert not (tmp_path / "run").exists(), "the run started"


def test_unreachable_imagenet_weights_are_named_before_any_data_is_read(write_config, tmp_path, capsys, caplog):
    """The tests run offline (HF_HUB_OFFLINE=1), as a machine behind a firewall would."""
    config = write_config(model={"backbone": "resnet18.tv_in1k", "pretrained": True})
    with caplog.at_level(logging.INFO, logger="reid_accel"):
        assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "cannot fetch the ImageNet weights of 'resnet18.tv_in1k' (timm/resnet18.tv_in1k)" in err[0]
    )
    assert "model.pretrained_path=" in err[0]
    assert not [r for r in caplog.records if r.name.startswith("reid_accel.data")], "a dataset was read first"
