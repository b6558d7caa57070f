"""The compiled `native` kernel: exact shapes and tails, fallbacks, the build itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cas_spec.kernels import native
from cas_spec.kernels.linear import available_kernels, kernel_status

NATIVE = pytest.mark.skipif(
    "native" not in available_kernels(), reason=f"native kernel unavailable: {kernel_status().get('native')}"
)


@pytest.fixture
def keep_native_state():
    saved = (native._why, native._fn)
    yield
    native._why, native._fn = saved


@NATIVE
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 37])
@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 5), (8, 12), (9, 13), (64, 25), (576, 36), (130, 200)])
def test_native_matches_f_linear_for_odd_shapes(rows, n_in, n_out):
    gen = torch.Generator().manual_seed(rows * 1000 + n_in + n_out)
    x = torch.randn(rows, n_in, generator=gen)
    w = torch.randn(n_out, n_in, generator=gen)
    b = torch.randn(n_out, generator=gen)
    for bias in (None, b):
        got, ref = native.linear(x, w, bias), F.linear(x, w, bias)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5 * max(1.0, n_in**0.5), rtol=1e-5), (rows, n_in, n_out)


@NATIVE
def test_native_takes_views_and_leading_dims():
    x = torch.randn(3, 24, 5).transpose(1, 2)  # [3, 5, 24], not contiguous
    w = torch.randn(24, 40).t()  # [40, 24], not contiguous
    assert torch.allclose(native.linear(x, w), F.linear(x, w), atol=1e-5)
    assert native.linear(torch.randn(0, 24), w).shape == (0, 40)


def test_native_can_be_switched_off(monkeypatch, keep_native_state):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native._why, native._fn = "not loaded yet", None
    assert native.status() == f"disabled by {native.ENV_SWITCH}"


def test_native_without_a_compiler_is_unavailable(monkeypatch, keep_native_state):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setattr(native, "library_path", lambda compiler: pytest.fail("must not build"))
    native._why, native._fn = "not loaded yet", None
    why = native.status()
    assert why is not None and ("compiler" in why or "CPU" in why)


@NATIVE
def test_native_builds_into_the_cache_folder(monkeypatch, tmp_path, keep_native_state):
    monkeypatch.setenv("CAS_SPEC_CACHE", str(tmp_path))
    native._why, native._fn = "not loaded yet", None
    assert native.status() is None
    built = list((tmp_path / "kernels").glob("cas_linear_rows-*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob(".build-*"))
    x, w = torch.randn(3, 16), torch.randn(8, 16)
    assert torch.allclose(native.linear(x, w), F.linear(x, w), atol=1e-5)
