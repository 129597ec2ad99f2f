"""The same recipe gives the same run on 1, 2 and 4 CPU processes (gloo) and on two simulated machines; a lost
process is reported in one line and the run resumes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reid_accel.config import load_config
from reid_accel.engine.train import train
from reid_accel.folders import RunFolder

# Three steps of epoch 1 with mixup on from the first step, so every random stream of the step is exercised. At the
# tiny config's lr of 0.05 these steps amplify rounding differences ~100x per step (the thread count alone then moves
# weights by 1e-3 after three steps); at 0.01 they stay at rounding level, so any real difference shows.
SMOKE = ["train.max_steps=3", "objective.mixup_start_epoch=0", "optim.lr_backbone=0.01", "optim.lr_new=0.01"]


def _launch_command(processes: int, *, machines: int = 1, machine_rank: int = 0, port: int = 0) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    command += ["--num_machines", str(machines), "--mixed_precision", "no", "--dynamo_backend", "no"]
    if machines > 1:
        command += ["--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1"]
    return command + ["--main_process_port", str(port), "-m", "reid_accel.train"]


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **extra}


def _launch(processes: int, config: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = _launch_command(processes) + [str(config), *overrides]
    return subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def _assert_same_run(reference: Path, other: Path) -> None:
    """Exported weights (BatchNorm buffers included) within 1e-4, exemplar memories within 1e-5."""
    assert (
        _max_difference(load_file(reference / "model/model.safetensors"), load_file(other / "model/model.safetensors"))
        < 1e-4
    )
    memories = [load_file(RunFolder(run).checkpoints()[-1].memory) for run in (reference, other)]
    assert _max_difference(*memories) < 1e-5


def _single_process(config: Path, folder: Path, *overrides: str) -> Path:
    train(load_config(config, [*SMOKE, *overrides, f"train.output_dir={folder}"]))
    return folder


def test_two_processes_run_the_one_process_recipe(write_config, tmp_path):
    config = write_config()
    layout = ["data.batch_size=32", "data.bn_batch_size=16"]
    reference = _single_process(config, tmp_path / "one", *layout)
    done = _launch(2, config, *SMOKE, *layout, f"train.output_dir={tmp_path / 'two'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch: 32 images per step = 2 processes x 1 micro-batch(es) of (8 source + 8 target)" in done.stderr
    assert "exemplar memory identical on 2 process(es)" in done.stderr
    _assert_same_run(reference, tmp_path / "two")
    records = [json.loads((tmp_path / run / "metrics.json").read_text())["run"] for run in ("one", "two")]
    assert (records[0]["micro_batches"], records[1]["micro_batches"]) == (2, 1)


def test_four_processes_run_the_one_process_recipe_with_one_mixup_weight_per_group(write_config, tmp_path):
    config = write_config()
    recipe = ["data.batch_size=32", "data.bn_batch_size=8", "objective.mixup_lambda_per=group"]
    reference = _single_process(config, tmp_path / "one", *recipe)
    done = _launch(4, config, *SMOKE, *recipe, f"train.output_dir={tmp_path / 'four'}")
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(reference, tmp_path / "four")


def test_two_processes_cluster_and_train_the_camera_proxy_method_as_one(write_config, camera_proxy_sections, tmp_path):
    """Same pseudo-labels (gathered features, one clustering, broadcast), same weights and proxy memory, with the
    second epoch's clustering from the trained weights (3 steps an epoch, 4 steps)."""
    config = write_config(**camera_proxy_sections)  # data.bn_batch_size=8: 2 proxies x 4 images per BatchNorm
    reference = _single_process(config, tmp_path / "one", "train.max_steps=4")
    done = _launch(2, config, *SMOKE, "train.max_steps=4", f"train.output_dir={tmp_path / 'two'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch: 16 images per step = 2 processes x 1 micro-batch(es) of 8" in done.stderr
    _assert_same_run(reference, tmp_path / "two")
    labels = [load_file(RunFolder(run).checkpoints()[-1].memory)["labels"] for run in (reference, tmp_path / "two")]
    assert torch.equal(*labels) and (labels[0] >= 0).sum() > len(labels[0]) // 2


def test_two_machines_run_the_one_process_recipe(write_config, tmp_path):
    config = write_config()
    recipe = [*SMOKE, "data.batch_size=32", "data.bn_batch_size=16", f"train.output_dir={tmp_path / 'machines'}"]
    port = _free_port()
    machines = [
        subprocess.Popen(
            _launch_command(2, machines=2, machine_rank=rank, port=port) + [str(config), *recipe],
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [machine.communicate(timeout=600) for machine in machines]
    for machine, (_, err) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, err[-3000:]
    assert len(RunFolder(tmp_path / "machines").checkpoints()) == 1, "the checkpoint is written once"
    reference = _single_process(config, tmp_path / "one", "data.batch_size=32", "data.bn_batch_size=16")
    _assert_same_run(reference, tmp_path / "machines")


def test_a_layout_that_cannot_run_is_refused_before_any_data_is_parsed(write_config, tmp_path):
    refused = _launch(2, write_config(), "data.batch_size=32", "data.bn_batch_size=32")
    assert refused.returncode != 0  # the workers exit 2; the launcher reports a failed child
    assert (
        "needs SyncBatchNorm over 2 processes of 16 images, which needs GPUs; launch 1 process(es)" in refused.stderr
    )
    assert "Parsed" not in refused.stderr and "Traceback" not in refused.stderr.split("reid-accel: error")[0]


def _worker_pid(tag: str, local_rank: int) -> int | None:
    """The pid of the launched worker with `local_rank` among the processes started with `REID_TEST_TAG=tag`."""
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"REID_TEST_TAG={tag}".encode() in environ and f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc")
def test_a_killed_process_is_reported_in_one_line_and_the_run_resumes(write_config, tmp_path):
    config = write_config(optim={"epochs": 500, "milestones": [500]}, train={"eval_interval": 500})
    tag = str(tmp_path)
    run = subprocess.Popen(
        _launch_command(2) + [str(config), "train.collective_timeout_s=30"],
        env=_environment(REID_TEST_TAG=tag),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any(c.complete for c in RunFolder(tmp_path / "run").checkpoints()):
        assert run.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    time.sleep(0.5)  # into the next epoch
    victim = _worker_pid(tag, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0 and time.monotonic() - killed < 60
    ours = [line for line in err.splitlines() if line.startswith("reid-accel: error:")]
    assert len(ours) == 1 and f"rank 0: lost rank 1 (pid {victim}) of 2: the process exited" in ours[0], err[-5000:]
    assert "--resume" in ours[0]

    latest = [c for c in RunFolder(tmp_path / "run").checkpoints() if c.complete][-1]
    saved = json.loads(latest.state.read_text())
    resumed = _launch(2, config, "--resume", f"train.max_steps={saved['global_step'] + 2}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch {saved['epoch']}, step {saved['step_in_epoch']}" in resumed.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
