"""CMC and rank-list pictures: valid PNGs of sensible size, written atomically, protocol-honouring rank lists."""

import struct
import sys

import numpy as np
import pytest
from PIL import Image

from reid_accel.errors import ReidAccelError
from reid_accel.metrics import rank_metrics, top_k_gallery
from reid_accel.metrics.visualize import plot_cmc, plot_rank_list

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    with Image.open(path) as image:
        image.verify()
    return width, height


def test_plot_cmc_writes_a_png(tmp_path):
    cmc = rank_metrics(
        np.eye(3), np.eye(3)[[0, 1, 2, 0, 1]], [1, 2, 3], [1, 2, 3, 1, 2], [0, 0, 0], [1, 1, 1, 1, 1], max_rank=5
    )["cmc"]
    out = plot_cmc(cmc, tmp_path / "plots" / "cmc.png", title="test")
    assert out == tmp_path / "plots" / "cmc.png"
    assert png_size(out) == (600, 400)
    assert [p.name for p in out.parent.iterdir()] == ["cmc.png"]  # no temporary file left behind
    with pytest.raises(ReidAccelError, match="fractions"):
        plot_cmc([0.5, 1.5], tmp_path / "bad.png")


def person_images(folder, pids, cams, tag):
    paths = []
    for i, (pid, cam) in enumerate(zip(pids, cams, strict=True)):
        pixels = np.zeros((32, 16, 3), dtype=np.uint8)
        pixels[:] = (40 * cam, 100, 200 - 40 * cam)
        pixels[8:24, 4:12] = ((pid * 67) % 256, (pid * 131) % 256, (pid * 29) % 256)
        paths.append(folder / f"{tag}_{i:03d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_plot_rank_list_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    g_pids, g_cams = np.repeat(np.arange(1, 7), 3), np.tile(np.arange(3), 6)
    q_pids, q_cams = np.arange(1, 4), np.zeros(3, dtype=int)
    centers = rng.normal(size=(7, 8))
    gallery = centers[g_pids] + 0.5 * rng.normal(size=(18, 8))
    query = centers[q_pids] + 0.5 * rng.normal(size=(3, 8))
    ranked, matches = top_k_gallery(query, gallery, q_pids, g_pids, q_cams, g_cams, query_indices=[0, 1, 2], top_k=10)
    # same id + same camera (camera 0 of each query id) never shows up in the list
    for row, pid in enumerate(q_pids):
        shown = ranked[row][ranked[row] >= 0]
        assert not np.any((g_pids[shown] == pid) & (g_cams[shown] == 0))
    gallery_paths = person_images(tmp_path, g_pids, g_cams, "g")
    query_paths = person_images(tmp_path, q_pids, q_cams, "q")
    out = plot_rank_list(
        query_paths, gallery_paths, ranked, matches, q_cams, g_cams, tmp_path / "rank_list.png", num_queries=3
    )
    width, height = png_size(out)
    assert 800 <= width <= 1200 and 500 <= height <= 800
    assert not list(tmp_path.glob(".rank_list.png.*"))
    with pytest.raises(ReidAccelError, match="expected equal shapes"):
        plot_rank_list(query_paths, gallery_paths, ranked[:, :5], matches, q_cams, g_cams, tmp_path / "x.png")
    with pytest.raises(ReidAccelError, match="cannot read image"):
        plot_rank_list([tmp_path / "missing.png"], gallery_paths, ranked, matches, [0], g_cams, tmp_path / "y.png")
    assert not (tmp_path / "y.png").exists()

    # a split that stores its images: PIL images, and only the drawn gallery items, give the same picture
    opened = {i: Image.open(gallery_paths[i]) for i in ranked.flatten().tolist() if i >= 0}
    queries = [Image.open(p) for p in query_paths]
    again = plot_rank_list(queries, opened, ranked, matches, q_cams, g_cams, tmp_path / "again.png", num_queries=3)
    with Image.open(out) as first, Image.open(again) as second:
        assert np.array_equal(np.asarray(first), np.asarray(second))
    missing = dict(opened)
    del missing[int(ranked[0, 0])]
    with pytest.raises(ReidAccelError, match=rf"ranked gallery items \[{int(ranked[0, 0])}\] have no image"):
        plot_rank_list(queries, missing, ranked, matches, q_cams, g_cams, tmp_path / "z.png", num_queries=3)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"reid-accel\[viz\]"):
        plot_cmc([0.5, 1.0], tmp_path / "cmc.png")
    assert not (tmp_path / "cmc.png").exists()
