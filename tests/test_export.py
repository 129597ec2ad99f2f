"""`reid-accel export`: ONNX (checked in onnxruntime), TorchScript and torch.export files that reproduce the
encoder's features, carry its preprocessing, and are refused (nothing written) when they do not."""

import json

import onnxruntime
import pytest
import torch

from reid_accel import export
from reid_accel.cli import main
from reid_accel.export import export_encoder
from reid_accel.generators.lookalike import write_market1501
from reid_accel.hub import from_pretrained, save_pretrained
from reid_accel.modeling import ReIDEncoder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    encoder = ReIDEncoder("test_resnet", input_size=[64, 32]).eval()
    with torch.no_grad():
        encoder.neck.running_mean.normal_()
    folder = tmp_path_factory.mktemp("model")
    save_pretrained(encoder, folder)
    return folder


def test_onnx_with_a_dynamic_batch_matches_pytorch_and_carries_the_preprocessing(model_dir, tmp_path, capsys):
    root = write_market1501(tmp_path / "market")
    output = tmp_path / "reid.onnx"
    argv = ["export", str(model_dir), "--format", "onnx", "--output", str(output), "--batch", "dynamic"]
    assert main([*argv, "--dataset", "market1501", "--root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference from PyTorch: random input" in printed and "8 real images" in printed

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    metadata = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    encoder = from_pretrained(model_dir)
    assert metadata["input_size"] == [64, 32] and metadata["mean"] == encoder.mean and metadata["std"] == encoder.std
    assert metadata["input_shape"] == ["batch", 3, 64, 32] and metadata["feature_dim"] == 96
    assert json.loads((tmp_path / "reid.onnx.json").read_text()) == metadata
    x = torch.randn(5, 3, 64, 32)
    (features,) = session.run(None, {"pixel_values": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(features), encoder.embed(x), rtol=0, atol=1e-5)


def test_a_vit_exports_to_onnx_at_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    encoder = ReIDEncoder("test_vit", last_stride=2, input_size=[64, 32]).eval()
    report = export_encoder(encoder, tmp_path / "vit.onnx", fmt="onnx", batch=2, images=torch.randn(3, 3, 64, 32))
    assert report.random_diff < 1e-5 and report.image_diff < 1e-5
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 64, 32]


def test_half_precision_is_checked_on_the_cpu(model_dir, tmp_path):
    encoder = from_pretrained(model_dir)
    report = export_encoder(encoder, tmp_path / "half.onnx", fmt="onnx", half=True)
    assert 0 < report.random_diff < export.TOLERANCE[torch.float16]
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"  # float32 in, cast inside
    assert json.loads(session.get_modelmeta().custom_metadata_map["precision"]) == "float16"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_and_exported_program_carry_their_metadata(model_dir, tmp_path):
    encoder = from_pretrained(model_dir)
    x = torch.randn(1, 3, 64, 32)
    script = export_encoder(encoder, tmp_path / "reid.pt", fmt="torchscript").path
    files = {export.METADATA_FILE: ""}
    loaded = torch.jit.load(str(script), _extra_files=files)
    assert json.loads(files[export.METADATA_FILE])["input_shape"] == [1, 3, 64, 32]
    torch.testing.assert_close(loaded(x), encoder.embed(x), rtol=0, atol=1e-6)

    archive = export_encoder(encoder, tmp_path / "reid.pt2", fmt="exported-program", batch=None).path
    files = {export.METADATA_FILE: ""}
    program = torch.export.load(archive, extra_files=files)
    assert json.loads(files[export.METADATA_FILE])["format"] == "exported-program"
    torch.testing.assert_close(program.module()(x.expand(4, -1, -1, -1)), encoder.embed(x).expand(4, -1))


def test_a_file_that_differs_beyond_the_tolerance_is_not_written(model_dir, tmp_path, capsys):
    output = tmp_path / "out" / "reid.pt"
    argv = ["export", str(model_dir), "--format", "torchscript", "--output", str(output), "--half"]
    assert main([*argv, "--tolerance", "1e-7"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("reid-accel: error: ") and "\n" not in error
    assert "not written, the torchscript model's features differ from PyTorch's by" in error
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "exported-program", "--output", "reid.onnx"], "is a .pt2 archive"),
        (["--format", "onnx", "--output", "reid.onnx", "--dataset", "market1501"], "--dataset and --root go together"),
        (["--format", "onnx", "--output", "reid.onnx", "--batch", "0"], "expected a positive batch size"),
        (["--format", "tensorrt", "--output", "reid.engine"], "invalid choice: 'tensorrt'"),
    ],
)
def test_bad_requests_fail_in_one_line_before_loading(options, message, tmp_path, capsys):
    assert main(["export", str(tmp_path / "no-model"), *options]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_runtime_names_the_extra(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(export.RUNTIME_MODULES, "onnx", ("onnx", "no_such_runtime"))
    assert main(["export", str(model_dir), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "needs no_such_runtime: pip install 'reid-accel[export]'" in capsys.readouterr().err
