"""The synthetic world: Market-style layout, counts, determinism, atomic writes, and camera confusion."""

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_accel.errors import ConfigError, DatasetLayoutError
from reid_accel.generators import synthetic
from reid_accel.generators.synthetic import DEFAULT_STYLE_STRENGTH, SPLIT_DIRS, WORLD_FILE, generate_world

MARKET_NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_00\.png$")
NUM_IDS = 6
NUM_TEST_IDS = 4  # round(6 * 50 / 80)


def parse(folder: Path) -> list[tuple[int, int]]:
    """(pid, camera) of every file, asserting each name is Market style."""
    rows = []
    for path in sorted(folder.iterdir()):
        match = MARKET_NAME.match(path.name)
        assert match is not None, path.name
        rows.append((int(match.group(1)), int(match.group(2))))
    return rows


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) as float64 in [0, 1], pids (N,) and cameras (N,) of one split folder."""
    paths = sorted(folder.iterdir())
    images = np.stack([np.asarray(Image.open(path)) for path in paths]).astype(np.float64) / 255.0
    pids, cams = np.array(parse(folder)).T
    return images, pids, cams


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("worlds")
    return {domain: generate_world(base / domain, domain=domain, num_ids=NUM_IDS) for domain in "ab"}


@pytest.mark.parametrize(("domain", "num_cams"), [("a", 4), ("b", 5)])
def test_layout_counts_and_pids(worlds, domain, num_cams):
    root = worlds[domain]
    assert sorted(path.name for path in root.iterdir()) == sorted([*SPLIT_DIRS, WORLD_FILE])
    train, query, gallery = (parse(root / split) for split in SPLIT_DIRS)
    train_ids, test_ids = set(range(1, NUM_IDS + 1)), set(range(NUM_IDS + 1, NUM_IDS + NUM_TEST_IDS + 1))
    cams = range(1, num_cams + 1)
    # every identity under every camera: 3 train images, 1 query, 2 gallery; plus 2 distractors per camera
    assert sorted(train) == sorted((pid, cam) for pid in train_ids for cam in cams for _ in range(3))
    assert sorted(query) == sorted((pid, cam) for pid in test_ids for cam in cams)
    people = [(pid, cam) for pid, cam in gallery if pid != 0]
    assert sorted(people) == sorted((pid, cam) for pid in test_ids for cam in cams for _ in range(2))
    assert sorted(cam for pid, cam in gallery if pid == 0) == sorted(list(cams) * 2)
    assert len(train) == NUM_IDS * num_cams * 3 and len(query) == NUM_TEST_IDS * num_cams
    assert len(gallery) == NUM_TEST_IDS * num_cams * 2 + 2 * num_cams
    # frames are unique across the whole world, so no two files can collide
    frames = [MARKET_NAME.match(p.name).group(3) for split in SPLIT_DIRS for p in (root / split).iterdir()]
    assert len(frames) == len(set(frames))
    record = json.loads((root / WORLD_FILE).read_text())
    assert record["version"] == synthetic.GENERATOR_VERSION
    assert record["num_cameras"] == num_cams
    assert record["counts"] == {
        "bounding_box_train": len(train),
        "query": len(query),
        "bounding_box_test": len(gallery),
    }
    assert record["parameters"] == {
        "domain": domain,
        "seed": 0,
        "num_ids": NUM_IDS,
        "num_test_ids": NUM_TEST_IDS,
        "height": 64,
        "width": 32,
        "style_strength": DEFAULT_STYLE_STRENGTH,
    }


def test_same_arguments_same_bytes_other_seed_other_pixels(worlds, tmp_path):
    again = generate_world(tmp_path / "again", domain="a", num_ids=NUM_IDS)
    assert file_bytes(again) == file_bytes(worlds["a"])
    other = generate_world(tmp_path / "other", domain="a", num_ids=NUM_IDS, seed=1)
    first, _, _ = load(worlds["a"] / "bounding_box_train")
    second, _, _ = load(other / "bounding_box_train")
    assert sorted(p.name for p in (other / "query").iterdir()) == sorted(p.name for p in (again / "query").iterdir())
    assert np.abs(first - second).mean() > 0.05


def test_image_size_is_honoured(tmp_path):
    root = generate_world(tmp_path / "w", domain="b", num_ids=2, height=48, width=24)
    for split in SPLIT_DIRS:
        for path in (root / split).iterdir():
            with Image.open(path) as image:
                assert (image.size, image.mode) == ((24, 48), "RGB")


def test_domains_differ_in_palette(tmp_path):
    """Without camera styles (strength 0) only the people differ: domain a dresses them far more colourfully."""
    saturation = {}
    for domain in "ab":
        images, _, _ = load(
            generate_world(tmp_path / domain, domain=domain, num_ids=NUM_IDS, style_strength=0.0)
            / "bounding_box_train"
        )
        saturation[domain] = (images.max(-1) - images.min(-1)).mean()
    assert saturation["a"] > 1.5 * saturation["b"]


def top1(images: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each image, whether its nearest other image in pixel space shares its camera, and its identity."""
    flat = images.reshape(len(images), -1)
    dist = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(1)
    return cams[nearest] == cams, pids[nearest] == pids


