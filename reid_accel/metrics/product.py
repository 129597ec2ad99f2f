"""The similarity product ``A @ B.T`` on the fastest CPU matmul the machine has: torch's (MKL) or numpy's (OpenBLAS).

torch's CPU wheels multiply with Intel MKL, numpy's with OpenBLAS. Which one is faster depends on the CPU and on
the two libraries' versions: MKL takes a slow generic path on CPUs not made by Intel (about 2x numpy's time on an
AMD EPYC at Market scale), while on an Intel Xeon either may win (BENCHMARKS.md). A rule written from the vendor
alone therefore guesses; here the choice is *measured* once per process, on a small product of the same kind, the
first time a product large enough to matter is asked for. Small products always use torch: measuring would cost
more than choosing well saves.

``REID_ACCEL_CPU_MATMUL=numpy`` or ``=torch`` (or the ``backend`` keyword) fixes the choice for products of every
size, e.g. for a benchmark or to make two runs multiply identically. Every caller that multiplies feature blocks on the CPU (exact
ranking, re-ranking, clustering, the gallery index) goes through `similarity`, so they all use the same one.
"""

import functools
import logging
import os
import time
from typing import Literal

import numpy as np
import torch

from reid_accel.errors import ReidAccelError

logger = logging.getLogger(__name__)

Backend = Literal["numpy", "torch"]
BACKENDS: tuple[str, ...] = ("numpy", "torch")
ENV_VAR = "REID_ACCEL_CPU_MATMUL"
# Products below this many multiply-adds use torch without measuring (a Market-scale block is ~2**37).
_MEASURE_FROM = 1 << 32
# The probe: (512, 1024) @ (1024, 2048), about 1 GFLOP, some 30-70 ms per call on two cores.
_PROBE_SHAPE = (512, 1024, 2048)
_PROBE_ROUNDS = 3


def similarity(
    left: torch.Tensor, right: torch.Tensor, *, out: torch.Tensor | None = None, backend: Backend | None = None
) -> torch.Tensor:
    """``left @ right.T`` with the faster CPU BLAS (torch on other devices).

    Args:
        left: (n, D) float tensor.
        right: (m, D) float tensor, same dtype and device.
        out: optional (n, m) tensor to write into (contiguous, same dtype and device).
        backend: ``"numpy"`` or ``"torch"`` for CPU tensors; default: the ``REID_ACCEL_CPU_MATMUL`` environment
            variable, else torch for small products, else the measured faster one.

    Returns:
        (n, m) similarities, ``out`` when given.
    """
    if left.device.type == "cpu" and _uses_numpy(left, right, backend):
        result = out if out is not None else torch.empty((len(left), len(right)), dtype=left.dtype)
        np.matmul(left.numpy(), right.numpy().T, out=result.numpy())
        return result
    return torch.matmul(left, right.T, out=out)  # (n, m)


def cpu_backend() -> Backend:
    """The CPU matmul: ``REID_ACCEL_CPU_MATMUL`` when set, else the measured faster one (measured on first call)."""
    return _fixed_backend() or _measured_backend()


def _fixed_backend() -> Backend | None:
    chosen = os.environ.get(ENV_VAR, "").strip().lower()
    if chosen and chosen not in BACKENDS:
        raise ReidAccelError(f"{ENV_VAR}={chosen!r}; expected one of {', '.join(BACKENDS)}")
    return chosen or None  # type: ignore[return-value]


def _uses_numpy(left: torch.Tensor, right: torch.Tensor, backend: Backend | None) -> bool:
    """The keyword, else the environment, else torch for small or half-precision products, else the measurement."""
    if backend is not None and backend not in BACKENDS:
        raise ReidAccelError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    backend = backend or _fixed_backend()
    if backend is not None:
        return backend == "numpy"
    if left.dtype not in (torch.float32, torch.float64) or left.dtype != right.dtype:
        return False  # numpy has no fast half-precision matmul; mixed dtypes are torch's to refuse
    if len(left) * len(right) * left.shape[1] < _MEASURE_FROM:
        return False
    return _measured_backend() == "numpy"


@functools.cache
def _measured_backend() -> Backend:
    """Times both matmuls on the probe, interleaved (a load spike hits both), and keeps the faster minimum."""
    rows, depth, cols = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(rows, depth, generator=generator)
    right = torch.randn(cols, depth, generator=generator)
    out = torch.empty(rows, cols)
    calls = {
        "numpy": lambda: np.matmul(left.numpy(), right.numpy().T, out=out.numpy()),
        "torch": lambda: torch.matmul(left, right.T, out=out),
    }
    best = dict.fromkeys(calls, float("inf"))
    for round_index in range(_PROBE_ROUNDS + 1):  # round 0 warms both up
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_index:
                best[name] = min(best[name], time.perf_counter() - start)
    chosen = min(best, key=best.get)
    logger.info(
        "CPU matmul: %s (probe %dx%dx%d: numpy %.1f ms, torch %.1f ms; set %s to fix the choice)",
        chosen,
        rows,
        depth,
        cols,
        1e3 * best["numpy"],
        1e3 * best["torch"],
        ENV_VAR,
    )
    return chosen  # type: ignore[return-value]
