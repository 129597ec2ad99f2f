"""A split that carries its image bytes (saved with `save_to_disk`, or pushed to the Hub and loaded back) is read
from those bytes: its paths point to a folder that is gone."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from reid_accel.data import CrossDomainDataset, ReIDImageDataset, build_transform, load_benchmark
from reid_accel.data.hf import column_values, stores_image_bytes
from reid_accel.errors import DatasetLayoutError
from reid_accel.generators.lookalike import write_market1501

RAW = build_transform(16, 8, normalize=False)  # uint8 pixels, compared exactly


def _pixels(dataset) -> torch.Tensor:
    return torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])  # (N, 3, 16, 8)


def test_a_saved_dataset_reads_its_pixels_after_the_folder_is_deleted(tmp_path, cache_dir):
    root = write_market1501(tmp_path / "market")
    cached = load_benchmark("market1501", root, cache_dir=cache_dir)
    assert not stores_image_bytes(cached["train"])  # the cache holds paths only
    expected = {name: _pixels(ReIDImageDataset(split, RAW)) for name, split in cached.items()}
    cached.save_to_disk(tmp_path / "saved")
    shutil.rmtree(root)

    loaded = load_from_disk(str(tmp_path / "saved"))
    assert all(stores_image_bytes(split) for split in loaded.values())
    assert not Path(column_values(loaded["query"], "path")[0]).exists()
    for name, split in loaded.items():
        dataset = ReIDImageDataset(split, RAW)
        assert torch.equal(_pixels(dataset), expected[name]), name
        assert dataset.pids == column_values(cached[name], "pid")
    training = CrossDomainDataset(loaded["train"], loaded["train"], RAW)
    source, target = training[0], training[len(loaded["train"]) + 2]
    assert torch.equal(source["pixel_values"], expected["train"][0])
    assert torch.equal(target["pixel_values"], expected["train"][2]) and target["index"] == 2


def test_a_saved_dataset_loads_by_name_after_the_folder_is_deleted(tmp_path, cache_dir):
    root = write_market1501(tmp_path / "market")
    cached = load_benchmark("market1501", root, cache_dir=cache_dir)
    expected = {name: _pixels(ReIDImageDataset(split, RAW)) for name, split in cached.items()}
    cached.save_to_disk(tmp_path / "saved")
    shutil.rmtree(root)

    loaded = load_benchmark("saved", tmp_path / "saved")
    assert list(loaded) == ["train", "query", "gallery"]
    for name, split in loaded.items():
        assert torch.equal(_pixels(ReIDImageDataset(split, RAW)), expected[name]), name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, "folder not found; expected a folder written by save_to_disk"),
        (lambda folder: folder.mkdir(), "not a dataset folder written by save_to_disk"),
        (lambda folder: _saved(folder, splits=("train", "query")), "no split gallery (it has train, query)"),
        (lambda folder: _saved(folder, drop="camid"), "split train has no column camid"),
    ],
    ids=["missing", "not saved", "no gallery", "no camid"],
)
def test_a_folder_that_is_not_a_saved_reid_dataset_is_named(tmp_path, make, message):
    folder = tmp_path / "saved"
    make(folder)
    with pytest.raises(DatasetLayoutError, match=re.escape(f"{folder}: {message}")):
        load_benchmark("saved", folder)


def _saved(folder: Path, *, splits=("train", "query", "gallery"), drop: str | None = None) -> None:
    columns = {"image": [None], "pid": [1], "camid": [0], "path": ["0001_c1_0001.jpg"]}
    columns.pop(drop, None)
    DatasetDict({name: Dataset.from_dict(columns) for name in splits}).save_to_disk(folder)
