"""A user's own data: folders of identities and tables, the splits made for them, and their bad input."""

from pathlib import Path

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reid_accel.config import DomainConfig
from reid_accel.data import dataset_stats, load_benchmark
from reid_accel.data.benchmarks import check_domain, has_cameras, identity_folders, split_options, table
from reid_accel.data.records import NO_CAMERA
from reid_accel.errors import ConfigError, DatasetLayoutError
from reid_accel.metrics.ranking import rank_metrics


def people(root: Path, write_folder, layout: str, *, persons: int = 4, cameras: int = 2, shots: int = 2) -> Path:
    """Write `persons` people seen by `cameras` cameras, `shots` images each, in one of the folder layouts."""
    folders = {}
    for p in range(persons):
        for c in range(cameras):
            names = [f"{p:04d}_c{c + 1}_{k}.png" for k in range(shots)]
            key = {"person": f"p{p}", "person/camera": f"p{p}/cam{c}", "camera/person": f"cam{c}/p{p}"}[layout]
            folders.setdefault(key, []).extend(names)
    return write_folder(root, folders)


def relative(records, root: Path) -> list[tuple[str, int, int]]:
    return [(str(Path(r.path).relative_to(root)), r.pid, r.camid) for r in records]


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        ("person/camera", {"camera_level": 2}),
        ("camera/person", {"camera_level": 1}),
        ("person", {"camera_pattern": r"_c(\d+)_"}),
        ("person", {"camera_pattern": r"_c(?P<camera>\d+)_"}),
    ],
)
def test_folder_cameras_from_a_level_or_a_pattern(tmp_path, write_folder, layout, options):
    root = people(tmp_path / "crops", write_folder, layout)
    split = identity_folders.parse(root, **options)
    assert len(split.train) == 16 and {r.pid for r in split.train} == {0, 1, 2, 3}
    assert {r.camid for r in split.train} == {0, 1}
    # one query per person and camera, each with a gallery image of the same person in the other camera
    assert sorted((r.pid, r.camid) for r in split.query) == [(p, c) for p in range(4) for c in range(2)]
    assert {r.path for r in split.query}.isdisjoint(r.path for r in split.gallery)
    assert len(split.query) + len(split.gallery) == 16
    for query in split.query:
        assert any(g.pid == query.pid and g.camid != query.camid for g in split.gallery)
    assert identity_folders.parse(root, **options) == split  # seeded: the same draw every time
    assert identity_folders.parse(root, **options, split_seed=1) != split


def test_folder_without_cameras_and_a_test_split_by_person(tmp_path, write_folder):
    root = people(tmp_path / "crops", write_folder, "person", persons=6, cameras=1, shots=3)
    split = identity_folders.parse(root, test_fraction=0.5, split_seed=3)
    assert {r.camid for records in (split.train, split.query, split.gallery) for r in records} == {NO_CAMERA}
    train_ids, test_ids = {r.pid for r in split.train}, {r.pid for r in split.query}
    assert len(train_ids) == len(test_ids) == 3 and not train_ids & test_ids
    assert len(split.query) == 3 and len(split.gallery) == 6  # one query per person, the rest gallery
    assert {r.pid for r in split.gallery} == test_ids


