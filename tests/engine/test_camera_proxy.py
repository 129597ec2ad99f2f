"""The camera-proxy method on the engine: per-epoch clustering recorded, state saved and resumed exactly mid-epoch,
and a clustering the losses cannot train on refused in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from reid_accel.cli import main
from reid_accel.config import load_config
from reid_accel.engine.train import train
from reid_accel.folders import RunFolder


def _checkpoint(run_dir):
    latest = RunFolder(run_dir).checkpoints()[-1]
    return load_file(latest.weights), load_file(latest.memory)


def test_every_epoch_clusters_and_records_its_diagnostics(straight_proxy_run):
    history = json.loads((straight_proxy_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for epoch in history:
        assert {"offline", "online", "total"} <= set(epoch)
        assert epoch["clusters/proxies"] >= epoch["clusters/clusters"] >= 2
        for share in ("unclustered_fraction", "multi_camera_fraction", "purity", "adjusted_rand_index"):
            assert -1 <= epoch[f"clusters/{share}"] <= 1
    log = (straight_proxy_run / "train.log").read_text()
    assert "epoch 2 clustering:" in log and "span several cameras; purity" in log
    _, state = _checkpoint(straight_proxy_run)
    assert state["labels"].dtype == torch.int64 and len(state["labels"]) == 90
    assert len(state["memory.features"]) == history[-1]["clusters/proxies"]
    norms = state["memory.features"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_a_run_resumed_mid_epoch_keeps_its_pseudo_labels_and_memory_exactly(
    write_config, camera_proxy_sections, tmp_path, straight_proxy_run
):
    split = f"train.output_dir={tmp_path / 'split'}"
    config = write_config(**camera_proxy_sections)
    train(load_config(config, [split, "train.max_steps=4"]))  # stops after step 1 of epoch 2
    saved = json.loads(RunFolder(tmp_path / "split").checkpoints()[-1].state.read_text())
    assert (saved["epoch"], saved["step_in_epoch"]) == (2, 1)
    train(load_config(config, [split, "train.resume=auto"]))
    (expected, expected_state), (resumed, resumed_state) = (
        _checkpoint(straight_proxy_run),
        _checkpoint(tmp_path / "split"),
    )
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert expected_state.keys() == resumed_state.keys() == {"labels", "memory.features"}
    for key in expected_state:
        assert torch.equal(expected_state[key], resumed_state[key]), key


def test_too_few_proxies_for_a_step_are_refused_in_one_line(write_config, camera_proxy_sections, capsys):
    config = write_config(**camera_proxy_sections)
    assert main(["train", str(config), "data.batch_size=256", "data.bn_batch_size=null"]) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("reid-accel: error:")]  # after the embedding's bar
    assert len(ours) == 1 and "fewer than the 64 a step draws" in ours[0] and "camera_proxy.eps" in ours[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("camera_proxy.eps=1.5", "camera_proxy.eps: expected a number in (0, 1]"),
        ("camera_proxy.min_samples=1", "camera_proxy.min_samples: expected an integer >= 2"),
        ("camera_proxy.images_per_proxy=3", "does not divide data.batch_size=16"),
        ("camera_proxy.k2=12", "camera_proxy.k2: 12 exceeds camera_proxy.k1=10"),
        ("data.target=null", "data.target: the camera_proxy method clusters"),
    ],
)
def test_bad_clustering_settings_are_one_line_before_any_work(
    write_config, camera_proxy_sections, capsys, tmp_path, override, message
):
    assert main(["train", str(write_config(**camera_proxy_sections)), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("sections", "setting"),
    [
        ({}, "objective.neighbour_mode=camera_aware"),
        ({"method": {"name": "camera_proxy"}}, "camera_proxy.proxies=camera"),
        (
            {"method": {"name": "camera_proxy"}, "camera_proxy": {"proxies": "cluster", "cross_camera": True}},
            "cross_camera",
        ),
    ],
)
def test_a_target_without_cameras_is_refused_by_the_setting_that_needs_them(
    write_config, tiny_worlds, tmp_path, capsys, sections, setting
):
    crops = tmp_path / "crops"  # the tiny target's training images, one folder per person, no camera recorded
    for image in sorted((tiny_worlds["b"] / "bounding_box_train").iterdir()):
        person = crops / image.name.split("_")[0]
        person.mkdir(parents=True, exist_ok=True)
        (person / image.name).symlink_to(image)
    config = write_config(**sections)
    assert main(["train", str(config), f"data.target.root={crops}", "data.target.name=folders"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("reid-accel: error: data.target: folders at") and setting in line
    assert not (tmp_path / "run").exists()
