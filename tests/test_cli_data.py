import logging
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import datasets
import pytest

from reid_accel.cli import main
from reid_accel.data.benchmarks import dukemtmc
from reid_accel.generators import lookalike
from reid_accel.generators import synthetic as synthetic_world

SMALL_MARKET_TABLE = [
    "split      images identities cameras",
    "train          24          6       6",
    "query           8          4       5",
    "gallery        20          5       6",
]


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture
def market(tmp_path) -> Path:
    return lookalike.write_market1501(tmp_path / "Market-1501-v15.09.15")


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_info_prints_the_table_and_warns_about_official_counts(market, capsys, caplog):
    assert main(["data", "info", "market", str(market)]) == 0
    assert capsys.readouterr().out.splitlines() == SMALL_MARKET_TABLE
    assert warnings_of(caplog) == [
        "market1501 differs from the official release: train: 24 images, the official release has 12936",
        "market1501 differs from the official release: train: 6 identities, the official release has 751",
        "market1501 differs from the official release: query: 8 images, the official release has 3368",
        "market1501 differs from the official release: gallery: 20 images, the official release has 15913",
    ]


def test_info_is_quiet_when_counts_match(market, capsys, caplog, replace_benchmark):
    replace_benchmark("market1501", official_stats=lookalike.SMALL_STATS["market1501"])
    assert main(["data", "info", "market1501", str(market), "--verify"]) == 0
    assert capsys.readouterr().out.splitlines() == SMALL_MARKET_TABLE
    assert warnings_of(caplog) == []


