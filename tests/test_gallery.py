"""The gallery index: exact search against a brute-force reference, exclusions, faiss recall, files, bad input, CLI."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from reid_accel.cli import main
from reid_accel.errors import InputError, ReidAccelError
from reid_accel.gallery import GalleryIndex, model_identity
from reid_accel.gallery import index as gallery_index
from reid_accel.hub import save_pretrained
from reid_accel.modeling import ReIDEncoder

PATTERN = r"cam(?P<camera>\d+)/p(?P<person>\d+)_t(?P<time>\d+(?:\.\d+)?)"


def reference_top_k(gallery, queries, k, dropped=None):
    """Per query: every allowed row sorted by (float64 cosine descending, row ascending), the first k."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    out = []
    for i in range(len(q)):
        allowed = [j for j in range(len(g)) if dropped is None or not dropped[i, j]]
        out.append(sorted(allowed, key=lambda j, i=i: (-scores[i, j], j))[:k])
    return out


def clustered(rng, num_people, per_person, dim, noise=0.4):
    centers = rng.normal(size=(num_people, dim))
    people = np.repeat(np.arange(num_people), per_person)
    return (centers[people] + noise * rng.normal(size=(len(people), dim))).astype(np.float32), people


@pytest.fixture
def small_gallery():
    rng = np.random.default_rng(0)
    features, people = clustered(rng, 30, 10, 24)
    features[7] = features[3]  # exact duplicates: equal scores, ordered by row
    features[200] = features[3]
    cameras = rng.integers(0, 4, size=len(features))
    times = np.round(rng.uniform(0, 100, size=len(features)), 1)
    paths = [f"cam{c}/p{p}_t{t}.jpg" for c, p, t in zip(cameras, people, times, strict=True)]
    index = GalleryIndex.from_features(features, paths=paths, pattern=PATTERN, model_id="sha256:test")
    return index, features, cameras, times


@pytest.mark.parametrize("block_entries", [1 << 25, 50, 1])
def test_exact_search_equals_the_brute_force_ranking(small_gallery, monkeypatch, block_entries):
    monkeypatch.setattr(gallery_index, "_BLOCK_ENTRIES", block_entries)
    index, features, cameras, times = small_gallery
    queries = np.concatenate([features[[3, 50, 299]], np.random.default_rng(1).normal(size=(2, 24))])
    found = index.search(queries, 12)
    expected = reference_top_k(features, queries, 12)
    assert [list(row) for row in found.indices] == expected
    assert found.indices[0, :3].tolist() == [3, 7, 200]  # the duplicates, by row
    np.testing.assert_allclose(found.scores[0, :3], 1.0, atol=1e-5)
    assert np.all(np.diff(found.scores, axis=1) <= 0)


def test_exclusions_drop_the_query_camera_or_its_time_window(small_gallery):
    index, features, cameras, times = small_gallery
    queries = features[[3, 50, 120]]
    q_cams, q_times = cameras[[3, 50, 120]], times[[3, 50, 120]]
    same = q_cams[:, None] == cameras[None, :]
    found = index.search(queries, 15, cameras=q_cams, exclude_same_camera=True)
    assert [list(row) for row in found.indices] == reference_top_k(features, queries, 15, same)
    window = same & (np.abs(times[None, :] - q_times[:, None]) <= 20.0)
    found = index.search(queries, 15, cameras=[str(c) for c in q_cams], times=q_times, window=20.0)
    assert [list(row) for row in found.indices] == reference_top_k(features, queries, 15, window)
    assert 3 not in found.indices[0]  # the query itself lies in its own window


def test_rows_excluded_past_k_are_padded(small_gallery):
    index, features, cameras, _ = small_gallery
    found = index.search(features[0], 300, cameras=[cameras[0]], exclude_same_camera=True)
    kept = int((cameras != cameras[0]).sum())
    assert (found.indices[0] >= 0).sum() == kept and np.all(found.indices[0, kept:] == -1)
    assert np.all(np.isneginf(found.scores[0, kept:]))
    assert len(found.rows()) == kept


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_the_approximate_index_recalls_the_exact_top_10_and_honours_exclusions(kind):
    rng = np.random.default_rng(2)
    features, _ = clustered(rng, 60, 8, 32)
    cameras = rng.integers(0, 3, size=len(features))
    index = GalleryIndex.from_features(features, cameras=cameras)
    index.build_approximate(kind)
    queries = features[::7] + 0.1 * rng.normal(size=(len(features[::7]), 32)).astype(np.float32)
    exact = index.search(queries, 10).indices
    approx = index.search(queries, 10, approximate=True).indices
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9
    deeper = index.search(queries, 10, approximate=True, depth=256).indices
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(deeper, exact, strict=True)]) >= recall
    q_cams = cameras[::7]
    found = index.search(queries, 10, approximate=True, cameras=q_cams, exclude_same_camera=True).indices
    assert np.all(cameras[found] != q_cams[:, None]) and np.all(found >= 0)


def test_save_load_add_and_save_again_keeps_one_complete_generation(small_gallery, tmp_path):
    index, features, cameras, times = small_gallery
    index.build_approximate("hnsw")
    index.save(tmp_path / "g")
    loaded = GalleryIndex.load(tmp_path / "g")
    torch.testing.assert_close(loaded.features, index.features)
    assert loaded.rows == index.rows and loaded.model_id == "sha256:test" and loaded.pattern == PATTERN
    assert loaded.rows.person[:2] == [str(p) for p in np.repeat(np.arange(30), 10)[:2]]
    assert loaded.rows.time[0] == pytest.approx(times[0]) and loaded.rows.camera[0] == str(cameras[0])
    extra = GalleryIndex.from_features(
        features[:5] * 2, paths=["cam9/p1_t5.jpg"] * 5, pattern=PATTERN, model_id="sha256:test"
    )
    loaded.add(extra)
    loaded.save(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "faiss-2.index",
        "index.json",
        "rows-2.parquet",
        "vectors-2.safetensors",
    ]
    again = GalleryIndex.load(tmp_path / "g")
    assert len(again) == 305 and again.rows.camera[-1] == "9"
    assert again.search(features[3], 3, approximate=True).indices[0].tolist() == [3, 7, 200]


