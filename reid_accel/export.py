"""Export an encoder for other runtimes (ONNX, TorchScript, `torch.export`), checked against PyTorch first.

An exported file computes `ReIDEncoder.embed`: (N, 3, H, W) float32 pixels, resized to the encoder's input size and
normalised with its mean and std, in; (N, D) float32 L2-normalised features out. It carries that preprocessing as
metadata (ONNX `metadata_props`, a `reid_accel.json` extra file in TorchScript and ExportedProgram archives) and
in a JSON file beside it (`PATH.json`), which survives conversions such as a TensorRT engine build.

Trackers feed re-ID files a fixed preprocessing: BoxMOT (BoT-SORT, StrongSORT, Deep OC-SORT) resizes each crop
with OpenCV's bilinear to the file's input size and normalises it with ImageNet's mean and std whatever the model
was trained with. `input_norm="imagenet"` makes the file take that input: the change from ImageNet's mean/std to
the model's own is folded into the graph as one per-channel multiply-add (nothing at all for an ImageNet model).
Beside every ONNX and TorchScript file goes BoxMOT's sidecar, `PATH.metadata.json`, holding the input size (BoxMOT
reads a TorchScript file's size from it only); names BoxMOT misreads (it picks the runtime by suffix alone) are
refused for tracker files and warned about otherwise.

Before a file is written it is loaded back with its own runtime (onnxruntime for ONNX) and run on random input
(at another batch size when the batch is dynamic) and, when given, on real images; if its features differ from
eager PyTorch's in float32 by more than the tolerance, nothing is written and `ExportError` says by how much.
Everything runs on the CPU, half precision included: PyTorch and onnxruntime's CPU provider both run float16
graphs, slowly but exactly enough to check them.
"""

import contextlib
import copy
import importlib.util
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from reid_accel.data import ReIDImageDataset, build_transform, load_benchmark
from reid_accel.errors import ExportError
from reid_accel.fileio import atomic_path, write_json_atomic
from reid_accel.modeling import ReIDEncoder

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "exported-program")
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "features"
METADATA_FILE = "reid_accel.json"  # inside TorchScript / ExportedProgram archives
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3}  # max abs difference of L2-normalised features
DYNAMIC_CHECK_BATCH = 3  # a dynamic-batch file is traced at batch 2 and checked at another size
ONNX_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
INPUT_NORMS = ("model", "imagenet")  # the file takes pixels normalised with the model's mean/std, or ImageNet's
TRACKER_SIDECAR = ".metadata.json"  # BoxMOT's metadata file, `PATH.metadata.json`
TRACKER_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}  # the suffixes BoxMOT reads each format by


class EmbeddingModule(nn.Module):
    """What an exported file computes: (N, 3, H, W) float32 pixels -> (N, D) float32 L2-normalised features.

    With `dtype=torch.float16` the weights are half precision and the input is cast inside, so callers always
    hand over and receive float32.

    With `input_norm="imagenet"` the input is normalised with ImageNet's mean/std and the step to the model's own
    is the first operation, `x * (std_in / std) + (mean_in - mean) / std` per channel; for a model trained with
    ImageNet's mean/std it is left out, so the graph is the same as with `input_norm="model"`.
    """

    def __init__(self, encoder: ReIDEncoder, *, dtype: torch.dtype = torch.float32, input_norm: str = "model") -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).cpu().to(dtype)
        self.dtype = dtype
        mean, std = torch.tensor(encoder.mean), torch.tensor(encoder.std)
        in_mean, in_std = input_statistics(encoder, input_norm)
        self.renormalize = (in_mean, in_std) != (encoder.mean, encoder.std)
        self.register_buffer("scale", (torch.tensor(in_std) / std)[:, None, None], persistent=False)  # (3, 1, 1)
        self.register_buffer("shift", ((torch.tensor(in_mean) - mean) / std)[:, None, None], persistent=False)
        self.eval()

    def forward(self, pixel_values: Tensor) -> Tensor:
        if self.renormalize:
            pixel_values = pixel_values * self.scale + self.shift  # (N, 3, H, W), now in the model's normalisation
        return self.encoder.embed(pixel_values.to(self.dtype))  # (N, D)