def test_table_csv_and_parquet_read_the_same(tmp_path, write_folder):
    root = people(tmp_path / "crops", write_folder, "person", persons=3, cameras=2, shots=1)
    rows = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    lines = ["path,person,camera,note"] + [f"{path},{path[1]},{path.split('_c')[1][0]},x" for path in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    columns = {"path": rows, "person": [int(p[1]) for p in rows], "camera": [p.split("_c")[1][0] for p in rows]}
    pq.write_table(pa.table(columns), root / "labels.parquet")
    from_csv = table.parse(root)
    assert from_csv == table.parse(root, table="labels.parquet")
    assert relative(from_csv.train, root)[:2] == [("p0/0000_c1_0.png", 0, 0), ("p0/0000_c2_0.png", 0, 1)]
    assert len(from_csv.query) == 3 and len(from_csv.gallery) == 3  # two cameras, one shot: one query each
    assert has_cameras("table", root) and has_cameras("table", root, table="labels.parquet")


def test_table_split_column_and_no_camera(tmp_path, write_folder):
    root = people(tmp_path / "crops", write_folder, "person", persons=3, cameras=1, shots=3)
    rows = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    splits = ["train"] * 3 + ["query", "gallery", "gallery"] + ["test"] * 3
    lines = ["person,path,split"] + [f"{path[1]},{path},{s}" for path, s in zip(rows, splits, strict=True)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    split = table.parse(root)
    assert [r.pid for r in split.train] == [0, 0, 0]
    assert sorted(r.pid for r in split.query) == [1, 2] and len(split.gallery) == 4
    assert not has_cameras("table", root)
    with pytest.raises(DatasetLayoutError, match="test_fraction=0.5, but the data has its own split"):
        table.parse(root, test_fraction=0.5)


def test_camera_free_data_loads_evaluates_and_refuses_camera_aware_training(tmp_path, write_folder):
    root = people(tmp_path / "crops", write_folder, "person", persons=3, cameras=1, shots=2)
    dataset = load_benchmark("folders", root, cache_dir=tmp_path / "cache")
    assert {name: stats.cameras for name, stats in dataset_stats(dataset).items()} == dict.fromkeys(dataset, 0)
    query, gallery = dataset["query"], dataset["gallery"]
    # same-camera matches count when there are no cameras: each query finds its person's other image first
    q_pids, g_pids = query["pid"], gallery["pid"]
    features_q = [[1.0 if p == i else 0.0 for i in range(3)] for p in q_pids]
    features_g = [[1.0 if p == i else 0.0 for i in range(3)] for p in g_pids]
    metrics = rank_metrics(features_q, features_g, q_pids, g_pids, query["camid"], gallery["camid"], max_rank=3)
    assert metrics["num_valid_queries"] == 3 and metrics["mAP"] == 1.0
    domain = DomainConfig(name="folders", root=str(root))
    check_domain(domain, "data.target")
    with pytest.raises(ConfigError) as refused:
        check_domain(domain, "data.target", needs_cameras="objective.neighbour_mode=camera_aware")
    assert str(refused.value) == (
        f"data.target: folders at {root} records no camera ids, which objective.neighbour_mode=camera_aware needs; "
        "give the cameras (see the benchmark's options) or change that setting"
    )
    check_domain(
        DomainConfig(name="folders", root=str(root), options={"camera_pattern": r"_c(\d)"}), "x", needs_cameras="y"
    )


def test_a_saved_copy_of_camera_free_data_is_refused_for_camera_aware_training_too(tmp_path, write_folder, caplog):
    root = people(tmp_path / "crops", write_folder, "person", persons=3, cameras=1, shots=2)
    load_benchmark("folders", root, cache_dir=tmp_path / "cache").save_to_disk(tmp_path / "saved")
    with_cameras = people(tmp_path / "cams", write_folder, "person", persons=3, cameras=2, shots=2)
    options = {"camera_pattern": r"_c(\d)"}
    load_benchmark("folders", with_cameras, cache_dir=tmp_path / "cache", **options).save_to_disk(tmp_path / "saved2")
    assert not has_cameras("saved", tmp_path / "saved") and has_cameras("saved", tmp_path / "saved2")
    with pytest.raises(ConfigError, match="saved at .* records no camera ids, which y needs"):
        check_domain(DomainConfig(name="saved", root=str(tmp_path / "saved")), "data.target", needs_cameras="y")
    check_domain(DomainConfig(name="saved", root=str(tmp_path / "saved2")), "data.target", needs_cameras="y")
    with caplog.at_level("WARNING"):
        load_benchmark("saved", tmp_path / "saved")
    assert "records no cameras" in caplog.text
    assert has_cameras("saved", tmp_path / "missing")  # cannot tell: loading it says what is wrong


def test_options_reach_parse(tmp_path):
    assert split_options("folders", {"camera_level": 2}) == (
        {},
        {"camera_level": 2, "camera_pattern": None, "test_fraction": None, "split_seed": 0},
    )
    with pytest.raises(DatasetLayoutError, match=r"'table' has no option 'camera_level' \(its options: split_seed"):
        split_options("table", {"camera_level": 2})


def write_table(root: Path, write_folder, lines: list[str], images: list[str]) -> Path:
    write_folder(root, {"p": images})
    (root / "labels.csv").write_text("\n".join(["path,person,camera", *lines]) + "\n")
    return root


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["p/a.png,1,1", "p/a.png,1,2"], "labels.csv:3: duplicate image {root}/p/a.png (also at {root}/labels.csv:2)"),
        (["p/a.png,1,1", "../x.png,1,2"], "labels.csv:3: ../x.png lies outside the root folder {root}"),
        (["p/a.png,1,1", "p/b.png,2,1"], "labels.csv:2: the only image of person '1'"),
        (["p/a.png,1,1", "p/b.png,1,"], "labels.csv:3: no camera, though other images have one"),
        (["p/a.png,1,1", "p/c.png,1,2"], "labels.csv:3: {root}/p/c.png does not exist"),
        (["p/a.png,1,1", "p/bad.png,1,2"], "labels.csv:3: unreadable image {root}/p/bad.png (empty file)"),
        (["p/a.png,,1"], "labels.csv:2: empty person"),
        (["p/a.png,1,", "p/b.png,1,"], "labels.csv: the column camera is empty; fill it or drop it"),
    ],
    ids=[
        "duplicate",
        "outside-root",
        "one-image",
        "camera-missing",
        "missing-file",
        "unreadable",
        "no-person",
        "no-camera",
    ],
)
def test_table_bad_input(tmp_path, write_folder, lines, expected):
    root = write_table(tmp_path / "crops", write_folder, lines, ["a.png", "b.png"])
    (root / "p" / "bad.png").write_bytes(b"")
    with pytest.raises(DatasetLayoutError) as info:
        table.parse(root)
    message = str(info.value)
    assert message.startswith(str(root / "labels.csv")) and "\n" not in message
    assert expected.format(root=root) in message


