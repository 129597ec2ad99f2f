"""The similarity product ``A @ B.T`` on the fastest CPU matmul the machine has: torch's (MKL) or numpy's (OpenBLAS).

torch's CPU wheels multiply with Intel MKL, numpy's with OpenBLAS. Which one is faster depends on the CPU, on the
two libraries' versions and on the shape: MKL takes a slow generic path on CPUs not made by Intel (about 2x numpy's
time on an AMD EPYC at Market scale), while on an Intel Xeon OpenBLAS wins a (512 x 1,024) @ (1,024 x 2,048)
product by 1.4x and MKL a Market-scale block by 1.3x, but not in slices of a quarter of its rows (BENCHMARKS.md).
Neither a vendor rule nor a small probe can tell, so the choice is *measured on the work itself*, call by call:
the first calls of each kind of product (dtype and the three sizes, each to the nearest power of two) alternate
between the libraries, each call timed, until each has made `_SAMPLES` of them; from then on the one with the
fastest call (least time per row) multiplies that kind. The minimum is the right statistic on a shared machine:
load only ever adds time. No product is computed twice; the slower library's calls are the price, paid once per
machine: the samples are kept in ``$HF_HOME/reid_accel/matmul.json`` under the machine (CPU model, library
versions, threads), so later processes go on from them. Products too small to matter use torch.

``REID_ACCEL_CPU_MATMUL=numpy`` or ``=torch`` (or the ``backend`` keyword) fixes the choice for products of every
size, e.g. for a benchmark or to make two runs multiply identically. Every caller that multiplies feature blocks on
the CPU (exact ranking, re-ranking, clustering, the gallery index) goes through `similarity`, so they share it.
"""

import functools
import json
import logging
import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from huggingface_hub import constants as hub_constants

from reid_accel.errors import ReidAccelError
from reid_accel.fileio import write_json_atomic

logger = logging.getLogger(__name__)

Backend = Literal["numpy", "torch"]
BACKENDS: tuple[str, ...] = ("numpy", "torch")
ENV_VAR = "REID_ACCEL_CPU_MATMUL"
# Products below this many multiply-adds use torch without measuring (a Market-scale block is ~2**35).
_MEASURE_FROM = 1 << 32
# Timed calls per library before a kind's choice is made.
_SAMPLES = 2
# Where the samples are kept between processes.
SAMPLES_FILE = Path(hub_constants.HF_HOME) / "reid_accel" / "matmul.json"

Kind = str  # "float32 (1024, 2048) x (16384, 2048)": dtype and both operands' shapes, to powers of two
Samples = dict[Kind, dict[Backend, list[float]]]  # seconds per row of each timed call
_samples: Samples | None = None  # this machine's, read from the file on first use
_lock = threading.RLock()


def similarity(
    left: torch.Tensor, right: torch.Tensor, *, out: torch.Tensor | None = None, backend: Backend | None = None
) -> torch.Tensor:
    """``left @ right.T`` with the faster CPU BLAS (torch on other devices).

    Args:
        left: (n, D) float tensor.
        right: (m, D) float tensor, same dtype and device.
        out: optional (n, m) tensor to write into (contiguous, same dtype and device).
        backend: ``"numpy"`` or ``"torch"`` for CPU tensors; default: the ``REID_ACCEL_CPU_MATMUL`` environment
            variable, else torch for small products, else the faster one measured on this kind of product.

    Returns:
        (n, m) similarities, ``out`` when given.
    """
    if left.device.type != "cpu":
        return torch.matmul(left, right.T, out=out)  # (n, m)
    if out is None:
        out = torch.empty((len(left), len(right)), dtype=torch.promote_types(left.dtype, right.dtype))
    chosen = _fixed(backend)
    if chosen is None and _measurable(left, right):
        kind = _kind(left, right)
        chosen = _chosen(kind)
        if chosen is None:
            _timed(kind, left, right, out)
            return out
    _multiply(chosen or "torch", left, right, out)
    return out