def input_statistics(encoder: ReIDEncoder, input_norm: str) -> tuple[list[float], list[float]]:
    """The mean and std an exported file's input is normalised with: the model's own, or ImageNet's."""
    if input_norm == "imagenet":
        return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    return encoder.mean, encoder.std


@dataclass(frozen=True)
class ExportReport:
    """Where an export went and how closely it reproduces eager PyTorch (max abs differences of features)."""

    path: Path
    metadata_path: Path
    tracker_metadata_path: Path | None
    random_diff: float
    image_diff: float | None
    tolerance: float


def export_metadata(
    encoder: ReIDEncoder, *, fmt: str, batch: int | None, dtype: torch.dtype, input_norm: str = "model"
) -> dict:
    """The preprocessing and interface of an exported file, for whoever feeds it.

    Args:
        encoder: the exported encoder.
        fmt: one of `FORMATS`.
        batch: the fixed batch size, or None for a dynamic one.
        dtype: the precision of the weights.
        input_norm: one of `INPUT_NORMS`; `mean` and `std` are what the file's input is normalised with.
    """
    height, width = encoder.input_size
    mean, std = input_statistics(encoder, input_norm)
    return {
        "format": fmt,
        "input_name": INPUT_NAME,
        "input_shape": ["batch" if batch is None else batch, 3, height, width],
        "input_dtype": "float32",
        "preprocessing": f"RGB, resized to {height}x{width} (bilinear, aspect ratio not kept), / 255, "
        "then (x - mean) / std per channel",
        "input_size": [height, width],
        "mean": mean,
        "std": std,
        "input_norm": input_norm,
        "output_name": OUTPUT_NAME,
        "output": f"(batch, {encoder.feature_dim}) float32, L2-normalised: rank by dot product",
        "feature_dim": encoder.feature_dim,
        "precision": "float16" if dtype == torch.float16 else "float32",
        "encoder": encoder.export_config(),
        "torch_version": torch.__version__,
    }


def dataset_images(
    encoder: ReIDEncoder, name: str, root: str | os.PathLike, *, count: int = 8, options: dict | None = None
) -> Tensor:
    """`count` query images of a benchmark, evenly spaced, preprocessed as evaluation does: (count, 3, H, W)."""
    query = load_benchmark(name, root, **(options or {}))["query"]
    height, width = encoder.input_size
    images = ReIDImageDataset(query, build_transform(height, width, mean=encoder.mean, std=encoder.std))
    taken = min(count, len(images))
    picks = [round(i * (len(images) - 1) / max(taken - 1, 1)) for i in range(taken)]  # distinct, first and last
    return torch.stack([images[i]["pixel_values"] for i in picks])  # (taken, 3, H, W)


def _write_onnx(module: EmbeddingModule, example: Tensor, path: Path, *, dynamic: bool, metadata: dict) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    with _quiet_loggers(ONNX_LOGGERS):
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    program.model.metadata_props.update({key: json.dumps(value) for key, value in metadata.items()})
    program.save(path, external_data=False)