def test_bad_input_is_refused_in_one_line(small_gallery, tmp_path):
    index, features, _, _ = small_gallery

    def refused(match, fn, *args, **kwargs):
        with pytest.raises(ReidAccelError, match=match) as info:
            fn(*args, **kwargs)
        assert "\n" not in str(info.value)

    refused("has 8-d features but this gallery holds 24-d", index.search, np.ones((1, 8)))
    refused("comes from model sha256:other but this gallery was built by model sha256:test", index.search,
            features[:1], model_id="sha256:other")  # fmt: skip
    refused("the gallery is empty", GalleryIndex.from_features(np.zeros((0, 4))).search, np.ones(4))
    refused("k=0", index.search, features[:1], 0)
    refused(r"k=301 is larger than the gallery \(300 rows\)", index.search, features[:1], 301)
    refused("depth=0", index.search, features[:1], depth=0)
    refused("needs the queries' cameras", index.search, features[:1], exclude_same_camera=True)
    refused("query 1 has no camera", index.search, features[:2], cameras=["1", None], exclude_same_camera=True)
    refused("no approximate index", index.search, features[:1], approximate=True)
    refused("NaN or infinite", index.search, np.full((1, 24), np.nan))
    refused("named groups must be among", GalleryIndex.from_features, features, pattern=r"(?P<id>\d+)")
    index.save(tmp_path / "g")
    info_file = tmp_path / "g" / "index.json"
    (tmp_path / "g" / "vectors-1.safetensors").write_bytes(b"\x00" * 40)
    refused(r"vectors-1.safetensors: unreadable gallery vectors", GalleryIndex.load, tmp_path / "g")
    index.save(tmp_path / "h")
    (tmp_path / "h" / "rows-1.parquet").write_bytes(b"not parquet")
    refused(r"rows-1.parquet: unreadable gallery rows", GalleryIndex.load, tmp_path / "h")
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps(info | {"version": 99}))
    refused("gallery format version 99", GalleryIndex.load, tmp_path / "g")
    info_file.write_text("{ truncated")
    refused("unreadable gallery index", GalleryIndex.load, tmp_path / "g")
    refused("not a gallery index", GalleryIndex.load, tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused("not a gallery index; refusing to write into it", index.save, tmp_path / "other")


def write_crops(folder, count, seed):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"cam{i % 3}" / f"p{i % 4}_t{10 * i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, size=(48, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_images_in_images_out_and_another_model_is_refused(encoder, tmp_path):
    paths = write_crops(tmp_path / "crops", 9, seed=0)
    index = GalleryIndex.from_images(encoder, tmp_path / "crops", pattern=PATTERN)
    assert index.model_id == model_identity(encoder) and len(index) == 9
    found = index.search_images(encoder, [paths[4]], 3)
    assert found.indices[0, 0] == sorted(paths).index(paths[4]) and found.scores[0, 0] == pytest.approx(1.0)
    row = found.rows()[0]
    assert row["camera"] == "1" and row["person"] == "0" and row["time"] == 40.0 and row["rank"] == 1
    dropped = index.search_images(encoder, [paths[4]], 9, exclude_same_camera=True)
    assert all(r["camera"] != "1" for r in dropped.rows()) and len(dropped.rows()) == 6
    other = ReIDEncoder("test_resnet", input_size=[64, 32]).eval()
    with pytest.raises(InputError, match="features of different models cannot be compared"):
        index.search_images(other, [paths[4]])
    picture = index.plot(found, [paths[4]], tmp_path / "hits.png", top_k=3)
    assert PIL.Image.open(picture).size[0] > 200


def test_the_search_command_builds_grows_and_queries_a_gallery(encoder, tmp_path, capsys):
    save_pretrained(encoder, tmp_path / "model")
    write_crops(tmp_path / "day1", 6, seed=1)
    query = write_crops(tmp_path / "day2", 4, seed=2)[1]
    model, gallery = str(tmp_path / "model"), str(tmp_path / "gallery")
    build = ["search", "build", model, str(tmp_path / "day1"), "--output", gallery, "--pattern", PATTERN]
    assert main([*build, "--approximate", "hnsw"]) == 0
    assert main(["search", "add", gallery, model, str(tmp_path / "day2")]) == 0
    assert len(GalleryIndex.load(gallery)) == 10
    table, picture = tmp_path / "hits.csv", tmp_path / "hits.png"
    argv = ["search", "query", gallery, model, str(query), "-k", "4", "--table", str(table), "--picture", str(picture)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(query) in out.splitlines()[-4]  # the query crop is in the gallery: rank 1
    lines = table.read_text().splitlines()
    assert lines[0] == "query,rank,score,row,path,person,camera,frame,time" and len(lines) == 5
    assert picture.is_file()
    assert main([*argv[:5], "-k", "3", "--exclude-same-camera", "--approximate"]) == 0
    assert main(build) == 2
    assert "already exists; grow it with `reid-accel search add`" in capsys.readouterr().err
    assert main(["search", "query", str(tmp_path / "day1"), model, str(query)]) == 2
    assert "not a gallery index" in capsys.readouterr().err
