import hashlib
from pathlib import Path

import pytest

from reid_accel.errors import DatasetLayoutError
from reid_accel.generators import lookalike


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", sorted(lookalike.WRITERS))
def test_writers_are_deterministic_and_leave_no_staging(tmp_path, name):
    first = lookalike.WRITERS[name](tmp_path / "a" / name)
    second = lookalike.WRITERS[name](tmp_path / "b" / name)
    assert tree_digest(first) == tree_digest(second)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [name]


def test_market_lookalike_has_junk_distractors_and_thumbs(tmp_path):
    root = lookalike.write_market1501(tmp_path / "Market-1501-v15.09.15", junk=2)
    gallery = sorted(p.name for p in (root / "bounding_box_test").iterdir())
    assert [n for n in gallery if n.startswith("-1_")] == ["-1_c1s1_000020_00.jpg", "-1_c2s1_000021_00.jpg"]
    assert any(n.startswith("0000_") for n in gallery)
    assert all(
        (root / folder / "Thumbs.db").is_file() for folder in ("bounding_box_train", "query", "bounding_box_test")
    )


def test_msmt_lists_name_every_image_once(tmp_path):
    root = lookalike.write_msmt17(tmp_path / "MSMT17_V1")
    listed = {}
    for name in ("train", "val", "query", "gallery"):
        for line in (root / f"list_{name}.txt").read_text().splitlines():
            relative, pid = line.split(" ")
            folder = "train" if name in ("train", "val") else "test"
            assert relative.startswith(f"{int(pid):04d}/")
            listed[f"{folder}/{relative}"] = name
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.jpg")}
    assert set(listed) == on_disk
    assert list(listed.values()).count("val") == 28 // 14


def test_refuses_a_folder_with_content(tmp_path):
    (tmp_path / "m").mkdir()
    lookalike.write_market_style(tmp_path / "m")  # an empty folder is fine
    with pytest.raises(DatasetLayoutError, match="already exists and is not empty"):
        lookalike.write_market_style(tmp_path / "m")


def test_rejects_impossible_counts(tmp_path):
    from reid_accel.data.records import SplitStats

    stats = dict(lookalike.SMALL_STATS["dukemtmc"], query=SplitStats(images=3, identities=5, cameras=8))
    with pytest.raises(ValueError, match="cannot deal 3 images over 5 identities"):
        lookalike.write_dukemtmc(tmp_path / "d", stats=stats)
    assert not (tmp_path / "d").exists()
