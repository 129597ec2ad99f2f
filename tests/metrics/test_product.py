"""The shared similarity product: both CPU matmuls give the same block, and the choice between them."""

import numpy as np
import pytest
import torch

from reid_accel.errors import ReidAccelError
from reid_accel.metrics import product


@pytest.mark.parametrize("backend", ["numpy", "torch", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_matmuls_give_the_product(backend, dtype):
    left, right = torch.randn(7, 5, dtype=dtype), torch.randn(11, 5, dtype=dtype)
    expected = left.double().numpy() @ right.double().numpy().T
    out = torch.empty(7, 11, dtype=dtype)
    result = product.similarity(left, right, out=out, backend=backend)
    assert result.data_ptr() == out.data_ptr()
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        product.similarity(left, right, backend=backend).numpy(), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_the_environment_fixes_the_choice_without_measuring(monkeypatch, name):
    monkeypatch.setenv(product.ENV_VAR, name)
    monkeypatch.setattr(product, "_measured_backend", lambda: pytest.fail("measured although the choice was fixed"))
    calls, real = [], np.matmul
    monkeypatch.setattr(np, "matmul", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    assert product.cpu_backend() == name
    product.similarity(torch.randn(3, 4), torch.randn(5, 4))
    assert len(calls) == (name == "numpy")


def test_small_or_half_products_use_torch_without_measuring(monkeypatch):
    monkeypatch.delenv(product.ENV_VAR, raising=False)
    monkeypatch.setattr(product, "_measured_backend", lambda: pytest.fail("measured a small product"))
    left = torch.randn(3, 4)
    torch.testing.assert_close(product.similarity(left, left), left @ left.T)
    monkeypatch.setattr(product, "_MEASURE_FROM", 0)
    half = left.to(torch.bfloat16)
    torch.testing.assert_close(product.similarity(half, half), half @ half.T)


def test_large_products_follow_the_measurement(monkeypatch):
    monkeypatch.delenv(product.ENV_VAR, raising=False)
    monkeypatch.setattr(product, "_MEASURE_FROM", 0)
    calls, real = [], np.matmul
    monkeypatch.setattr(np, "matmul", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    for name in product.BACKENDS:
        monkeypatch.setattr(product, "_measured_backend", lambda name=name: name)
        calls.clear()
        product.similarity(torch.randn(3, 4), torch.randn(5, 4))
        assert len(calls) == (name == "numpy")


def test_an_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv(product.ENV_VAR, "mkl")
    with pytest.raises(ReidAccelError, match="REID_ACCEL_CPU_MATMUL='mkl'"):
        product.cpu_backend()
    with pytest.raises(ReidAccelError, match="backend='blas'"):
        product.similarity(torch.ones(2, 2), torch.ones(2, 2), backend="blas")


def test_the_measured_choice_is_one_of_the_two_and_kept(monkeypatch):
    monkeypatch.delenv(product.ENV_VAR, raising=False)
    monkeypatch.setattr(product, "_PROBE_SHAPE", (16, 32, 64))
    product._measured_backend.cache_clear()
    try:
        chosen = product.cpu_backend()
        assert chosen in product.BACKENDS
        assert product._measured_backend.cache_info().currsize == 1
    finally:
        product._measured_backend.cache_clear()
