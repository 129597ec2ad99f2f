"""Two CPU processes through `accelerate launch` (gloo): the run finishes and the memories stay identical."""

import os
import subprocess
import sys

from reid_accel.engine.state import checkpoint_dirs


def _launch(config, *overrides):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += ["-m", "reid_accel.train", str(config), *overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_finish_with_identical_memories(write_config, tmp_path):
    done = _launch(write_config(train={"checkpoint_interval": 2}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch: 2 processes x (8 source + 8 target)" in done.stderr
    assert "exemplar memory identical on 2 process(es)" in done.stderr
    assert len(checkpoint_dirs(tmp_path / "run")) == 1
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()

    refused = _launch(write_config("odd.yaml", data={"batch_size": 34}, train={"output_dir": str(tmp_path / "odd")}))
    assert refused.returncode != 0
    assert "data.batch_size: 34 must be divisible by 2 x 2 processes" in refused.stderr
    assert "Traceback" not in refused.stderr.split("reid-accel: error")[0]
