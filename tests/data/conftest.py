import io
import shutil
import tempfile
from pathlib import Path

import datasets
import PIL.Image
import pytest


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    """Keep the default cache of `load_benchmark` inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def many_files_dir():
    """A folder for tens of thousands of tiny files: tmpfs when there is one (creating files on a busy disk
    costs up to a millisecond each), else the system temp folder."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _tiny_image(suffix: str) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (4, 8), (10, 20, 30)).save(buffer, format="PNG" if suffix == ".png" else "JPEG")
    return buffer.getvalue()


@pytest.fixture
def write_folder():
    """Write {relative folder: [file names]} under a root; image names get a tiny image, others a few bytes."""

    def write(root: Path, layout: dict[str, list[str]]) -> Path:
        for folder, names in layout.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                suffix = Path(name).suffix.lower()
                data = _tiny_image(suffix) if suffix in (".jpg", ".jpeg", ".png") else b"not an image"
                (root / folder / name).write_bytes(data)
        return root

    return write
