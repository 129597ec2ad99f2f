from pathlib import Path

import pytest
import yaml

from reid_accel.generators.synthetic import generate_world


@pytest.fixture(scope="session")
def tiny_worlds(tmp_path_factory) -> dict[str, Path]:
    """Two small synthetic domains (6 training identities each), drawn once per test session."""
    root = tmp_path_factory.mktemp("worlds")
    return {domain: generate_world(root / domain, domain=domain, seed=0, num_ids=6) for domain in "ab"}


def tiny_config(folder: Path, worlds: dict[str, Path], name: str = "tiny.yaml", **sections) -> Path:
    """Write a tiny CAIL experiment (test_resnet at 64x32, 16 + 16 per step) with `sections` merged in."""
    tree = {
        "data": {
            "source": {"name": "synthetic", "root": str(worlds["a"])},
            "target": {"name": "synthetic", "root": str(worlds["b"])},
            "height": 64,
            "width": 32,
            "batch_size": 32,
            "eval_batch_size": 64,
            "num_workers": 0,
        },
        "model": {"backbone": "test_resnet", "pretrained": False},
        "objective": {"intra_start_epoch": 1, "inter_start_epoch": 1},
        "optim": {"epochs": 2, "milestones": [2], "lr_backbone": 0.05, "lr_new": 0.05},
        "train": {
            "output_dir": str(folder / "run"),
            "eval_interval": 1,
            "checkpoint_interval": 1,
            "mixed_precision": "no",
            "log_with": "none",
            "deterministic": True,
        },
    }
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    path = folder / name
    path.write_text(yaml.safe_dump(tree))
    return path


# The camera-proxy method on the tiny world (90 target images, 5 cameras): small k-NN lists and a loose DBSCAN give
# about ten clusters, 2 proxies x 4 images per BatchNorm group, 3 steps an epoch.
CAMERA_PROXY = {
    "method": {"name": "camera_proxy"},
    "camera_proxy": {
        "k1": 10,
        "k2": 3,
        "eps": 0.6,
        "min_samples": 2,
        "steps_per_epoch": 3,
        "num_negatives": 4,
        "online_positives": 2,
    },
    "data": {"batch_size": 16, "bn_batch_size": 8},
}


@pytest.fixture
def write_config(tmp_path, tiny_worlds):
    return lambda name="tiny.yaml", **sections: tiny_config(tmp_path, tiny_worlds, name, **sections)


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, tiny_worlds) -> Path:
    """The reference: the tiny experiment trained for 2 epochs in one go (deterministic settings)."""
    from reid_accel.config import load_config
    from reid_accel.engine.train import train

    folder = tmp_path_factory.mktemp("straight")
    train(load_config(tiny_config(folder, tiny_worlds), [f"train.output_dir={folder / 'run'}"]))
    return folder / "run"


@pytest.fixture
def camera_proxy_sections() -> dict:
    return CAMERA_PROXY


@pytest.fixture(scope="session")
def straight_proxy_run(tmp_path_factory, tiny_worlds) -> Path:
    """The camera-proxy reference: the tiny experiment, two epochs of 3 steps in one go."""
    from reid_accel.config import load_config
    from reid_accel.engine.train import train

    folder = tmp_path_factory.mktemp("straight-proxy")
    train(load_config(tiny_config(folder, tiny_worlds, **CAMERA_PROXY)))
    return folder / "run"
