from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from reid_accel.data import (
    CrossDomainBatchSampler,
    CrossDomainDataset,
    ReIDImageDataset,
    build_transform,
    load_benchmark,
)
from reid_accel.errors import DatasetLayoutError
from reid_accel.layout import BatchLayout

TRANSFORM = build_transform(16, 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def domains(tmp_path, write_folder, cache_dir):
    """Source: pids 12, 3, 40 in cameras c1/c2; target: 5 images in cameras c1, c3, c5 (ids 0-based 0, 2, 4)."""
    source_root = write_folder(
        tmp_path / "source",
        {
            "bounding_box_train": ["0012_c1_a.jpg", "0003_c2_a.jpg", "0040_c1_a.jpg", "0003_c1_b.jpg"],
            "query": ["0100_c1_a.jpg"],
            "bounding_box_test": ["0100_c2_a.jpg"],
        },
    )
    target_root = write_folder(
        tmp_path / "target",
        {
            "bounding_box_train": [
                "0007_c3_a.jpg",
                "0001_c1_a.jpg",
                "0007_c5_b.jpg",
                "0002_c3_c.jpg",
                "0009_c1_d.jpg",
            ],
            "query": ["0200_c1_a.jpg"],
            "bounding_box_test": ["0200_c5_a.jpg"],
        },
    )
    source = load_benchmark("market_style", source_root, cache_dir=cache_dir)
    target = load_benchmark("market_style", target_root, cache_dir=cache_dir)
    return source["train"], target["train"]


def test_single_split_items(domains):
    _, target = domains
    dataset = ReIDImageDataset(target, TRANSFORM)
    assert len(dataset) == 5
    item = dataset[2]
    # sorted paths: 0001_c1_a, 0002_c3_c, 0007_c3_a, 0007_c5_b, 0009_c1_d
    assert (item["pid"], item["camid"], item["index"]) == (7, 2, 2)
    assert item["pixel_values"].shape == (3, 16, 8)
    torch.testing.assert_close(
        item["pixel_values"][:, 0, 0], torch.tensor([10, 20, 30]) / 255 * 2 - 1, atol=0.05, rtol=0
    )


def test_preloaded_items_are_the_decoded_ones_and_need_no_files(domains):
    source, target = domains
    loaded = CrossDomainDataset(source, target, TRANSFORM)
    preloaded = CrossDomainDataset(source, target, TRANSFORM, preload=True)
    for path in ReIDImageDataset(target, TRANSFORM).paths:  # the files are no longer needed
        Path(path).unlink()
    for index in range(len(loaded._source)):
        assert torch.equal(preloaded[index]["pixel_values"], loaded._source[index]["pixel_values"])
    assert preloaded[len(source) + 3]["index"] == 3 and preloaded[len(source) + 3]["pixel_values"].shape == (3, 16, 8)


def test_cross_domain_index_space_relabelling_and_cameras(domains):
    source, target = domains
    dataset = CrossDomainDataset(source, target, TRANSFORM)
    assert len(dataset) == 4 + 5
    assert dataset.num_source_classes == 3
    assert dataset.num_target_cameras == 5  # cameras c1..c5 -> ids 0..4 (c2, c4 hold no training image)
    assert dataset.target_camids.dtype == torch.long
    assert dataset.target_camids.tolist() == [0, 2, 2, 4, 0]
    # source rows sorted by path: 0003_c1_b, 0003_c2_a, 0012_c1_a, 0040_c1_a; labels from sorted pids 3, 12, 40
    source_items = [dataset[i] for i in range(4)]
    assert [it["pid"] for it in source_items] == [0, 0, 1, 2]
    assert [it["camid"] for it in source_items] == [0 + 5, 1 + 5, 0 + 5, 0 + 5]
    assert {(it["index"], it["domain"]) for it in source_items} == {(-1, 0)}
    target_items = [dataset[4 + k] for k in range(5)]
    assert [it["pid"] for it in target_items] == [-1] * 5
    assert [it["camid"] for it in target_items] == [0, 2, 2, 4, 0]
    assert [it["index"] for it in target_items] == [0, 1, 2, 3, 4]
    assert {it["domain"] for it in target_items} == {1}
    with pytest.raises(IndexError):
        dataset[9]


def test_source_only(domains):
    source, _ = domains
    dataset = CrossDomainDataset(source, None, TRANSFORM)
    assert len(dataset) == 4 and dataset.num_target_cameras == 0
    assert dataset.target_camids.shape == (0,)
    assert [dataset[i]["camid"] for i in range(4)] == [0, 1, 0, 0]


def test_loader_with_the_sampler_gives_half_and_half_batches(domains):
    source, target = domains
    dataset = CrossDomainDataset(source, target, TRANSFORM)
    sampler = CrossDomainBatchSampler(len(source), len(target), BatchLayout.plan(4, 1))
    batches = list(DataLoader(dataset, batch_sampler=sampler))
    assert len(batches) == 3  # ceil(5 / 2) in epoch 1
    for batch in batches:
        assert batch["pixel_values"].shape == (4, 3, 16, 8)
        assert batch["domain"].tolist() == [0, 0, 1, 1]
        assert batch["index"][:2].tolist() == [-1, -1] and (batch["index"][2:] >= 0).all()
        assert (batch["camid"][:2] >= 5).all() and (batch["camid"][2:] < 5).all()
    slots = {int(i) for batch in batches for i in batch["index"][2:]}
    assert slots == set(range(5))


def test_unreadable_image_names_its_path(domains):
    _, target = domains
    dataset = ReIDImageDataset(target, TRANSFORM)
    broken = dataset.paths[1]
    with open(broken, "wb") as file:
        file.write(b"GIF89a broken")
    with pytest.raises(DatasetLayoutError, match=f"^{broken}: unreadable image"):
        dataset[1]
    crossed = CrossDomainDataset(domains[0], target, TRANSFORM)
    with pytest.raises(DatasetLayoutError, match=broken):
        crossed[4 + 1]
