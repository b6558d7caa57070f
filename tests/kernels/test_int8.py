"""The W8A8 kernel (`cas_spec.kernels.int8`) and its twin module `Int8Linear`.

The kernel is checked against an exact reference of the same quantization (int64 sums, then the
same float32 operations), so results must be equal bitwise; the torch fallback
(`linear_reference`) sums in float32, which is exact while partial sums stay below 2^24.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cas_spec.kernels import int8, int8_linear

WHY = int8.status()
KERNEL = pytest.mark.skipif(WHY is not None, reason=f"int8 kernel unavailable: {WHY}")
ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16]
SHAPES = [(1, 1), (7, 5), (31, 9), (32, 8), (33, 17), (64, 25), (100, 70), (576, 36), (130, 203)]


@pytest.fixture
def keep_kernel_state():
    saved = (int8._why, int8._fn, int8._packed_fn, int8._quantize_fn)
    yield
    int8._why, int8._fn, int8._packed_fn, int8._quantize_fn = saved


def exact(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, n_in: int
) -> torch.Tensor:
    """The quantized product with exact integer sums and the kernel's float32 epilogue."""
    x2 = x.reshape(-1, n_in)
    xq, sx = int8.quantize_rows_reference(x2)
    wq = int8.unpack(qweight)[: scale.shape[0], :n_in]
    acc = (xq.to(torch.int64) @ wq.to(torch.int64).t()).to(torch.float32)
    out = acc * (sx[:, None] * scale[None, :])
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], scale.shape[0])


def quantized(n_out: int, n_in: int, seed: int, per_channel: bool = True):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=gen)
    return (*int8.quantize_weight(w, per_channel), torch.randn(n_out, generator=gen), gen)


# -- quantization ------------------------------------------------------------------------------------


def test_pack_unpack_round_trip():
    q = torch.randint(-127, 128, (13, 64), dtype=torch.int8)
    packed = int8.pack(q)
    assert packed.shape == (16, 64)
    assert torch.equal(int8.unpack(packed)[:13], q) and not int8.unpack(packed)[13:].any()
    # group 0, k-step 1 starts with row 0's bytes 32..63
    assert torch.equal(packed.view(-1)[8 * 32 : 9 * 32], q[0, 32:64])


def test_weight_quantization_is_symmetric_per_channel():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]])
    packed, scale = int8.quantize_weight(w)
    q = int8.unpack(packed)[:3, :3]
    assert torch.equal(q, torch.tensor([[64, -127, 32], [0, 0, 0], [127, 64, -32]], dtype=torch.int8))
    assert torch.allclose(scale, torch.tensor([1.0, 0.0, 3.0]) / 127)
    _, per_tensor = int8.quantize_weight(w, per_channel=False)
    assert torch.allclose(per_tensor, torch.full((3,), 3.0 / 127))


