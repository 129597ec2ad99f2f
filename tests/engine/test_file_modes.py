"""A run's files and folders get the permissions the umask gives, as a plain `open` or `mkdir` would, so a team can
share a run folder: checked on a real tiny training, including the files accelerate and safetensors write."""

import os
import stat

import pytest

from reid_accel.config import load_config
from reid_accel.engine.train import train
from reid_accel.folders import RunFolder


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_every_file_and_folder_a_run_leaves_follows_the_umask(write_config, tmp_path, umask):
    output = tmp_path / f"run-{umask:03o}"
    previous = os.umask(umask)
    try:
        train(load_config(write_config(), [f"train.output_dir={output}", "train.max_steps=2"]))
    finally:
        os.umask(previous)
    run = RunFolder(output)
    (checkpoint,) = run.checkpoints()
    expected = [*run.model.files, checkpoint.weights, checkpoint.memory, checkpoint.state, run.metrics, run.log]
    assert all(path.is_file() for path in expected), [p for p in expected if not p.is_file()]
    wrong = {}
    for folder, dirs, files in os.walk(output):
        for name in dirs + files:
            path = os.path.join(folder, name)
            want = (0o777 if name in dirs else 0o666) & ~umask
            if stat.S_IMODE(os.stat(path).st_mode) != want:
                wrong[os.path.relpath(path, output)] = f"{stat.S_IMODE(os.stat(path).st_mode):o}, expected {want:o}"
    assert not wrong, wrong
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o777 & ~umask
