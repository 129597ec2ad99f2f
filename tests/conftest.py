"""Every test runs offline, with the `datasets` cache and the modules cache inside a temporary folder."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep instead of spinning: fair to a busy machine

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402

_CACHE = Path(tempfile.mkdtemp(prefix="reid-accel-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_DATASETS_CACHE=str(_CACHE / "datasets"),
    HF_MODULES_CACHE=str(_CACHE / "modules"),
    MPLBACKEND="Agg",
    TOKENIZERS_PARALLELISM="false",
)
datasets.config.HF_DATASETS_CACHE = _CACHE / "datasets"


@pytest.fixture(scope="session")
def test_cache_root() -> Path:
    return _CACHE