def _run_onnx(path: Path) -> Callable[[Tensor], Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def _write_torchscript(module: EmbeddingModule, example: Tensor, path: Path, *, dynamic: bool, metadata: dict) -> None:
    # Tracing records shapes as computed from the input, so a traced batch dimension stays free; `dynamic` is
    # checked at another batch size like the other formats.
    with _torchscript_deprecation():
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def _run_torchscript(path: Path) -> Callable[[Tensor], Tensor]:
    with _torchscript_deprecation():
        return torch.jit.load(str(path))


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Keep the exporter's graph-rewriting chatter (one INFO line per pass and initializer) out of our log."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for quiet in loggers:
        quiet.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for quiet, level in zip(loggers, levels, strict=True):
            quiet.setLevel(level)


@contextlib.contextmanager
def _torchscript_deprecation() -> Iterator[None]:
    """Turn PyTorch's repeated TorchScript deprecation warnings into one log line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        yield
    if any(issubclass(w.category, FutureWarning) for w in caught):
        logger.warning(
            "torch %s deprecates TorchScript; --format exported-program is its successor", torch.__version__
        )


def _write_exported_program(
    module: EmbeddingModule, example: Tensor, path: Path, *, dynamic: bool, metadata: dict
) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata)})


def _run_exported_program(path: Path) -> Callable[[Tensor], Tensor]:
    return torch.export.load(path).module()


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "exported-program": _write_exported_program}
RUNNERS = {"onnx": _run_onnx, "torchscript": _run_torchscript, "exported-program": _run_exported_program}
RUNTIME_MODULES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": (), "exported-program": ()}


def tracker_name_problem(fmt: str, output: str | os.PathLike) -> str | None:
    """Why BoxMOT would misread this file, or None: it picks the runtime from the suffix alone, so a TorchScript
    file named `.pt` is taken for a PyTorch checkpoint, and an exported program is no format of its."""
    if fmt not in TRACKER_SUFFIXES:
        return f"--format {fmt}: trackers (BoxMOT) read {' and '.join(TRACKER_SUFFIXES)} files only"
    if Path(output).suffix != TRACKER_SUFFIXES[fmt]:
        return f"--output {output}: BoxMOT reads a {fmt} file by its suffix {TRACKER_SUFFIXES[fmt]}; name it so"
    return None


def validate_export(fmt: str, output: str | os.PathLike, *, batch: int | None, input_norm: str = "model") -> None:
    """Refuse an export request that cannot succeed, before any model is loaded.

    A name BoxMOT misreads is refused for a tracker file (`input_norm="imagenet"`); `export_encoder` warns about
    it otherwise.

    Raises:
        ExportError: unknown format or input normalisation, a .pt2 archive not named so, a batch size below 1,
            a tracker file BoxMOT would misread, or the format's runtime not installed.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if input_norm not in INPUT_NORMS:
        raise ExportError(f"--input-norm {input_norm!r}: expected one of {', '.join(INPUT_NORMS)}")
    problem = tracker_name_problem(fmt, output)
    if problem is not None and input_norm == "imagenet":
        raise ExportError(problem)
    if fmt == "exported-program" and Path(output).suffix != ".pt2":
        raise ExportError(f"--output {output}: an exported program is a .pt2 archive, name it so (torch.export.load)")
    if batch is not None and batch < 1:
        raise ExportError(f"--batch {batch}: expected a positive size or 'dynamic'")
    missing = [m for m in RUNTIME_MODULES[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"--format {fmt} needs {', '.join(missing)}: pip install 'reid-accel[export]'")


@torch.no_grad()
def _max_diff(
    run: Callable[[Tensor], Tensor], reference: Callable[[Tensor], Tensor], inputs: Tensor, batch: int | None
) -> float:
    """Largest |exported - eager float32| feature difference over `inputs`, fed in batches the file accepts."""
    size = len(inputs) if batch is None else batch
    worst = 0.0
    for start in range(0, len(inputs), size):
        chunk = inputs[start : start + size]  # (b, 3, H, W)
        padded = torch.cat([chunk, chunk[-1:].expand(size - len(chunk), *chunk.shape[1:])])  # (size, 3, H, W)
        got = run(padded)[: len(chunk)].float()
        worst = max(worst, (got - reference(chunk)).abs().max().item())
    return worst


def export_encoder(
    encoder: ReIDEncoder,
    output: str | os.PathLike,
    *,
    fmt: str,
    batch: int | None = 1,
    half: bool = False,
    images: Tensor | None = None,
    tolerance: float | None = None,
    seed: int = 0,
    input_norm: str = "model",
) -> ExportReport:
    """Export `encoder.embed` to `output` after checking the exported file against eager PyTorch.

    Args:
        encoder: the model to export (left unchanged; a CPU copy is exported).
        output: the file to write; its metadata goes to `output` + ".json" beside it, and for ONNX and
            TorchScript BoxMOT's to `output` + ".metadata.json".
        fmt: "onnx", "torchscript" or "exported-program".
        batch: the batch size the file takes, or None for any (a dynamic batch dimension).
        half: float16 weights (float32 input and output).
        images: (M, 3, H, W) real images preprocessed with the model's mean and std, to check on too (e.g. from
            `dataset_images`).
        tolerance: the largest accepted feature difference; default `TOLERANCE` of the precision.
        seed: seeds the random check input.
        input_norm: "model" (the file takes pixels normalised with the model's mean/std) or "imagenet" (with
            ImageNet's, as trackers feed them: the file for BoxMOT).

    Returns:
        The paths written and the differences measured.

    Raises:
        ExportError: unknown format, a missing runtime, or a file whose features differ beyond the tolerance (then
            nothing is written).
    """
    validate_export(fmt, output, batch=batch, input_norm=input_norm)
    problem = tracker_name_problem(fmt, output)
    if problem is not None and fmt in TRACKER_SUFFIXES:
        logger.warning("%s (for use in a tracker)", problem)
    if input_norm == "imagenet" and batch is not None:
        logger.warning("--batch %d: trackers embed all crops of a frame at once; --batch dynamic suits them", batch)
    height, width = encoder.input_size
    if images is not None and tuple(images.shape[1:]) != (3, height, width):
        raise ExportError(f"check images have shape {tuple(images.shape)}, expected (M, 3, {height}, {width})")
    dtype = torch.float16 if half else torch.float32
    tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
    output = Path(output)
    metadata = export_metadata(encoder, fmt=fmt, batch=batch, dtype=dtype, input_norm=input_norm)
    module = EmbeddingModule(encoder, dtype=dtype, input_norm=input_norm)
    reference = EmbeddingModule(encoder, input_norm=input_norm)  # eager, float32
    if images is not None and module.renormalize:  # checked as the file will be fed them: ImageNet-normalised
        images = (images.cpu() - reference.shift) / reference.scale  # (M, 3, H, W)
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(2 if batch is None else batch, 3, height, width, generator=generator)
    check = torch.randn(DYNAMIC_CHECK_BATCH if batch is None else batch, 3, height, width, generator=generator)
    with atomic_path(output) as tmp:
        WRITERS[fmt](module, example, tmp, dynamic=batch is None, metadata=metadata)
        run = RUNNERS[fmt](tmp)
        random_diff = _max_diff(run, reference, check, batch)
        image_diff = _max_diff(run, reference, images.cpu(), batch) if images is not None else None
        worst = max(random_diff, image_diff or 0.0)
        if not math.isfinite(worst) or worst > tolerance:
            on = "real images" if image_diff is not None and image_diff >= random_diff else "random input"
            raise ExportError(
                f"{output}: not written, the {fmt} model's features differ from PyTorch's by {worst:.2e} on {on} "
                f"(tolerance {tolerance:.0e})"
            )
        metadata_path = output.with_name(output.name + ".json")
        write_json_atomic(metadata_path, metadata)
        tracker_path = None
        if fmt in TRACKER_SUFFIXES:
            tracker_path = output.with_name(output.name + TRACKER_SIDECAR)
            write_json_atomic(tracker_path, tracker_metadata(encoder))
    logger.info("Exported %s to %s (max abs difference %.2e)", fmt, output, worst)
    return ExportReport(output, metadata_path, tracker_path, random_diff, image_diff, tolerance)


def tracker_metadata(encoder: ReIDEncoder) -> dict:
    """BoxMOT's sidecar: the input size, without a model name (BoxMOT then uses the file as it is)."""
    height, width = encoder.input_size
    return {"schema_version": 1, "model_kwargs_schema_version": 1, "model_kwargs": {"img_size": [height, width]}}
