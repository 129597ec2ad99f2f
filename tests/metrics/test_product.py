"""The shared similarity product: both CPU matmuls give the same block, and the choice between them."""

import json
import time

import numpy as np
import pytest
import torch

from reid_accel.errors import ReidAccelError
from reid_accel.metrics import product


@pytest.fixture(autouse=True)
def fresh_samples(monkeypatch, tmp_path):
    """Each test starts with nothing measured or kept, the choice free, and measuring from the smallest product."""
    monkeypatch.setattr(product, "_samples", None)
    monkeypatch.setattr(product, "SAMPLES_FILE", tmp_path / "reid_accel" / "matmul.json")
    monkeypatch.setattr(product, "_MEASURE_FROM", 0)
    monkeypatch.delenv(product.ENV_VAR, raising=False)


@pytest.fixture
def numpy_calls(monkeypatch) -> list[int]:
    calls, real = [], np.matmul
    monkeypatch.setattr(np, "matmul", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


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
def test_the_environment_fixes_the_choice_without_measuring(monkeypatch, numpy_calls, name):
    monkeypatch.setenv(product.ENV_VAR, name)
    monkeypatch.setattr(product, "_timed", lambda *args: pytest.fail("measured although the choice was fixed"))
    product.similarity(torch.randn(300, 4), torch.randn(5, 4))
    assert len(numpy_calls) == (name == "numpy")
    assert product.measured_choices() == {}


def test_small_or_half_products_use_torch_without_measuring(monkeypatch, numpy_calls):
    monkeypatch.setattr(product, "_timed", lambda *args: pytest.fail("measured a product it should not"))
    half = torch.randn(3, 4).to(torch.bfloat16)
    torch.testing.assert_close(product.similarity(half, half), half @ half.T)
    monkeypatch.setattr(product, "_MEASURE_FROM", 1 << 32)
    left = torch.randn(3, 4)
    torch.testing.assert_close(product.similarity(left, left), left @ left.T)
    assert not numpy_calls


def test_the_first_calls_of_a_kind_alternate_then_the_fastest_one_multiplies(numpy_calls):
    left, right = torch.randn(10, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    for _ in range(2 * product._SAMPLES):  # torch, numpy, torch, numpy
        np.testing.assert_allclose(product.similarity(left, right).numpy(), left.numpy() @ right.numpy().T)
    assert len(numpy_calls) == product._SAMPLES  # no product computed twice
    ((kind, chosen),) = product.measured_choices().items()
    assert kind == "float64 (8, 8) x (8, 8)" and chosen in product.BACKENDS
    saved = json.loads(product.SAMPLES_FILE.read_text())
    assert saved["machine"] == product._machine()
    assert {name: len(times) for name, times in saved["samples"][kind].items()} == {"numpy": 2, "torch": 2}
    numpy_calls.clear()
    product.similarity(torch.randn(11, 6, dtype=torch.float64), torch.randn(10, 6, dtype=torch.float64))
    assert len(numpy_calls) == (chosen == "numpy")  # same kind: the choice
    product.similarity(torch.randn(12, 6), torch.randn(10, 6))  # float32: another kind, measured anew
    assert len(json.loads(product.SAMPLES_FILE.read_text())["samples"]) == 2


@pytest.mark.parametrize("slow", ["numpy", "torch"])
def test_the_library_with_the_fastest_call_is_kept(monkeypatch, slow):
    real = product._multiply

    def multiply(backend, left, right, out):
        if backend == slow:
            time.sleep(0.02)
        real(backend, left, right, out)

    monkeypatch.setattr(product, "_multiply", multiply)
    for _ in range(2 * product._SAMPLES):
        product.similarity(torch.randn(8, 3), torch.randn(4, 3))
    assert list(product.measured_choices().values()) == [{"numpy": "torch", "torch": "numpy"}[slow]]


def test_kept_samples_spare_a_later_process_the_measuring(monkeypatch, numpy_calls):
    kind = "float32 (256, 4) x (8, 4)"
    product.SAMPLES_FILE.parent.mkdir(parents=True)
    samples = {kind: {"numpy": [1e-6, 2e-6], "torch": [3e-6, 4e-6]}}
    product.SAMPLES_FILE.write_text(json.dumps({"machine": product._machine(), "samples": samples}))
    monkeypatch.setattr(product, "_timed", lambda *args: pytest.fail("measured a kind measured before"))
    product.similarity(torch.randn(300, 4), torch.randn(7, 4))
    assert len(numpy_calls) == 1 and product.measured_choices() == {kind: "numpy"}


@pytest.mark.parametrize(
    "content", ["{not json", '["a list"]', '{"machine": "another CPU", "samples": {}}', '{"samples": {}}']
)
def test_a_damaged_or_foreign_samples_file_is_measured_anew_and_replaced(content):
    product.SAMPLES_FILE.parent.mkdir(parents=True)
    product.SAMPLES_FILE.write_text(content)
    product.similarity(torch.randn(8, 4), torch.randn(7, 4))
    saved = json.loads(product.SAMPLES_FILE.read_text())
    assert saved["machine"] == product._machine() and list(saved["samples"]) == ["float32 (8, 4) x (8, 4)"]


def test_an_unwritable_samples_file_costs_only_later_measurements(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(product, "SAMPLES_FILE", tmp_path / "file" / "matmul.json")  # its folder is a file
    left, right = torch.randn(8, 4), torch.randn(7, 4)
    for _ in range(2 * product._SAMPLES):
        torch.testing.assert_close(product.similarity(left, right), left @ right.T)
    assert len(product.measured_choices()) == 1


def test_an_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv(product.ENV_VAR, "mkl")
    with pytest.raises(ReidAccelError, match="REID_ACCEL_CPU_MATMUL='mkl'"):
        product.similarity(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ReidAccelError, match="backend='blas'"):
        product.similarity(torch.ones(2, 2), torch.ones(2, 2), backend="blas")
