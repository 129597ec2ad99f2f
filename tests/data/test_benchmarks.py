from pathlib import Path

import pytest

from reid_accel.data.benchmarks import (
    BENCHMARKS,
    cuhk03_np,
    dukemtmc,
    get_benchmark,
    market1501,
    market_style,
    msmt17,
    official_stats,
    split_options,
)
from reid_accel.data.records import Benchmark, ImageRecord, SplitStats
from reid_accel.errors import DatasetLayoutError
from reid_accel.generators import lookalike


def rows(records, root: Path) -> list[tuple[str, int, int]]:
    return [(str(Path(r.path).relative_to(root)), r.pid, r.camid) for r in records]


def stats_of(records) -> SplitStats:
    return SplitStats.of([r.pid for r in records], [r.camid for r in records])


# --- parsers on hand-written folders ---------------------------------------------------------------------------


def test_market1501_drops_junk_keeps_distractors_ignores_non_images(tmp_path, write_folder):
    root = write_folder(
        tmp_path / "Market-1501-v15.09.15",
        {
            "bounding_box_train": [
                "0007_c6s2_000001_01.jpg",
                "0002_c3s1_000551_01.jpg",
                "0002_c1s1_000451_03.jpg",
                "Thumbs.db",
            ],
            "query": ["0002_c2s1_000301_01.jpg", "-1_c1s1_000401_03.jpg"],
            "bounding_box_test": ["0002_c5s1_000201_02.jpg", "-1_c4s1_000101_00.jpg", "0000_c1s1_000151_01.jpg"],
        },
    )
    split = market1501.parse(root)
    assert rows(split.train, root) == [
        ("bounding_box_train/0002_c1s1_000451_03.jpg", 2, 0),
        ("bounding_box_train/0002_c3s1_000551_01.jpg", 2, 2),
        ("bounding_box_train/0007_c6s2_000001_01.jpg", 7, 5),
    ]
    assert rows(split.query, root) == [("query/0002_c2s1_000301_01.jpg", 2, 1)]
    assert rows(split.gallery, root) == [
        ("bounding_box_test/0000_c1s1_000151_01.jpg", 0, 0),
        ("bounding_box_test/0002_c5s1_000201_02.jpg", 2, 4),
    ]
    assert all(Path(r.path).is_absolute() for r in split.train)


def test_dukemtmc_names(tmp_path, write_folder):
    root = write_folder(
        tmp_path / "DukeMTMC-reID",
        {
            "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0000001.jpg"],
            "query": ["0005_c1_f0000002.jpg"],
            "bounding_box_test": ["0005_c3_f0000003.jpg", "7140_c4_f0000004.jpg"],
        },
    )
    split = dukemtmc.parse(root)
    assert rows(split.train, root) == [
        ("bounding_box_train/0001_c2_f0046182.jpg", 1, 1),
        ("bounding_box_train/0001_c8_f0000001.jpg", 1, 7),
    ]
    assert rows(split.gallery, root) == [
        ("bounding_box_test/0005_c3_f0000003.jpg", 5, 2),
        ("bounding_box_test/7140_c4_f0000004.jpg", 7140, 3),
    ]


@pytest.fixture
def cuhk_root(tmp_path, write_folder) -> Path:
    root = tmp_path / "cuhk03-np"
    for subset, extra in (("labeled", "0003_c2_2.png"), ("detected", "0004_c1_1.png")):
        write_folder(
            root / subset,
            {
                "bounding_box_train": ["0001_c1_1.png", "0001_c2_3.png", extra],
                "query": ["0010_c1_1.png"],
                "bounding_box_test": ["0010_c2_2.png"],
            },
        )
    return root


