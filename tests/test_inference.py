"""The inference API: every input kind gives the features evaluation computes; crops from tracker boxes; the CLI."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from safetensors import safe_open
from torch.utils.data import DataLoader

from reid_accel.cli import main
from reid_accel.data import ReIDImageDataset, build_transform, load_benchmark
from reid_accel.data.hf import column_values
from reid_accel.engine.evaluate import extract_embeddings
from reid_accel.errors import InputError
from reid_accel.generators.lookalike import write_market1501
from reid_accel.hub import save_pretrained
from reid_accel.inference import crop_boxes, embed_images, list_images, to_pil


@pytest.fixture
def photo():
    """A 90x40 RGB person-sized image with structure in every channel."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(90, 40, 3), dtype=np.uint8)


def test_every_input_kind_gives_the_same_features(encoder, photo, tmp_path):
    path = tmp_path / "person.png"
    PIL.Image.fromarray(photo).save(path)
    tensor = torch.from_numpy(photo).permute(2, 0, 1)  # (3, H, W) uint8
    inputs = [
        str(path),
        path,
        PIL.Image.fromarray(photo),
        photo,
        tensor,
        tensor.float() / 255,
    ]
    features = embed_images(encoder, inputs, batch_size=4)
    assert features.shape == (6, 96) and features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=1), torch.ones(6))
    assert all(torch.equal(row, features[0]) for row in features)
    bgr = embed_images(encoder, [photo[..., ::-1], tensor.flip(0)], bgr=True)
    assert torch.equal(bgr, features[:2])
    assert not torch.allclose(embed_images(encoder, photo[..., ::-1]), features[:1])  # BGR read as RGB differs


def test_features_equal_the_evaluation_path(encoder, tmp_path):
    root = write_market1501(tmp_path / "market")
    query = load_benchmark("market1501", root, cache_dir=tmp_path / "cache")["query"]
    transform = build_transform(64, 32, mean=encoder.mean, std=encoder.std)
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(ReIDImageDataset(query, transform), batch_size=3))
    for flip in (False, True):
        evaluated = extract_embeddings(encoder, loader, accelerator, flip=flip).features
        embedded = embed_images(encoder, column_values(query, "path"), batch_size=5, flip=flip)
        assert torch.equal(embedded, evaluated)


def test_a_folder_is_embedded_in_sorted_path_order(encoder, photo, tmp_path):
    for name in ("b.png", "a/c.jpg", "a/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        PIL.Image.fromarray(np.roll(photo, len(name) * ord(name[-5]), axis=0)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    files = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a/c.jpg", "a/d.png", "b.png"]
    assert torch.equal(embed_images(encoder, tmp_path), embed_images(encoder, files))
    assert embed_images(encoder, []).shape == (0, 96)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(InputError, match="absent: no such folder"):
        list_images(tmp_path / "absent")


def test_autocast_runs_in_bfloat16_close_to_float32(encoder, photo):
    exact = embed_images(encoder, [photo, photo[::-1]])
    half = embed_images(encoder, [photo, photo[::-1]], autocast_dtype=torch.bfloat16, device="cpu")
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, exact, atol=3e-2, rtol=0)
    assert not torch.equal(half, exact)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 5), dtype=np.uint8), r"uint8 \(H, W, 3\), got uint8 \(10, 5\)"),
        (np.zeros((10, 5, 3), dtype=np.float32), "got float32"),
        (torch.zeros(10, 5, 3, dtype=torch.uint8), r"must be \(3, H, W\), got shape \(10, 5, 3\)"),
        (42, "cannot read an image from a int"),
    ],
)
def test_unreadable_inputs_are_named(image, message):
    with pytest.raises(InputError, match=message):
        to_pil(image)


def test_crop_boxes_cuts_clips_and_refuses_degenerate_boxes():
    frame = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)  # (H=20, W=30, 3)
    crops = crop_boxes(frame, np.array([[2, 3, 12, 18], [-5.5, 10.2, 40, 25], [4.5, 4.5, 5.2, 6]]))
    assert [c.shape for c in crops] == [(15, 10, 3), (10, 30, 3), (2, 2, 3)]
    assert np.array_equal(crops[0], frame[3:18, 2:12])
    assert np.array_equal(crops[1], frame[10:20, 0:30])  # clipped to the frame
    assert np.array_equal(crops[2], frame[4:6, 4:6])  # every pixel the box touches
    assert crop_boxes(frame, []) == []
    for box, message in (
        ([5, 5, 5, 9], r"box 0 \(5.0, 5.0, 5.0, 9.0\) is empty"),
        ([5, 9, 8, 2], "needs x1 < x2 and y1 < y2"),
        ([31, 0, 40, 10], "lies outside the 30x20 frame"),
        ([0, 0, float("nan"), 4], "four finite numbers"),
        ([0, 0, 4], "four finite numbers"),
    ):
        with pytest.raises(InputError, match=message):
            crop_boxes(frame, [box])
    with pytest.raises(InputError, match="a frame must be a uint8"):
        crop_boxes(frame[..., 0], [[0, 0, 4, 4]])


def test_embed_command_writes_features_and_paths(encoder, photo, tmp_path, capsys):
    save_pretrained(encoder, tmp_path / "model")
    folder = tmp_path / "crops"
    (folder / "cam1").mkdir(parents=True)
    PIL.Image.fromarray(photo).save(folder / "cam1" / "x.png")
    PIL.Image.fromarray(photo[::-1]).save(folder / "y.jpg")
    output = tmp_path / "features.safetensors"
    assert main(["embed", str(tmp_path / "model"), str(folder), "--output", str(output), "--device", "cpu"]) == 0
    assert "2 images -> (2, 96) features" in capsys.readouterr().out
    with safe_open(output, "pt") as stored:
        features, metadata = stored.get_tensor("features"), stored.metadata()
    assert json.loads(metadata["paths"]) == ["cam1/x.png", "y.jpg"]
    assert json.loads(metadata["encoder"])["input_size"] == [64, 32]
    assert torch.equal(features, embed_images(encoder, list_images(folder)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops", "features.safetensors", "model"]  # no temp left

    assert main(["embed", str(tmp_path / "model"), str(tmp_path / "model"), "--output", str(output)]) == 2
    assert "no images" in capsys.readouterr().err