@pytest.mark.parametrize("domain", ["a", "b"])
def test_cameras_confuse_pixels_at_default_strength(worlds, domain):
    same_cam, same_id = top1(*load(worlds[domain] / "bounding_box_train"))
    assert same_cam.mean() > 0.5
    if domain == "b":
        # the harsh domain: another person under the same camera beats the same person under another one
        assert (same_cam & ~same_id).mean() > (~same_cam & same_id).mean()


def test_strength_zero_makes_cameras_alike(tmp_path):
    root = generate_world(tmp_path / "w", domain="b", num_ids=NUM_IDS, style_strength=0.0)
    same_cam, same_id = top1(*load(root / "bounding_box_train"))
    assert same_id.mean() > 0.85
    assert same_cam.mean() < 0.5


def test_complete_world_is_reused_untouched(worlds):
    root = worlds["b"]
    stamps = {path: path.stat().st_mtime_ns for path in root.rglob("*")}
    assert generate_world(root, domain="b", num_ids=NUM_IDS) == root
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == stamps
    with pytest.raises(DatasetLayoutError, match="another synthetic world"):
        generate_world(root, domain="b", num_ids=NUM_IDS, seed=3)


def test_stale_partial_folder_does_not_matter(tmp_path):
    stale = tmp_path / ".w.partial-dead"
    (stale / "bounding_box_train").mkdir(parents=True)
    (stale / "bounding_box_train" / "0001_c1s1_000001_00.png").write_bytes(b"truncated")
    root = generate_world(tmp_path / "w", domain="a", num_ids=2)
    assert (root / WORLD_FILE).is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == [".w.partial-dead", "w"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_second_camera(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    render = synthetic._render
    monkeypatch.setattr(synthetic, "_render", fail_on_second_camera)
    with pytest.raises(KeyboardInterrupt):
        generate_world(tmp_path / "w", domain="a", num_ids=2)
    assert list(tmp_path.iterdir()) == []


def test_racing_writers_agree(tmp_path):
    results, errors = [], []

    def write():
        try:
            results.append(generate_world(tmp_path / "w", domain="a", num_ids=2))
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [tmp_path / "w"] * 3
    assert [path.name for path in tmp_path.iterdir()] == ["w"]
    assert json.loads((tmp_path / "w" / WORLD_FILE).read_text())["counts"]["bounding_box_train"] == 2 * 4 * 3


def test_empty_folder_is_filled_and_foreign_folder_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert (generate_world(tmp_path / "empty", domain="a", num_ids=2) / WORLD_FILE).is_file()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetLayoutError, match="foreign"):
        generate_world(tmp_path / "foreign", domain="a", num_ids=2)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"domain": "c"}, "domain 'c'"),
        ({"domain": "a", "style_strength": 1.5}, "style_strength=1.5"),
        ({"domain": "a", "num_ids": 1}, "num_ids=1"),
        ({"domain": "a", "height": 8}, "8x32"),
    ],
)
def test_bad_arguments_name_the_value(tmp_path, arguments, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate_world(tmp_path / "w", **arguments)
    assert not (tmp_path / "w").exists()