def test_cuhk03_subsets(cuhk_root):
    labeled = cuhk03_np.parse(cuhk_root)
    assert rows(labeled.train, cuhk_root) == [
        ("labeled/bounding_box_train/0001_c1_1.png", 1, 0),
        ("labeled/bounding_box_train/0001_c2_3.png", 1, 1),
        ("labeled/bounding_box_train/0003_c2_2.png", 3, 1),
    ]
    detected = cuhk03_np.parse(cuhk_root, subset="detected")
    assert rows(detected.train, cuhk_root)[2] == ("detected/bounding_box_train/0004_c1_1.png", 4, 0)
    assert rows(detected.query, cuhk_root) == [("detected/query/0010_c1_1.png", 10, 0)]
    # root may be the subset folder itself: without a subset option, that subset is read
    assert cuhk03_np.parse(cuhk_root / "detected", subset="detected") == detected
    assert cuhk03_np.parse(cuhk_root / "detected") == detected
    assert cuhk03_np.parse(cuhk_root / "labeled") == labeled
    with pytest.raises(DatasetLayoutError) as contradiction:
        cuhk03_np.parse(cuhk_root / "detected", subset="labeled")
    assert str(contradiction.value) == (
        f"{cuhk_root / 'detected'}: this is the 'detected' subset folder, but subset='labeled' was asked; "
        "pass subset='detected' or leave it out"
    )
    with pytest.raises(DatasetLayoutError, match=r"subset 'detect' is unknown"):
        cuhk03_np.parse(cuhk_root, subset="detect")


def write_msmt(root: Path, write_folder) -> Path:
    write_folder(
        root,
        {
            "train/0000": ["0000_000_01_0303morning_0015_0.jpg", "0000_001_03_0303morning_0016_0.jpg"],
            "train/0001": ["0001_000_15_0303noon_0100_1.jpg"],
            "test/0000": ["0000_000_02_0113morning_0001_0.jpg", "0000_001_07_0113noon_0002_0.jpg"],
        },
    )
    (root / "list_train.txt").write_text(
        "0000/0000_001_03_0303morning_0016_0.jpg 0\n0000/0000_000_01_0303morning_0015_0.jpg 0\n"
    )
    (root / "list_val.txt").write_text("0001/0001_000_15_0303noon_0100_1.jpg 1\n")
    (root / "list_query.txt").write_text("0000/0000_000_02_0113morning_0001_0.jpg 0\n")
    (root / "list_gallery.txt").write_text("0000/0000_001_07_0113noon_0002_0.jpg 0\n\n")
    return root


def test_msmt17_train_is_train_plus_val_camera_from_third_field(tmp_path, write_folder):
    root = write_msmt(tmp_path / "MSMT17_V1", write_folder)
    split = msmt17.parse(root)
    assert rows(split.train, root) == [
        ("train/0000/0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("train/0000/0000_001_03_0303morning_0016_0.jpg", 0, 2),
        ("train/0001/0001_000_15_0303noon_0100_1.jpg", 1, 14),
    ]
    assert rows(split.query, root) == [("test/0000/0000_000_02_0113morning_0001_0.jpg", 0, 1)]
    assert rows(split.gallery, root) == [("test/0000/0000_001_07_0113noon_0002_0.jpg", 0, 6)]


def test_market_style_accepts_jpg_jpeg_png(tmp_path, write_folder):
    root = write_folder(
        tmp_path / "world",
        {
            "bounding_box_train": ["0003_c1s1_000001_00.png", "0004_c12_x.JPEG", "notes.txt"],
            "query": ["0009_c2.jpg"],
            "bounding_box_test": ["0000_c2s1_000002_00.png", "0009_c3_a.jpg"],
        },
    )
    split = market_style.parse(root)
    assert rows(split.train, root) == [
        ("bounding_box_train/0003_c1s1_000001_00.png", 3, 0),
        ("bounding_box_train/0004_c12_x.JPEG", 4, 11),
    ]
    assert [r.pid for r in split.gallery] == [0, 9]


def test_parsers_are_repeatable(tmp_path, cuhk_root):
    root = lookalike.write_market1501(tmp_path / "m")
    assert market1501.parse(root) == market1501.parse(root)
    assert cuhk03_np.parse(cuhk_root) == cuhk03_np.parse(cuhk_root)


# --- look-alike folders: every writer gives exactly the counts it was asked for --------------------------------


@pytest.mark.parametrize(
    ("name", "module"),
    [("market1501", market1501), ("dukemtmc", dukemtmc), ("msmt17", msmt17), ("market_style", market_style)],
)
def test_lookalike_counts(tmp_path, name, module):
    root = lookalike.WRITERS[name](tmp_path / name)
    split = module.parse(root)
    for split_name, records in split.items():
        expected = lookalike.SMALL_STATS[name][split_name]
        got = stats_of(records)
        assert (got.images, got.identities) == (expected.images, expected.identities)
        assert got.cameras <= expected.cameras
    # every query identity is in the gallery; train and test identities are disjoint (MSMT17 numbers both from 0)
    train_ids = {r.pid for r in split.train}
    query_ids = {r.pid for r in split.query}
    assert query_ids <= {r.pid for r in split.gallery}
    assert not train_ids & query_ids if name != "msmt17" else min(train_ids) == min(query_ids) == 0


def test_lookalike_cuhk03_counts_per_subset(tmp_path):
    root = lookalike.write_cuhk03_np(tmp_path / "cuhk03-np")
    for subset in ("labeled", "detected"):
        split = cuhk03_np.parse(root, subset=subset)
        for split_name, records in split.items():
            expected = lookalike.SMALL_STATS["cuhk03"][subset][split_name]
            assert stats_of(records) == expected


def test_official_counts_market1501(many_files_dir):
    root = lookalike.write_market1501(
        many_files_dir / "Market-1501-v15.09.15", stats=market1501.BENCHMARK.official_stats, junk=3_819
    )
    assert len(list((root / "bounding_box_test").iterdir())) == 15_913 + 3_819 + 1  # + junk + Thumbs.db
    split = market1501.parse(root)
    assert {name: stats_of(records) for name, records in split.items()} == market1501.BENCHMARK.official_stats
    assert 0 in {r.pid for r in split.gallery}


def test_official_counts_cuhk03_np(many_files_dir):
    root = lookalike.write_cuhk03_np(many_files_dir / "cuhk03-np", stats=cuhk03_np.BENCHMARK.official_stats)
    for subset, official in cuhk03_np.BENCHMARK.official_stats.items():
        split = cuhk03_np.parse(root, subset=subset)
        assert {name: stats_of(records) for name, records in split.items()} == official


def test_msmt17_v2_layout(tmp_path):
    root = lookalike.write_msmt17(tmp_path / "MSMT17_V2", version="V2", val_images=3)
    assert (root / "mask_train_v2").is_dir() and (root / "mask_test_v2").is_dir()
    assert len((root / "list_val.txt").read_text().splitlines()) == 3
    assert len((root / "list_train.txt").read_text().splitlines()) == 28 - 3
    split = msmt17.parse(root)
    assert len(split.train) == 28
    assert all("/mask_train_v2/" in r.path for r in split.train)


# --- bad input --------------------------------------------------------------------------------------------------


def market_layout(**changes: list[str]) -> dict[str, list[str]]:
    layout = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg"],
        "query": ["0002_c2s1_000301_01.jpg"],
        "bounding_box_test": ["0002_c3s1_000201_02.jpg"],
    }
    layout.update(changes)
    return layout


