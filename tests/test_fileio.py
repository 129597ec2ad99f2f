import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from reid_accel import fileio
from reid_accel.fileio import atomic_directory, atomic_path, write_json_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_new_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    write_text_atomic(tmp_path / "a.txt", "hello")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"\x00\x01")
    with atomic_directory(tmp_path / "folder") as staging:
        (staging / "inner.txt").write_text("inside")
    assert [mode(tmp_path / name) for name in ("a.txt", "b.json", "c.bin")] == [file_mode] * 3
    assert mode(tmp_path / "folder") == folder_mode
    assert mode(tmp_path / "folder" / "inner.txt") == file_mode
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.bin", "folder"]  # no temporaries


def test_a_replaced_file_takes_the_umask_not_its_old_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "metrics.json"
    target.write_text("old")
    target.chmod(0o600)
    write_text_atomic(target, "new")
    assert (target.read_text(), mode(target)) == ("new", 0o644)


@pytest.mark.parametrize(("mask", "file_mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_writers_that_rename_their_own_temporary_file_still_follow_the_umask(tmp_path, umask, mask, file_mode):
    umask(mask)
    with atomic_path(tmp_path / "ours.safetensors") as tmp:
        save_file({"x": torch.zeros(2)}, tmp)  # safetensors renames its own 0o600 temporary file over `tmp`
    save_file({"x": torch.zeros(2)}, tmp_path / "theirs.safetensors")
    (tmp_path / "inner").mkdir()
    save_file({"x": torch.zeros(2)}, tmp_path / "inner" / "deeper.safetensors")
    assert mode(tmp_path / "ours.safetensors") == file_mode
    assert mode(tmp_path / "theirs.safetensors") == 0o600, "safetensors' own mode, which share_as_umask corrects"
    fileio.share_as_umask(tmp_path)
    assert [mode(tmp_path / n) for n in ("theirs.safetensors", "inner/deeper.safetensors")] == [file_mode] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner", "ours.safetensors", "theirs.safetensors"]


def test_an_error_mid_write_keeps_the_previous_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"epoch": 1})
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_text('{"epoch": 2, "half')
        raise RuntimeError("disk on fire")
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(TypeError):
        write_json_atomic(target, {"not json": object()})
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_file_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino, os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(source, destination):
        events.append(("replace", os.path.basename(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomic(tmp_path / "a.txt", "12345")
    file, folder = os.stat(tmp_path / "a.txt"), os.stat(tmp_path)
    assert events == [("fsync", file.st_ino, 5), ("replace", "a.txt"), ("fsync", folder.st_ino, folder.st_size)]


def _write_world(staging):
    (staging / "sub").mkdir()
    (staging / "sub" / "x.png").write_bytes(b"png")
    (staging / "y.json").write_text("{}")


def test_a_folder_is_flushed_with_one_syncfs_before_the_rename(tmp_path, monkeypatch):
    seen = []

    def syncfs(fd):
        seen.append((sorted(os.listdir(fd)), (tmp_path / "world").exists()))
        return 0

    monkeypatch.setattr(fileio, "_syncfs", lambda: syncfs)
    with atomic_directory(tmp_path / "world") as staging:
        _write_world(staging)
    assert seen == [(["sub", "y.json"], False)]  # the staging folder, before the rename
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "world",
        "world/sub",
        "world/sub/x.png",
        "world/y.json",
    ]


def test_a_failed_syncfs_is_an_error_and_nothing_lands(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_syncfs", lambda: lambda fd: -1)
    with pytest.raises(OSError), atomic_directory(tmp_path / "world") as staging:
        _write_world(staging)
    assert list(tmp_path.iterdir()) == []


def test_without_syncfs_every_file_and_folder_is_synced(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_syncfs", lambda: None)
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "world"
    with atomic_directory(target) as staging:
        _write_world(staging)
    # a rename keeps inodes: the synced ones are the final files and folders, the parent folder last
    expected = {os.stat(p).st_ino for p in (target, target / "sub", target / "sub" / "x.png", target / "y.json")}
    assert set(synced[:-1]) == expected and len(synced[:-1]) == len(expected)
    assert synced[-1] == os.stat(tmp_path).st_ino


def test_a_folder_never_lands_half_written_or_over_another(tmp_path):
    target = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_directory(target) as staging:
        (staging / "train.arrow").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()  # an empty folder is taken over
    with atomic_directory(target) as staging:
        (staging / "train.arrow").write_bytes(b"first")
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(target) as staging:
        (staging / "train.arrow").write_bytes(b"second")
    assert (target / "train.arrow").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_a_destination_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError) as failed:
        write_text_atomic(blocker / "out.txt", "x")
    assert failed.value.filename in (str(blocker), str(blocker / "out.txt"))
