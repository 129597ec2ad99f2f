import dataclasses

import pytest

from reid_accel.data.records import ImageRecord, Split, SplitStats, compare_stats


def test_split_sorts_each_split_by_path_and_freezes():
    b, a, c = ImageRecord("/d/b.jpg", 2, 0), ImageRecord("/d/a.jpg", 5, 1), ImageRecord("/d/c.jpg", 1, 3)
    split = Split(train=[b, a, c], query=(c, a), gallery=iter([b]))
    assert split.train == (a, b, c)
    assert split.query == (a, c)
    assert split.gallery == (b,)
    assert [name for name, _ in split.items()] == ["train", "query", "gallery"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        split.train = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.pid = 3


def test_split_stats_counts_distinct_ids_and_cameras():
    assert SplitStats.of([3, 3, 0, 7], [0, 1, 1, 1]) == SplitStats(images=4, identities=3, cameras=2)
    assert SplitStats.of([], []) == SplitStats(0, 0, 0)


def test_compare_stats_checks_images_everywhere_and_identities_of_train_only():
    official = {
        "train": SplitStats(10, 4, 2),
        "query": SplitStats(5, 3, 2),
        "gallery": SplitStats(8, 3, 2),
    }
    same = dict(official)
    assert compare_stats(same, official) == []
    # query/gallery identity and camera counts are never compared
    loose = {"train": SplitStats(10, 4, 9), "query": SplitStats(5, 99, 1), "gallery": SplitStats(8, 4, 2)}
    assert compare_stats(loose, official) == []
    wrong = {"train": SplitStats(11, 5, 2), "query": SplitStats(5, 3, 2), "gallery": SplitStats(7, 3, 2)}
    assert compare_stats(wrong, official) == [
        "train: 11 images, the official release has 10",
        "train: 5 identities, the official release has 4",
        "gallery: 7 images, the official release has 8",
    ]