@pytest.mark.parametrize(
    ("layout", "culprit", "expected"),
    [
        (None, "", "expected the extracted Market-1501-v15.09.15 folder"),
        ({"bounding_box_train": ["0002_c1s1_000451_03.jpg"]}, "query", "split folder not found"),
        (
            market_layout(bounding_box_train=["0002_c1s1_000451_03.jpg", "0002_c1_f0001.jpg"]),
            "bounding_box_train/0002_c1_f0001.jpg",
            "does not follow the convention <pid>_c<camera>s<sequence>_<frame>_<box>.jpg",
        ),
        (market_layout(query=["Thumbs.db"]), "query", "no images named"),
        (market_layout(query=["-1_c1s1_000401_03.jpg"]), "query", "no images named"),
        (
            market_layout(bounding_box_test=["0002_c0s1_000201_02.jpg"]),
            "bounding_box_test/0002_c0s1_000201_02.jpg",
            "cameras are numbered from 1",
        ),
    ],
    ids=["missing-root", "missing-split", "bad-name", "empty-split", "only-junk", "camera-0"],
)
def test_market1501_bad_layouts(tmp_path, write_folder, layout, culprit, expected):
    root = tmp_path / "Market-1501-v15.09.15"
    if layout is not None:
        write_folder(root, layout)
    with pytest.raises(DatasetLayoutError) as info:
        market1501.parse(root)
    message = str(info.value)
    assert expected in message
    assert message.startswith(str(root / culprit) if culprit else str(root))
    assert "\n" not in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda root: (root / "list_query.txt").write_text("0000/0000_009_02_0113morning_0009_0.jpg 0\n"),
            "list_query.txt:1: names {root}/test/0000/0000_009_02_0113morning_0009_0.jpg, which does not exist",
        ),
        (
            lambda root: (root / "list_val.txt").write_text("just-one-field\n"),
            "list_val.txt:1: 'just-one-field' is not",
        ),
        (
            lambda root: (root / "list_val.txt").write_text("0001/img_15.jpg 1\n"),
            "list_val.txt:1: 0001/img_15.jpg does not follow the convention",
        ),
        (lambda root: (root / "list_gallery.txt").unlink(), "list_gallery.txt: split file not found"),
        (lambda root: (root / "list_gallery.txt").write_text("\n"), "list_gallery.txt: the split file lists no image"),
        (lambda root: (root / "test").rename(root / "tests"), "expected the extracted MSMT17_V1 or MSMT17_V2 folder"),
    ],
    ids=["missing-image", "malformed-line", "bad-name", "missing-list", "empty-list", "missing-folder"],
)
def test_msmt17_bad_layouts(tmp_path, write_folder, edit, expected):
    root = write_msmt(tmp_path / "MSMT17_V1", write_folder)
    edit(root)
    with pytest.raises(DatasetLayoutError) as info:
        msmt17.parse(root)
    assert expected.format(root=root) in str(info.value)
    assert str(info.value).startswith(str(root))


