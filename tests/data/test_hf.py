import concurrent.futures
import functools
import json
import logging
import os
import threading
from pathlib import Path

import datasets
import PIL.Image
import pytest

from reid_accel.data import dataset_stats, decode_image, load_benchmark, verify_images
from reid_accel.data import hf as hf_module
from reid_accel.data.benchmarks import BENCHMARKS, market1501, market_style
from reid_accel.data.benchmarks import synthetic as synthetic_benchmark
from reid_accel.data.records import SplitStats
from reid_accel.errors import DatasetLayoutError
from reid_accel.generators import lookalike


@pytest.fixture
def count_parses(replace_benchmark):
    """Wrap a registered benchmark's parse with a call counter."""

    def install(name: str) -> list:
        calls = []
        original = BENCHMARKS[name].parse

        @functools.wraps(original)  # keeps the signature, from which the options are read
        def counted(*args, **kwargs):
            calls.append(kwargs)
            return original(*args, **kwargs)

        replace_benchmark(name, parse=counted)
        return calls

    return install


def test_columns_features_and_order(tmp_path, cache_dir):
    root = lookalike.write_market1501(tmp_path / "Market-1501-v15.09.15")
    dataset = load_benchmark("market", root, cache_dir=cache_dir)
    assert isinstance(dataset, datasets.DatasetDict)
    assert list(dataset) == ["train", "query", "gallery"]
    assert dataset["train"].features == hf_module.FEATURES
    assert [len(dataset[name]) for name in dataset] == [24, 8, 20]
    for split in dataset.values():
        paths = split.with_format("arrow")["path"].to_pylist()
        assert paths == sorted(paths)
    row = dataset["train"][5]
    expected = market1501.parse(root).train[5]
    assert (row["path"], row["pid"], row["camid"]) == (expected.path, expected.pid, expected.camid)
    assert isinstance(row["image"], PIL.Image.Image)
    assert (row["image"].mode, row["image"].size) == ("RGB", (8, 16))


def test_image_bytes_are_not_copied_into_arrow(tmp_path, cache_dir):
    root = lookalike.write_market1501(tmp_path / "m")
    dataset = load_benchmark("market1501", root, cache_dir=cache_dir)
    images = dataset["gallery"].with_format("arrow")["image"].combine_chunks()
    assert images.field("bytes").null_count == len(images)
    assert images.field("path").to_pylist() == dataset["gallery"].with_format("arrow")["path"].to_pylist()


def test_second_load_reads_the_cache(tmp_path, cache_dir, count_parses):
    calls = count_parses("market1501")
    root = lookalike.write_market1501(tmp_path / "m")
    first = load_benchmark("market1501", root, cache_dir=cache_dir)
    second = load_benchmark("market", root, cache_dir=cache_dir)
    assert len(calls) == 1
    assert second["train"]["path"] == first["train"]["path"]
    assert second["train"]._fingerprint == first["train"]._fingerprint
    # an image's content or time does not matter to the parser, so it does not invalidate the cache
    image = next((root / "query").glob("*.jpg"))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    load_benchmark("market1501", root, cache_dir=cache_dir)
    assert len(calls) == 1
    # only the hidden staging folder is ever partial, and none is left behind
    assert [p.name.startswith("market1501-") for p in cache_dir.iterdir()] == [True]


def test_changed_folder_is_parsed_again(tmp_path, cache_dir, count_parses):
    calls = count_parses("market1501")
    root = lookalike.write_market1501(tmp_path / "m")
    load_benchmark("market1501", root, cache_dir=cache_dir)
    (root / "query" / "0001_c2s1_000999_00.jpg").write_bytes(next((root / "query").glob("*.jpg")).read_bytes())
    grown = load_benchmark("market1501", root, cache_dir=cache_dir)
    assert len(calls) == 2 and len(grown["query"]) == 9
    (root / "query" / "0001_c2s1_000999_00.jpg").unlink()
    assert len(load_benchmark("market1501", root, cache_dir=cache_dir)["query"]) == 8
    assert len(calls) == 2  # back to the first listing, whose tables are cached


def test_changed_split_file_is_parsed_again(tmp_path, cache_dir, count_parses):
    calls = count_parses("msmt17")
    root = lookalike.write_msmt17(tmp_path / "MSMT17_V1")
    assert len(load_benchmark("msmt", root, cache_dir=cache_dir)["query"]) == 8
    list_file = root / "list_query.txt"
    list_file.write_text("".join(list_file.read_text().splitlines(keepends=True)[1:]))
    assert len(load_benchmark("msmt", root, cache_dir=cache_dir)["query"]) == 7
    assert len(calls) == 2


def test_options_and_roots_key_the_cache(tmp_path, cache_dir, count_parses):
    calls = count_parses("cuhk03")
    root = lookalike.write_cuhk03_np(tmp_path / "cuhk03-np")
    labeled = load_benchmark("cuhk03", root, cache_dir=cache_dir)
    detected = load_benchmark("cuhk03", root, cache_dir=cache_dir, subset="detected")
    assert (len(labeled["gallery"]), len(detected["gallery"])) == (16, 17)
    load_benchmark("cuhk03", root, cache_dir=cache_dir, subset="labeled")  # the default, spelled out
    assert calls == [{"subset": "labeled"}, {"subset": "detected"}]
    by_subset_folder = load_benchmark("cuhk03", root / "detected", cache_dir=cache_dir, subset="detected")
    assert len(calls) == 3 and by_subset_folder["train"]["path"] == detected["train"]["path"]
    load_benchmark("cuhk03", root / "detected", cache_dir=cache_dir)  # the folder names its subset: same entry
    assert len(calls) == 3