@pytest.mark.parametrize(
    ("layout", "options", "culprit", "expected"),
    [
        ({"p0": ["a.png", "b.png"], "p1": []}, {}, "p1", "empty person folder"),
        ({"p0": ["a.png", "b.png"], "p1": ["c.png"]}, {}, "p1/c.png", "the only image of person 'p1'"),
        ({"p0": ["a.png", "bad.png"]}, {}, "p0/bad.png", "unreadable image"),
        ({"p0": ["a_c1.png", "b.png"]}, {"camera_pattern": r"_c(\d)"}, "p0/b.png", "finds no camera in this name"),
        ({"p0/x": ["a.png"]}, {}, "p0/x", "is camera_level=2 meant?"),
        ({"": ["a.png"]}, {}, "a.png", "an image directly in the root"),
        ({"p0": ["a_c1.png", "b_c1.png"]}, {"camera_pattern": r"_c(\d)"}, "", "no person is seen by two cameras"),
    ],
    ids=["empty-person", "one-image", "unreadable", "pattern-misses", "nested", "stray-image", "one-camera"],
)
def test_folder_bad_input(tmp_path, write_folder, layout, options, culprit, expected):
    root = write_folder(tmp_path / "crops", layout)
    if (root / "p0" / "bad.png").exists():
        (root / "p0" / "bad.png").write_bytes(b"\x89PNG but cut short")
    with pytest.raises(DatasetLayoutError) as info:
        identity_folders.parse(root, **options)
    message = str(info.value)
    assert message.startswith(str(root / culprit)) and expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"camera_level": 3}, "option camera_level=3: expected 1"),
        ({"camera_pattern": "_c\\d"}, "needs a group that captures the camera"),
        ({"camera_pattern": "(", "camera_level": None}, "not a regular expression"),
        ({"camera_pattern": "(a)", "camera_level": 1}, "exclude each other"),
        ({"test_fraction": 1.0}, "option test_fraction=1.0: expected a number between 0 and 1"),
        ({"split_seed": "x"}, "option split_seed='x': expected a whole number"),
    ],
)
def test_folder_bad_options(tmp_path, write_folder, options, expected):
    root = write_folder(tmp_path / "crops", {"p0": ["a.png", "b.png"]})
    with pytest.raises(DatasetLayoutError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        identity_folders.parse(root, **options)


def test_both_readers_are_registered_with_their_camera_answer():
    from reid_accel.data.benchmarks import BENCHMARKS

    for name, module in (("folders", identity_folders), ("table", table)):
        assert BENCHMARKS[name] is module.BENCHMARK and module.__doc__
        assert BENCHMARKS[name].has_cameras is module.has_cameras


def test_data_info_takes_a_benchmark_s_options(tmp_path, capsys):
    from reid_accel.cli import main

    for person in ("ann", "bob"):
        for camera in ("north", "south"):
            folder = tmp_path / "crops" / person / camera
            folder.mkdir(parents=True)
            PIL.Image.new("RGB", (8, 16)).save(folder / "0.png")
    argv = ["data", "info", "folders", str(tmp_path / "crops"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--option", "camera_level=2"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "train           4          2       2",
        "query           2          2       1",
        "gallery         2          2       1",
    ]
    assert main([*argv, "--option", "camera_levels=2"]) == 2
    assert "benchmark 'folders' has no option 'camera_levels'" in capsys.readouterr().err
    assert main([*argv, "--option", "camera_level"]) == 2  # not KEY=VALUE: argparse refuses it