def test_info_cuhk03_subset(tmp_path, capsys, caplog):
    root = lookalike.write_cuhk03_np(tmp_path / "cuhk03-np")
    assert main(["data", "info", "cuhk", str(root), "--subset", "detected", "--cache-dir", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.splitlines()[3] == "gallery        17          4       2"
    assert "the official release has 5332" in warnings_of(caplog)[-1]
    assert (tmp_path / "c").is_dir()


def test_info_on_a_cuhk03_subset_folder_reads_and_checks_that_subset(tmp_path, capsys, caplog):
    root = lookalike.write_cuhk03_np(tmp_path / "cuhk03-np")
    assert main(["data", "info", "cuhk03", str(root / "detected"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.splitlines()[3] == "gallery        17          4       2"  # detected: 17
    assert "cuhk03 differs from the official release: gallery: 17 images, the official release has 5332" in (
        warnings_of(caplog)
    )
    caplog.clear()
    argv = ["data", "info", "cuhk03", str(root / "detected"), "--subset", "labeled", "--cache-dir", str(tmp_path)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.splitlines() == [
        f"reid-accel: error: {(root / 'detected').resolve()}: this is the 'detected' subset folder, "
        "but subset='labeled' was asked; pass subset='detected' or leave it out"
    ]


def test_info_on_dukemtmc_logs_once_that_it_was_withdrawn(tmp_path, capsys, caplog):
    root = lookalike.write_dukemtmc(tmp_path / "DukeMTMC-reID")
    assert main(["data", "info", "duke", str(root), "--cache-dir", str(tmp_path / "c")]) == 0
    notices = [r for r in caplog.records if "withdrawn" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in notices] == [(logging.WARNING, dukemtmc.BENCHMARK.notice)]
    assert "withdrawn by its authors (June 2019)" in dukemtmc.BENCHMARK.notice
    assert "already hold a copy" in dukemtmc.BENCHMARK.notice
    assert "reid-accel: error" not in capsys.readouterr().err


def break_layout(kind: str, root: Path) -> tuple[list[str], str]:
    """Damage a small Market look-alike (or swap in another benchmark); return argv and the expected message."""
    if kind == "missing-root":
        return ["market1501", str(root.parent / "nowhere")], f"{root.parent / 'nowhere'}: folder not found"
    if kind == "missing-split":
        for path in (root / "query").iterdir():
            path.unlink()
        (root / "query").rmdir()
        return ["market1501", str(root)], f"{root / 'query'}: split folder not found"
    if kind == "bad-name":
        (root / "query" / "IMG_0001.jpg").write_bytes(b"")
        return ["market1501", str(root)], f"{root / 'query' / 'IMG_0001.jpg'}: file name does not follow"
    if kind == "empty-split":
        for path in (root / "query").glob("*.jpg"):
            path.unlink()
        return ["market1501", str(root)], f"{root / 'query'}: no images named"
    if kind == "unreadable-image":
        broken = sorted((root / "bounding_box_test").glob("*.jpg"))[4]
        broken.write_bytes(b"\xff\xd8\xff broken")
        return ["market1501", str(root), "--verify"], f"{broken}: unreadable image"
    if kind == "list-names-missing-image":
        msmt = lookalike.write_msmt17(root.parent / "MSMT17_V1")
        missing = sorted((msmt / "test").rglob("*.jpg"))[0]
        missing.unlink()
        return ["msmt17", str(msmt)], f"names {missing}, which does not exist"
    if kind == "unknown-benchmark":
        return ["viper", str(root)], "unknown benchmark 'viper'; expected one of market1501 (alias market)"
    if kind == "unknown-option":
        return ["market1501", str(root), "--subset", "labeled"], "benchmark 'market1501' has no option 'subset'"
    assert kind == "unknown-subset"
    cuhk = lookalike.write_cuhk03_np(root.parent / "cuhk03-np")
    return ["cuhk03", str(cuhk), "--subset", "hand"], "cuhk03 subset 'hand' is unknown"


@pytest.mark.parametrize(
    "kind",
    [
        "missing-root",
        "missing-split",
        "bad-name",
        "empty-split",
        "unreadable-image",
        "list-names-missing-image",
        "unknown-benchmark",
        "unknown-option",
        "unknown-subset",
    ],
)
def test_bad_input_is_one_line_and_status_2(market, capsys, kind):
    argv, expected = break_layout(kind, market)
    assert main(["data", "info", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reid-accel: error: ")
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "info"],
        ["data"],
        ["train-everything"],
        ["data", "synth", "world"],
        ["data", "synth", "world", "--domain", "c"],
        ["data", "synth", "world", "--domain", "a", "--ids", "many"],
    ],
)
def test_argparse_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage: reid-accel" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["data", "--help"]) == 0
    assert "info" in capsys.readouterr().out


def test_synth_calls_the_generator_and_prints_the_table(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_generate_world(root, *, domain, seed, **size):
        calls.append({"domain": domain, "seed": seed, **size})
        return lookalike.write_market_style(root)

    monkeypatch.setattr(synthetic_world, "generate_world", fake_generate_world)
    assert main(["data", "synth", str(tmp_path / "w1"), "--domain", "b"]) == 0
    assert main(["data", "synth", str(tmp_path / "w2"), "--domain", "a", "--seed", "4", "--ids", "30"]) == 0
    assert calls == [{"domain": "b", "seed": 0}, {"domain": "a", "seed": 4, "num_ids": 30}]
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["split      images identities cameras", "train          24          6       3"]


def test_synth_with_the_real_generator(tmp_path, capsys, caplog):
    assert main(["data", "synth", str(tmp_path / "world"), "--domain", "a", "--ids", "2"]) == 0
    train = capsys.readouterr().out.splitlines()[1].split()
    assert train[0] == "train" and train[2:] == ["2", "4"]  # 2 identities over the 4 cameras of domain a
    assert warnings_of(caplog) == []


def test_lookalike_command(tmp_path, capsys, caplog):
    assert main(["data", "lookalike", "market", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.splitlines() == SMALL_MARKET_TABLE
    assert warnings_of(caplog) == []
    assert main(["data", "lookalike", "synthetic", str(tmp_path / "s")]) == 2
    assert "no look-alike writer for 'synthetic'" in capsys.readouterr().err
    assert main(["data", "lookalike", "market_style", str(tmp_path / "s"), "--official"]) == 2
    assert "'market_style' has no official statistics" in capsys.readouterr().err
    assert main(["data", "lookalike", "market", str(tmp_path / "m")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_console_script_is_declared():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "reid-accel"]
    assert script.value == "reid_accel.cli:main"


def test_exit_status_of_a_real_process(tmp_path):
    # `main`'s return value becomes the status through sys.exit (a library error would cost seconds of imports)
    result = subprocess.run(
        [sys.executable, "-m", "reid_accel.cli", "data", "info"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "the following arguments are required" in result.stderr and "Traceback" not in result.stderr


def test_openmp_threads_sleep_only_when_the_cores_are_shared(monkeypatch):
    from reid_accel import cli

    busy = cli._busy_cores(0.01)
    assert busy is None or 0 <= busy <= (os.cpu_count() or 1) + 0.01
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cli, "_busy_cores", lambda: 0.1)
    assert "spin" in cli._choose_openmp_wait_policy() and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(cli, "_busy_cores", lambda: 1.0)
    assert "sleep" in cli._choose_openmp_wait_policy() and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert cli._choose_openmp_wait_policy() is None, "a policy already set is kept"


def test_only_train_looks_at_what_the_cores_are_doing(monkeypatch, tmp_path, capsys):
    """The 0.2 s /proc/stat sample serves the training loop's threads; --help and the other commands skip it."""
    from reid_accel import cli

    sampled = []
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cli, "_busy_cores", lambda: sampled.append(1) or 0.1)
    assert main(["--help"]) == 0 and main(["train", "--help"]) == 0
    assert main(["push", str(tmp_path / "absent"), "--repo-id", "me/model"]) == 2
    assert not sampled
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2  # the config is read after the choice
    assert sampled == [1]
    assert "absent.yaml: config file not found" in capsys.readouterr().err