def test_default_cache_is_under_the_datasets_cache(tmp_path):
    root = lookalike.write_dukemtmc(tmp_path / "DukeMTMC-reID")
    load_benchmark("duke", root)
    (entry,) = (Path(datasets.config.HF_DATASETS_CACHE) / "reid_accel").iterdir()
    assert entry.name.startswith("dukemtmc-")
    assert sorted(p.name for p in entry.iterdir()) == ["gallery.arrow", "query.arrow", "train.arrow"]


def test_a_cache_entry_written_by_another_process_first_is_kept(tmp_path, cache_dir):
    root = lookalike.write_market_style(tmp_path / "world")
    load_benchmark("market_style", root, cache_dir=cache_dir)
    (entry,) = cache_dir.iterdir()
    before = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    # a process that parsed at the same time finishes second: its rename fails and its staging folder goes
    hf_module._write_cache(entry, market_style.parse(root), "another key")
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == before
    assert [p.name for p in cache_dir.iterdir()] == [entry.name]


def test_stats_of_a_loaded_benchmark(tmp_path, cache_dir):
    root = lookalike.write_cuhk03_np(tmp_path / "cuhk03-np")
    stats = dataset_stats(load_benchmark("cuhk", root, cache_dir=cache_dir, subset="detected"))
    assert stats == lookalike.SMALL_STATS["cuhk03"]["detected"]


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("viper", {}, "unknown benchmark 'viper'"),
        ("market1501", {"subset": "labeled"}, "benchmark 'market1501' has no option 'subset'"),
        ("cuhk03", {"subset": "hand"}, "cuhk03 subset 'hand' is unknown"),
    ],
)
def test_unknown_names_and_options(tmp_path, cache_dir, name, options, expected):
    root = lookalike.write_cuhk03_np(tmp_path / "cuhk03-np")
    with pytest.raises(DatasetLayoutError, match=expected):
        load_benchmark(name, root, cache_dir=cache_dir, **options)
    assert not cache_dir.exists()


def test_missing_root(tmp_path, cache_dir):
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'nowhere'}: folder not found"):
        load_benchmark("msmt17", tmp_path / "nowhere", cache_dir=cache_dir)


def test_a_parse_error_leaves_no_cache_entry(tmp_path, cache_dir):
    root = lookalike.write_market1501(tmp_path / "m")
    (root / "query" / "query_0001.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="query_0001.jpg: file name does not follow"):
        load_benchmark("market1501", root, cache_dir=cache_dir)
    assert not cache_dir.exists() or not list(cache_dir.iterdir())


def test_decode_and_verify(tmp_path, cache_dir):
    root = lookalike.write_market_style(tmp_path / "world")
    dataset = load_benchmark("market_style", root, cache_dir=cache_dir)
    assert verify_images(dataset["query"]) == 8
    good = dataset["query"][0]["path"]
    assert decode_image(good).size == (8, 16)
    broken = Path(dataset["query"][3]["path"])
    broken.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetLayoutError, match=f"^{broken}: unreadable image"):
        verify_images(dataset["query"])
    broken.unlink()
    with pytest.raises(DatasetLayoutError, match=f"^{broken}: unreadable image"):
        decode_image(str(broken))


def test_synthetic_generates_once_when_missing(tmp_path, cache_dir, monkeypatch):
    calls = []

    def fake_generate_world(root, *, domain, seed, **size):
        calls.append({"domain": domain, "seed": seed, **size})
        lookalike.write_market_style(root)
        return Path(root)

    monkeypatch.setattr(synthetic_benchmark, "generate_world", fake_generate_world)
    world = tmp_path / "world_b"
    dataset = load_benchmark("synthetic", world, cache_dir=cache_dir, domain="b", seed=3)
    assert calls == [{"domain": "b", "seed": 3}]
    assert len(dataset["train"]) == 24
    load_benchmark("synthetic", world, cache_dir=cache_dir, domain="b", seed=3)
    assert len(calls) == 1
    load_benchmark("synthetic", tmp_path / "world_a", cache_dir=cache_dir, num_ids=12)
    assert calls[1] == {"domain": "a", "seed": 0, "num_ids": 12}


def test_synthetic_with_the_real_generator(tmp_path, cache_dir):
    world = tmp_path / "world"
    dataset = load_benchmark("synthetic", world, cache_dir=cache_dir, domain="a", seed=1, num_ids=2)
    counts = json.loads((world / "world.json").read_text())["counts"]
    assert [len(dataset[name]) for name in ("train", "query", "gallery")] == [
        counts["bounding_box_train"],
        counts["query"],
        counts["bounding_box_test"],
    ]
    assert dataset_stats(dataset)["train"] == SplitStats(images=counts["bounding_box_train"], identities=2, cameras=4)


def test_loads_racing_to_fill_the_cache_agree(tmp_path, cache_dir, replace_benchmark, caplog):
    caplog.set_level(logging.INFO, logger="reid_accel.data.hf")
    root = lookalike.write_market_style(tmp_path / "world")
    racers = 4
    barrier = threading.Barrier(racers)
    original = market_style.parse

    @functools.wraps(original)
    def parse_together(*args, **kwargs):
        barrier.wait(timeout=30)  # every racer has missed the cache before any writes it
        return original(*args, **kwargs)

    replace_benchmark("market_style", parse=parse_together)
    with concurrent.futures.ThreadPoolExecutor(racers) as pool:
        results = list(pool.map(lambda _: load_benchmark("market_style", root, cache_dir=cache_dir), range(racers)))
    assert all(r["gallery"]["path"] == results[0]["gallery"]["path"] for r in results)
    assert [p.name.startswith("market_style-") for p in cache_dir.iterdir()] == [True]  # no staging folder left
    assert sum("Another process cached" in r.getMessage() for r in caplog.records) == racers - 1