# --- the registry -----------------------------------------------------------------------------------------------


def test_registry_is_a_read_only_literal_of_declared_records():
    with pytest.raises(TypeError):
        BENCHMARKS["other"] = market1501.BENCHMARK
    for name, benchmark in BENCHMARKS.items():
        assert isinstance(benchmark, Benchmark) and benchmark.title, name
        assert benchmark.stored == (name == "saved") and (benchmark.parse is None) == benchmark.stored, name
        assert (benchmark.subset_of is not None) == (name == "cuhk03"), name
    modules = {market1501, dukemtmc, cuhk03_np, msmt17, market_style}
    assert all(module.__doc__ and module.BENCHMARK in BENCHMARKS.values() for module in modules)
    assert get_benchmark("market") == ("market1501", market1501.BENCHMARK)
    assert BENCHMARKS["dukemtmc"].title == "DukeMTMC-reID" and "withdrawn" in BENCHMARKS["dukemtmc"].notice
    assert get_benchmark("duke")[0] == "dukemtmc"
    assert get_benchmark("cuhk")[0] == "cuhk03"
    assert get_benchmark("msmt")[0] == "msmt17"
    with pytest.raises(DatasetLayoutError, match=r"unknown benchmark 'viper'; expected one of market1501 \(alias"):
        get_benchmark("viper")


def test_options_are_checked_and_completed(cuhk_root):
    assert split_options("cuhk03", {}) == ({}, {"subset": "labeled"})
    assert split_options("cuhk03", {}, root=cuhk_root / "detected") == ({}, {"subset": "detected"})
    assert split_options("synthetic", {"domain": "b"}) == ({"domain": "b", "seed": 0, "num_ids": None}, {})
    with pytest.raises(DatasetLayoutError, match=r"benchmark 'cuhk03' has no option 'subest' \(its options: subset\)"):
        split_options("cuhk", {"subest": "detected"})
    with pytest.raises(DatasetLayoutError, match=r"'market1501' has no option 'subset' \(its options: none\)"):
        split_options("market1501", {"subset": "labeled"})


def test_official_stats_lookup(cuhk_root):
    assert official_stats("market") is market1501.BENCHMARK.official_stats
    assert official_stats("cuhk03") is cuhk03_np.BENCHMARK.official_stats["labeled"]
    assert official_stats("cuhk03", subset="detected")["gallery"] == SplitStats(5_332, 700, 2)
    assert official_stats("cuhk03", cuhk_root) is cuhk03_np.BENCHMARK.official_stats["labeled"]
    assert official_stats("cuhk03", cuhk_root / "detected") is cuhk03_np.BENCHMARK.official_stats["detected"]
    assert (
        official_stats("cuhk03", cuhk_root / "detected", subset="detected")
        is cuhk03_np.BENCHMARK.official_stats["detected"]
    )
    with pytest.raises(DatasetLayoutError, match="'detected' subset folder, but subset='labeled'"):
        official_stats("cuhk03", cuhk_root / "detected", subset="labeled")
    assert official_stats("msmt17")["gallery"].images == 82_161
    assert official_stats("dukemtmc")["train"] == SplitStats(16_522, 702, 8)
    assert official_stats("synthetic") is None
    assert official_stats("market_style") is None


def test_records_are_image_records(tmp_path):
    root = lookalike.write_dukemtmc(tmp_path / "d")
    assert all(isinstance(r, ImageRecord) for r in dukemtmc.parse(root).query)
