"""A model in a tracker: the file BoxMOT loads computes the features `embed_images` gives on the same crops.

BoxMOT is not installed here: `boxmot_features` feeds an exported ONNX file the way its re-ID backends do (box
corners rounded, each crop resized with `cv2.resize` INTER_LINEAR to the graph's input size, BGR -> RGB, / 255,
ImageNet mean/std, float32 NCHW, onnxruntime), as described in BoxMOT 25's `reid/backends`.

The model is `test_resnet` at 128x64 with its timm mean/std 0.5 (not ImageNet's, as the demo model: the folded
conversion is exercised), random weights, and batch-norm statistics taken from the test crops themselves (one cumulative pass in
train mode, then eval mode): random weights with default statistics give features that hardly differ between
people, which would make any cosine check pass; these differ (checked).
"""

import json

import cv2
import numpy as np
import onnxruntime
import pytest
import torch

from reid_accel.cli import main
from reid_accel.data import build_transform
from reid_accel.export import EmbeddingModule, export_encoder
from reid_accel.hub import save_pretrained
from reid_accel.inference import crop_boxes, embed_detections, embed_images, to_pil
from reid_accel.modeling import ReIDEncoder

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def street_frame(seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A BGR frame with structure at every scale: smooth blobs plus pixel noise."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    frame = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(frame + rng.integers(-25, 26, frame.shape), 0, 255).astype(np.uint8)


def person_boxes(seed: int, heights=(70, 110, 160, 220, 300, 380), frame_shape=(480, 640)) -> np.ndarray:
    """Float detector boxes (x1, y1, x2, y2) of person proportions, from smaller to larger than 128x64."""
    rng = np.random.default_rng(seed)
    boxes = []
    for h in heights:
        w = h / 2.6
        x, y = rng.uniform(0, frame_shape[1] - w), rng.uniform(0, frame_shape[0] - h)
        boxes.append([x, y, x + w, y + h])
    return np.array(boxes)


def boxmot_features(onnx_path, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Features as BoxMOT computes them from a BGR frame and float boxes."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    height, width = graph_input.shape[2:]
    batch = []
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        crop = cv2.resize(frame[y1:y2, x1:x2], (width, height), interpolation=cv2.INTER_LINEAR)
        crop = (crop[..., ::-1].astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
        batch.append(crop.transpose(2, 0, 1))
    (features,) = session.run(None, {graph_input.name: np.stack(batch).astype(np.float32)})
    return features / np.linalg.norm(features, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def scene():
    frames = [street_frame(0), street_frame(1)]
    boxes = [person_boxes(0), person_boxes(1, heights=(90, 250))]
    return frames, boxes


@pytest.fixture(scope="module")
def encoder(scene):
    torch.manual_seed(0)
    model = ReIDEncoder("test_resnet", input_size=[128, 64])
    assert model.mean == model.std == [0.5] * 3
    frames, boxes = scene
    crops = [crop for frame, b in zip(frames, boxes, strict=True) for crop in crop_boxes(frame, np.round(b))]
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative: the statistics of the pass below
    transform = build_transform(128, 64, mean=model.mean, std=model.std)
    pixels = torch.stack([transform(to_pil(crop, bgr=True)) for crop in crops])  # (N, 3, 128, 64)
    model.train()
    with torch.no_grad():
        model.embed(pixels)
    return model.eval()


@pytest.fixture(scope="module")
def tracker_onnx(encoder, tmp_path_factory):
    """The file a tracker loads: ImageNet-normalised input, any batch."""
    output = tmp_path_factory.mktemp("export") / "reid.onnx"
    return export_encoder(encoder, output, fmt="onnx", batch=None, input_norm="imagenet")


def test_boxmot_features_equal_ours_on_the_same_crops(encoder, scene, tracker_onnx):
    frame, boxes = scene[0][0], scene[1][0]
    report = tracker_onnx
    theirs = torch.from_numpy(boxmot_features(report.path, frame, boxes))
    crops = crop_boxes(frame, np.round(boxes))
    ours = embed_images(encoder, crops, bgr=True, resize="opencv")
    cosine = (theirs * ours).sum(1)
    assert cosine.min() >= 0.99, cosine
    strangers = ours @ ours.T - torch.eye(len(ours)) * 2
    assert strangers.max() < 0.9, strangers  # the features tell crops apart: the check above is not vacuous
    # the antialiased resize of evaluation is what differs on crops far larger than the input (see README)
    antialiased = (theirs * embed_images(encoder, crops, bgr=True)).sum(1)
    assert antialiased[:2].min() >= 0.99  # the crops no larger than about twice the input size


def test_detections_of_several_frames_share_batches_and_match_embed_images(encoder, scene):
    frames, boxes = scene
    per_frame = embed_detections(encoder, [*frames, frames[0]], [*boxes, np.zeros((0, 4))], batch_size=3)
    assert [tuple(f.shape) for f in per_frame] == [(6, 96), (2, 96), (0, 96)]
    for frame, frame_boxes, features in zip(frames, boxes, per_frame, strict=False):
        expected = embed_images(encoder, crop_boxes(frame, frame_boxes), bgr=True, resize="opencv")
        torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


def test_imagenet_input_is_folded_exactly_and_left_out_for_imagenet_models(encoder, tracker_onnx):
    x = torch.rand(4, 3, 128, 64)  # pixels in [0, 1]
    as_imagenet = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    as_model = (x - 0.5) / 0.5
    report = tracker_onnx
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {"pixel_values": as_imagenet.numpy()})
    torch.testing.assert_close(torch.from_numpy(features), encoder.embed(as_model), rtol=0, atol=1e-5)
    metadata = json.loads(report.metadata_path.read_text())
    assert metadata["input_norm"] == "imagenet" and metadata["mean"] == pytest.approx(IMAGENET_MEAN.tolist())
    assert metadata["encoder"]["mean"] == [0.5] * 3
    imagenet_model = ReIDEncoder("test_resnet", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert not EmbeddingModule(imagenet_model, input_norm="imagenet").renormalize


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_boxmot_sidecar_beside_onnx_and_torchscript(encoder, tmp_path):
    sidecar = {"schema_version": 1, "model_kwargs_schema_version": 1, "model_kwargs": {"img_size": [128, 64]}}
    report = export_encoder(encoder, tmp_path / "reid.torchscript", fmt="torchscript", input_norm="imagenet")
    assert report.tracker_metadata_path == tmp_path / "reid.torchscript.metadata.json"
    assert json.loads(report.tracker_metadata_path.read_text()) == sidecar
    report = export_encoder(encoder, tmp_path / "reid.pt2", fmt="exported-program", batch=None)
    assert report.tracker_metadata_path is None and not (tmp_path / "reid.pt2.metadata.json").exists()


@pytest.mark.parametrize(
    ("fmt", "name", "message"),
    [
        ("torchscript", "reid.pt", "BoxMOT reads a torchscript file by its suffix .torchscript; name it so"),
        ("onnx", "resnet50.onnx.bak", "BoxMOT reads a onnx file by its suffix .onnx"),
        ("exported-program", "reid.pt2", "trackers (BoxMOT) read onnx and torchscript files only"),
    ],
)
def test_names_boxmot_misreads_are_refused_for_tracker_files(model_dir, tmp_path, capsys, fmt, name, message):
    argv = ["export", str(model_dir), "--format", fmt, "--output", str(tmp_path / name), "--input-norm", "imagenet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_a_misread_name_is_only_warned_about_without_imagenet_input(encoder, tmp_path, caplog):
    export_encoder(encoder, tmp_path / "reid.pt", fmt="torchscript")
    assert "BoxMOT reads a torchscript file by its suffix .torchscript" in caplog.text
    assert (tmp_path / "reid.pt.metadata.json").exists()


def test_tracker_export_command(model_dir, tmp_path, capsys):
    output = tmp_path / "reid.onnx"
    argv = ["export", str(model_dir), "--format", "onnx", "--output", str(output), "--input-norm", "imagenet"]
    assert main([*argv, "--batch", "dynamic"]) == 0
    assert f"{output}.metadata.json" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "reid.onnx.metadata.json").read_text())
    assert sidecar == {"schema_version": 1, "model_kwargs_schema_version": 1, "model_kwargs": {"img_size": [128, 64]}}


@pytest.fixture(scope="module")
def model_dir(encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    save_pretrained(encoder, folder)
    return folder


def test_embed_command_resizes_as_trackers_do(encoder, model_dir, scene, tmp_path):
    from safetensors.torch import load_file

    crops = crop_boxes(scene[0][0], np.round(scene[1][0]))
    (tmp_path / "crops").mkdir()
    for index, crop in enumerate(crops):
        cv2.imwrite(str(tmp_path / "crops" / f"{index}.png"), crop)
    output = tmp_path / "features.safetensors"
    argv = ["embed", str(model_dir), str(tmp_path / "crops"), "--output", str(output), "--device", "cpu"]
    assert main([*argv, "--resize", "opencv"]) == 0
    expected = embed_images(encoder, crops, bgr=True, resize="opencv")
    torch.testing.assert_close(load_file(output)["features"], expected, rtol=0, atol=1e-5)


def test_eval_resizes_as_trackers_do_on_a_folder_of_identities(encoder, model_dir, scene, tmp_path, monkeypatch):
    import datasets
    from safetensors import safe_open

    crops = [crop for frame, b in zip(*scene, strict=True) for crop in crop_boxes(frame, np.round(b))]
    for index, crop in enumerate(crops):  # 4 people, 2 crops each, no cameras
        (tmp_path / "crops" / f"person{index // 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "crops" / f"person{index // 2}" / f"{index}.png"), crop)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    argv = ["eval", str(model_dir), "--dataset", "folders", "--root", str(tmp_path / "crops"), "--num-workers", "0"]
    assert main([*argv, "--resize", "opencv", "--output-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["resize"] == "opencv" and metrics["num_valid_queries"] == 4  # same-camera matches count
    with safe_open(tmp_path / "eval" / "features.safetensors", "pt") as stored:
        features, paths = stored.get_tensor("query_features"), json.loads(stored.metadata()["query_paths"])
    expected = embed_images(encoder, paths, resize="opencv")
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