def measured_choices() -> dict[Kind, Backend]:
    """The library chosen for each kind of product measured enough on this machine (for logs and benchmarks)."""
    with _lock:
        return {kind: chosen for kind in sorted(_machine_samples()) if (chosen := _chosen(kind)) is not None}


def _fixed(backend: Backend | None) -> Backend | None:
    """The keyword, else the environment variable, else None (the caller decides)."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ReidAccelError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
        return backend
    chosen = os.environ.get(ENV_VAR, "").strip().lower()
    if chosen and chosen not in BACKENDS:
        raise ReidAccelError(f"{ENV_VAR}={chosen!r}; expected one of {', '.join(BACKENDS)}")
    return chosen or None  # type: ignore[return-value]


def _measurable(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Large float32/float64 products of one dtype: numpy has no fast half-precision matmul, mixed dtypes are
    torch's to refuse."""
    if left.dtype not in (torch.float32, torch.float64) or left.dtype != right.dtype:
        return False
    return len(left) * len(right) * left.shape[1] >= _MEASURE_FROM


def _kind(left: torch.Tensor, right: torch.Tensor) -> Kind:
    rows, cols, depth = (2 ** round(math.log2(size)) for size in (len(left), len(right), left.shape[1]))
    return f"{str(left.dtype).removeprefix('torch.')} ({rows}, {depth}) x ({cols}, {depth})"


def _chosen(kind: Kind) -> Backend | None:
    """The library with the fastest timed call of `kind`, once each has made `_SAMPLES` calls; else None."""
    with _lock:
        timed = _machine_samples().get(kind, {})
        if any(len(timed.get(name, ())) < _SAMPLES for name in BACKENDS):
            return None
        return min(BACKENDS, key=lambda name: min(timed[name]))  # type: ignore[return-value]


def _multiply(backend: Backend, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor) -> None:
    if backend == "numpy":
        np.matmul(left.numpy(), right.numpy().T, out=out.numpy())
    else:
        torch.matmul(left, right.T, out=out)


def _timed(kind: Kind, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor) -> None:
    """One measuring call: the library with fewer samples of `kind` (torch first) multiplies, timed and recorded."""
    with _lock:
        timed = _machine_samples().setdefault(kind, {})
        name: Backend = min(("torch", "numpy"), key=lambda n: len(timed.get(n, ())))  # type: ignore[assignment]
    began = time.perf_counter()
    _multiply(name, left, right, out)
    seconds = time.perf_counter() - began
    with _lock:
        timed.setdefault(name, []).append(seconds / len(left))
        _save()
    chosen = _chosen(kind)
    if chosen is not None:
        logger.info(
            "CPU matmul for %s products: %s (fastest of %d calls each: numpy %.3g ms, torch %.3g ms per 100 rows; "
            "kept in %s; %s fixes the choice)",
            kind,
            chosen,
            _SAMPLES,
            1e5 * min(timed["numpy"]),
            1e5 * min(timed["torch"]),
            SAMPLES_FILE,
            ENV_VAR,
        )


@functools.cache
def _machine() -> str:
    """What the choice depends on besides the shape: the CPU, the two libraries and the threads."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}; torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}"


def _machine_samples() -> Samples:
    """This machine's samples (with the lock held), read once from `SAMPLES_FILE`: none when it is missing,
    unreadable, or written on another machine or with other library versions."""
    global _samples
    if _samples is None:
        try:
            saved = json.loads(SAMPLES_FILE.read_text())
            kinds = saved["samples"] if saved["machine"] == _machine() else {}
            _samples = {
                str(kind): {name: [float(s) for s in timed[name]] for name in BACKENDS if name in timed}
                for kind, timed in kinds.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            _samples = {}
    return _samples


def _save() -> None:
    """Writes the samples (with the lock held); a cache, so failing to write costs only measurements later."""
    try:
        write_json_atomic(SAMPLES_FILE, {"machine": _machine(), "samples": _machine_samples()})
    except OSError as error:
        logger.debug("could not keep the CPU matmul samples in %s: %s", SAMPLES_FILE, error)