@KERNEL
@pytest.mark.parametrize("k", [1, 7, 8, 31, 32, 33, 100, 576])
def test_kernel_quantizes_rows_exactly_like_the_reference(k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(9, k, generator=gen) * torch.logspace(-3, 3, 9)[:, None]
    x[2] = 0.0  # a zero row: scale 0, all zeros
    x[3] = 0.0
    x[3, k // 2] = -2.5  # one value: it maps to -127
    q, s = int8.quantize_rows(x)
    q_ref, s_ref = int8.quantize_rows_reference(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    assert q.abs().max() <= 127 and s[2] == 0 and not q[2].any() and q[3, k // 2] == -127


@KERNEL
def test_rounding_ties_go_to_even():
    x = torch.tensor([[127.0, 2.5, -3.5, 0.5, -0.5, 1.5] + [0.0] * 30])  # scale 1: x · 127 / 127 = x
    q, _ = int8.quantize_rows(x)
    assert q[0, :6].tolist() == [127, 2, -4, 0, 0, 2]


# -- the kernel ----------------------------------------------------------------------------------------


@KERNEL
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n_in,n_out", SHAPES)
def test_kernel_equals_the_exact_reference(rows, n_in, n_out):
    qweight, scale, b, gen = quantized(n_out, n_in, rows * 1000 + n_in + n_out)
    x = torch.randn(rows, n_in, generator=gen)
    for bias in (None, b):
        got = int8.linear(x, qweight, scale, bias, n_in)
        assert got.shape == (rows, n_out) and got.dtype == torch.float32
        assert torch.equal(got, exact(x, qweight, scale, bias, n_in)), (rows, n_in, n_out, bias is None)
        assert torch.equal(got, int8.linear_reference(x, qweight, scale, bias, n_in))  # sums below 2^24


@KERNEL
@pytest.mark.parametrize("rows", [1, 3, 4, 16])
def test_kernel_per_tensor_scales(rows):
    qweight, scale, b, gen = quantized(40, 96, rows, per_channel=False)
    x = torch.randn(rows, 96, generator=gen)
    assert torch.equal(int8.linear(x, qweight, scale, b, 96), exact(x, qweight, scale, b, 96))


@KERNEL
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n_in", [32, 577, 1536])
def test_saturation_edge_cases(rows, n_in):
    """All products ±127 · ±127: every maddubs pair sum at its extreme ±32,258, int32 sums up to
    127² · 1536 (above 2^24, so the float conversion rounds, as in the reference)."""
    n_out = 24
    w = torch.ones(n_out, n_in)
    w[1::2] *= -1  # rows of -1
    w[2::4, ::2] *= -1  # rows of alternating signs
    w[3, :] = 0.0  # a zero row: scale 0
    qweight, scale = int8.quantize_weight(w)
    assert int8.unpack(qweight)[:n_out, :n_in].abs().max() == 127
    x = torch.ones(rows, n_in) * torch.tensor([1.0, -3.0, 0.5, -1e-3, 7.0, 2.0, -2.0, 1e4])[:rows, None]
    if rows > 2:
        x[2, ::2] *= -1  # alternating signs against alternating signs: +127² everywhere in some rows
    bias = torch.linspace(-1, 1, n_out)
    for b in (None, bias):
        got = int8.linear(x, qweight, scale, b, n_in)
        ref = exact(x, qweight, scale, b, n_in)
        assert torch.equal(got, ref)
        assert torch.isfinite(got).all()
    full = int8.linear(torch.ones(1, n_in), qweight, scale, None, n_in)[0]
    assert full[0] == pytest.approx(n_in, rel=1e-6) and full[1] == pytest.approx(-n_in, rel=1e-6)
    assert full[3] == 0


@KERNEL
def test_zero_rows_and_outliers():
    qweight, scale, b, gen = quantized(30, 64, 5)
    x = torch.randn(4, 64, generator=gen)
    x[1] = 0.0
    x[2, 7] = 1e6  # one outlier: the rest of the row quantizes to zero
    got = int8.linear(x, qweight, scale, b, 64)
    assert torch.equal(got, exact(x, qweight, scale, b, 64))
    assert torch.equal(got[1], b)


@KERNEL
def test_kernel_takes_views_and_leading_dims():
    qweight, scale, b, gen = quantized(20, 48, 3)
    wide = torch.randn(5, 80, generator=gen)
    for x in (
        wide[:, 10:58],  # row stride 80: passed through without a copy
        torch.randn(48, 6, generator=gen).t(),  # transposed: copied
        torch.randn(2, 3, 48, generator=gen).transpose(0, 1),  # [3, 2, 48], not contiguous
        torch.randn(48, generator=gen),
    ):  # 1-D
        got = int8.linear(x, qweight, scale, b, 48)
        ref = exact(x.contiguous(), qweight, scale, b, 48)
        assert got.shape == (*x.shape[:-1], 20) and torch.equal(got, ref)
    assert int8.linear(torch.randn(0, 48), qweight, scale, b, 48).shape == (0, 20)
    with pytest.raises(ValueError, match="not a packed int8 weight"):
        int8.linear(torch.randn(2, 48), qweight[:16], scale, b, 48)


# -- the twin module -----------------------------------------------------------------------------------


def linear_module(n_in: int = 100, n_out: int = 70, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_twin_holds_buffers_and_leaves_the_original_alone(bias):
    lin = linear_module(bias=bias)
    weight, copy = lin.weight, lin.weight.detach().clone()
    twin = int8_linear.Int8Linear.from_float(lin)
    assert lin.weight is weight and torch.equal(lin.weight, copy) and lin.weight.requires_grad
    assert list(twin.parameters()) == []
    names = {name for name, _ in twin.named_buffers()}
    assert names == ({"qweight", "scale", "bias"} if bias else {"qweight", "scale"})
    assert twin.qweight.dtype == torch.int8 and twin.qweight.shape == (72, 128)
    assert twin.memory_bytes == 72 * 128 + 70 * 4 + (70 * 4 if bias else 0)
    assert torch.allclose(twin.dequantized_weight(), lin.weight, atol=lin.weight.abs().max().item() / 127)
    if bias:
        assert twin.bias.data_ptr() != lin.bias.data_ptr() and torch.equal(twin.bias, lin.bias)
    clone = int8_linear.Int8Linear(100, 70, bias=bias)
    clone.load_state_dict(twin.state_dict())
    x = torch.randn(3, 100)
    assert torch.equal(clone(x), twin(x))


@pytest.mark.parametrize("shape", [(100,), (1, 100), (3, 100), (2, 5, 100), (1, 1, 100)])
def test_twin_output_close_to_float_for_any_leading_shape(shape):
    lin = linear_module()
    twin = int8_linear.Int8Linear.from_float(lin)
    x = torch.randn(*shape)
    with torch.inference_mode():
        out, ref = twin(x), lin(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert ((out - ref).norm() / ref.norm()).item() < 0.03
    assert torch.allclose(out, int8.linear_reference(x, twin.qweight, twin.scale, twin.bias, 100), atol=1e-5)


def test_twin_quantizes_each_row_on_its_own():
    """Per-token scales: a batch of rows gives what each row gives alone (unlike one scale per call)."""
    twin = int8_linear.Int8Linear.from_float(linear_module())
    x = torch.randn(6, 100) * torch.tensor([1e-2, 1.0, 1e2, 3.0, 1e3, 0.1])[:, None]
    rows = torch.cat([twin(x[i : i + 1]) for i in range(6)])
    assert torch.allclose(twin(x), rows, rtol=1e-6, atol=1e-6)


@KERNEL
def test_twin_uses_the_kernel_up_to_max_kernel_rows(monkeypatch, keep_kernel_state):
    twin = int8_linear.Int8Linear.from_float(linear_module())
    calls = []
    real = int8._packed_fn

    def counting(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(int8, "_packed_fn", counting)
    x = torch.randn(5, 100)
    expected = int8.linear_reference(x, twin.qweight, twin.scale, twin.bias, 100)
    assert torch.equal(twin(x), expected) and calls == [5]
    twin.max_kernel_rows = 4
    assert torch.allclose(twin(x), expected, atol=1e-6) and calls == [5]  # the fallback ran
    assert torch.equal(twin(x[:4]), expected[:4]) and calls == [5, 4]
    # a non-contiguous input takes the slower path through `linear`, with the same result
    xt = torch.randn(100, 3).t()
    assert torch.equal(twin(xt), int8.linear_reference(xt, twin.qweight, twin.scale, twin.bias, 100))


@KERNEL
def test_twin_survives_a_kernel_failure(monkeypatch, keep_kernel_state):
    twin = int8_linear.Int8Linear.from_float(linear_module())
    x = torch.randn(2, 100)
    expected = twin(x)

    def broken(*args):
        raise OSError("boom")

    monkeypatch.setattr(int8, "_packed_fn", broken)
    assert torch.allclose(twin(x), expected, atol=1e-6)
    assert "failed on use" in int8.status() and "boom" in int8.status()
    assert int8._packed_fn is None and not int8.ready()
    assert torch.allclose(twin(x), expected, atol=1e-6)


def test_twin_follows_dtype_changes_of_its_buffers():
    twin = int8_linear.Int8Linear.from_float(linear_module())
    x = torch.randn(2, 100)
    expected = twin(x)
    twin.double()  # float buffers become float64: the kernel cannot read them, the fallback runs
    assert twin._kernel_args is None
    assert torch.allclose(twin(x), expected, atol=1e-5)
    twin.float()
    assert twin._kernel_args is not None  # the buffers are what the kernel reads again
    assert torch.allclose(twin(x), expected, atol=1e-6)
    twin.scale = twin.scale * 2  # a new tensor: the cached kernel arguments follow it
    assert torch.allclose(twin(x), expected * 2 - twin.bias, atol=1e-4)


def test_copies_point_at_their_own_buffers():
    import copy
    import pickle

    twin = int8_linear.Int8Linear.from_float(linear_module())
    x = torch.randn(2, 100)
    expected = twin(x)
    clones = [copy.deepcopy(twin), pickle.loads(pickle.dumps(twin))]
    with torch.no_grad():
        twin.scale.zero_()
    del twin
    for clone in clones:
        assert clone._kernel_args is not None and clone._kernel_args[2][0] == clone.qweight.data_ptr()
        assert torch.equal(clone(x), expected)


def test_switched_off_by_the_environment(monkeypatch, keep_kernel_state):
    monkeypatch.setenv(int8.ENV_SWITCH, "0")
    int8._why, int8._fn, int8._packed_fn, int8._quantize_fn = "not loaded yet", None, None, None
    assert int8.status() == f"disabled by {int8.ENV_SWITCH}"
    assert not int8.ready()
    lin = linear_module()
    twin = int8_linear.Int8Linear.from_float(lin)
    x = torch.randn(3, 100)
    out = twin(x)
    assert torch.equal(out, int8.linear_reference(x, twin.qweight, twin.scale, twin.bias, 100))
    assert torch.allclose(out, exact(x, twin.qweight, twin.scale, twin.bias, 100), atol=1e-6)


def test_without_a_compiler_it_is_unavailable(monkeypatch, keep_kernel_state):
    monkeypatch.delenv(int8.ENV_SWITCH, raising=False)
    monkeypatch.setattr(int8, "_compiler", lambda: None)
    monkeypatch.setattr(int8, "library_path", lambda compiler: pytest.fail("must not build"))
    int8._why, int8._fn, int8._packed_fn, int8._quantize_fn = "not loaded yet", None, None, None
    why = int8.status()
    assert why is not None and ("compiler" in why or "CPU" in why)


@KERNEL
def test_builds_into_the_cache_folder(monkeypatch, tmp_path, keep_kernel_state):
    monkeypatch.setenv("CAS_SPEC_CACHE", str(tmp_path))
    int8._why, int8._fn, int8._packed_fn, int8._quantize_fn = "not loaded yet", None, None, None
    assert int8.status() is None
    built = list((tmp_path / "kernels").glob("cas_int8_linear-*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob(".build-*"))
    qweight, scale, b, gen = quantized(8, 16, 0)
    x = torch.randn(3, 16, generator=gen)
    assert torch.equal(int8.linear(x, qweight, scale, b, 16), exact(x, qweight, scale, b, 16))
