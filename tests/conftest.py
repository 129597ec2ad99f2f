"""Every test runs offline, with the Hugging Face home, the `datasets` cache and the modules cache inside a temporary
folder.

The environment is set before anything imports huggingface_hub or torch, which read it once at import.
"""

import os
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.mkdtemp(prefix="reid-accel-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HOME=str(_CACHE / "home"),
    HF_DATASETS_CACHE=str(_CACHE / "datasets"),
    HF_MODULES_CACHE=str(_CACHE / "modules"),
    MPLBACKEND="Agg",
)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep instead of spinning: fair to a busy machine

import datasets  # noqa: E402

datasets.config.HF_DATASETS_CACHE = _CACHE / "datasets"


import dataclasses  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def replace_benchmark(monkeypatch):
    """`replace_benchmark(name, **fields)`: the benchmark's registered record with some fields replaced, for one test."""
    from reid_accel.data import benchmarks

    def replace(name: str, **fields) -> None:
        changed = dataclasses.replace(benchmarks.BENCHMARKS[name], **fields)
        monkeypatch.setitem(benchmarks._BY_NAME, name, changed)

    return replace


@pytest.fixture(scope="module")
def encoder():
    """A tiny random encoder (test_resnet, 64x32) in eval mode, with BNNeck statistics a fresh model would not have."""
    import torch

    from reid_accel.modeling import ReIDEncoder

    torch.manual_seed(0)
    model = ReIDEncoder("test_resnet", input_size=[64, 32]).eval()
    with torch.no_grad():
        model.neck.running_mean.normal_()
    return model
