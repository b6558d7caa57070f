"""`int8`: a W8A8 linear kernel for few rows (AVX2); its module form, the int8 twin of an `nn.Linear`,
is `int8_linear.Int8Linear`.

What is computed, for x `[M, K]` float32, a weight quantized once per output channel and
activations quantized per row (token) on every call:

    ws[j] = max_k |W[j, k]| / 127          Wq[j, k] = round(W[j, k] · 127 / max_k |W[j, k]|)
    sx[r] = max_k |x[r, k]| / 127          xq[r, k] = round(x[r, k] · (127 / max_k |x[r, k]|))
    out[r, j] = float(Σ_k xq[r, k] · Wq[j, k]) · (sx[r] · ws[j]) (+ bias[j])

symmetric, both in [-127, 127] (round half to even; a zero row has scale 0), the sum exact in int32,
float32 out. The C++ kernel fuses the activation quantization into the call and computes the
products with `_mm256_maddubs_epi16(|xq|, sign(Wq, xq))` (unsigned × signed bytes; |xq| ≤ 127 and
|Wq| ≤ 127 keep each pair sum ≤ 32,258, below int16 saturation) then `_mm256_madd_epi16` into int32.
Blocks of up to 4 rows × 2-8 weight rows accumulate in registers; panels of 24 weight rows. The
weight is stored packed (`pack`): K padded to a multiple of 32, groups of 8 output rows interleaved
per 32-byte k-step, so that one row reads the whole weight as one sequential stream, which the
hardware prefetcher follows; for 2+ rows, whose blocks read each panel in several interleaved
passes, the next panel is prefetched into L2 a few cache lines per step (as the float32 kernel of
`native.py` does). Single-threaded; compiled with `-ffp-contract=off`, so the float epilogue rounds
exactly like the references: tests compare bitwise.

Measured on the dev box (AMD EPYC, 2 vCPUs shared with other work, 1 thread; the kernel compiled
for AVX2 only), SmolLM2-135M's 211 linear layers (134 MB of int8 weights) one after the other, medians
of 21 interleaved repeats: 1 row 5.0 ms with the packed layout and no software prefetch (row-major
layout with prefetch 5.7 ms, without 19 ms; summing a float tensor of the same 134 MB took 5.3-7 ms:
at memory speed), 2 rows 5.6, 4 rows 10.1 (compute-bound from 3 rows: ~50 GMAC/s); float32 MKL/the
`native` kernel need ~28 ms for 1 row. A call from Python costs ~4.4 µs (packed ctypes arguments;
`nn.Linear` ~6 µs for a tiny layer). In a full draft forward (`benchmarks/int8_kernel_cost.py`) see
`cas_spec.strategies.dsia.quantization` for the cost relative to a target step and the agreement.

Availability: x86-64 with AVX2, a C++ compiler, and a passing numerical probe; `CAS_SPEC_INT8_KERNEL=0`
disables it. `status()` says why not. `int8_linear.Int8Linear` falls back to `linear_reference` (the same
quantization in torch float32, chunked over output channels) where the kernel is unavailable or the
input is not CPU float32 or has more rows than `Int8Linear.max_kernel_rows` (no limit by default:
the kernel was faster at every row count measured, see `int8_linear.MAX_KERNEL_ROWS`). The kernel keeps a
per-thread scratch buffer of 2 · rows · K bytes for the quantized activations (grown, not shrunk).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cas_spec.kernels import compiled
from cas_spec.kernels.int8_source import SOURCE

FLAGS = ("-O3", "-mavx2", "-ffp-contract=off", "-fPIC", "-shared", "-std=c++17")
ENV_SWITCH = "CAS_SPEC_INT8_KERNEL"
ALIGN = 32  # the input dimension is padded to a multiple of this (one k-step)
GROUP = 8  # output rows interleaved per k-step in the packed weight (the C++ GROUP)

_lock = threading.Lock()
_fn: Callable[..., None] | None = None  # cas_int8_linear once loaded
_packed_fn: Callable[..., None] | None = None  # cas_int8_linear_packed once loaded
_quantize_fn: Callable[..., None] | None = None  # cas_int8_quantize_rows once loaded
_why: str | None = "not loaded yet"


def padded(k: int) -> int:
    """`k` rounded up to a multiple of `ALIGN`."""
    return -(-k // ALIGN) * ALIGN


# -- weight layout and the torch reference of the same quantization ------------------------------


def pack(q: torch.Tensor) -> torch.Tensor:
    """Row-major int8 `[N, Kp]` -> the kernel's layout `[ceil(N / 8) * 8, Kp]`: groups of 8 output
    rows, within a group the 32-byte pieces of k-step 0 of rows 0..7, then k-step 1, ... (zero rows
    pad the last group). A block of 1-8 rows then reads one contiguous stream."""
    n, kp = q.shape
    rows = -(-n // GROUP) * GROUP
    full = torch.zeros(rows, kp, dtype=q.dtype)
    full[:n] = q
    return full.view(rows // GROUP, GROUP, kp // ALIGN, ALIGN).permute(0, 2, 1, 3).contiguous().view(rows, kp)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack` for a whole number of groups: row-major `[rows, Kp]`."""
    rows, kp = packed.shape
    return packed.view(rows // GROUP, kp // ALIGN, GROUP, ALIGN).permute(0, 2, 1, 3).reshape(rows, kp)


def quantize_weight(weight: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed int8 weight, see `pack`; float32 scales `[N]`): symmetric per output channel,
    `round(w · 127 / max|w_j|)`, scale `max|w_j| / 127` (0 for a zero row); `per_channel=False`: one
    scale from the whole weight, repeated for every channel. Reads `weight` only."""
    with torch.no_grad():
        w = weight.detach().to(torch.float32)
        amax = w.abs().amax(dim=1)
        if not per_channel:
            amax = amax.amax().expand_as(amax)
        inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
        q = torch.zeros(w.shape[0], padded(w.shape[1]), dtype=torch.int8)
        q[:, : w.shape[1]] = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
        return pack(q), (amax / 127.0).contiguous()


def quantize_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 `[M, K]`, float32 scales `[M]`): per-row symmetric quantization, as the kernel does it
    (`round(x · (127 / max|x_r|))`, round half to even; scale `max|x_r| / 127`, 0 for a zero row)."""
    x = x.to(torch.float32)
    amax = x.abs().amax(dim=1)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    q = torch.round(x * inv[:, None]).nan_to_num_(nan=-127.0).clamp_(-127, 127).to(torch.int8)
    return q, amax / 127.0


CHUNK = 4096  # output channels per float matmul in the reference (bounds its temporary to CHUNK·K floats)


def linear_reference(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, in_features: int
) -> torch.Tensor:
    """The W8A8 product in torch float32 for any number of rows (the fallback of `Int8Linear`):
    `qweight` packed (`pack`). Equal to the kernel up to the float32 summation order of the integer
    products (exact while partial sums stay below 2^24)."""
    shape = x.shape
    x2 = x.reshape(-1, in_features)
    xq, sx = quantize_rows_reference(x2)
    xf = xq.to(torch.float32)
    n_out = scale.shape[0]
    out = torch.empty(x2.shape[0], n_out, dtype=torch.float32)
    for j in range(0, n_out, CHUNK):
        stop = min(j + CHUNK, n_out)
        w = unpack(qweight[j : -(-stop // GROUP) * GROUP])[: stop - j, :in_features].to(torch.float32)
        torch.mm(xf, w.t(), out=out[:, j:stop])
    out.mul_(sx[:, None] * scale[None, :])
    if bias is not None:
        out.add_(bias)
    return out.view(*shape[:-1], n_out).to(x.dtype)


# -- the compiled kernel -----------------------------------------------------------------------------


def library_path(compiler: str) -> Path:
    return compiled.library_path("cas_int8_linear", SOURCE, compiler, FLAGS)


def _compiler() -> str | None:
    return compiled.compiler()


def _probe() -> str | None:
    gen = torch.Generator().manual_seed(0)
    for rows, n_in, n_out in ((1, 16, 24), (5, 37, 29), (4, 64, 50), (9, 96, 12), (3, 33, 7), (2, 40, 13)):
        qw, ws = quantize_weight(torch.randn(n_out, n_in, generator=gen))
        b = torch.randn(n_out, generator=gen)
        x = torch.randn(rows, n_in, generator=gen)
        for bias in (None, b):
            got = linear(x, qw, ws, bias, n_in)
            ref = linear_reference(x, qw, ws, bias, n_in)
            if not torch.allclose(got, ref, rtol=1e-5, atol=1e-5):
                return "the compiled int8 kernel gave wrong results in the probe"
    return None


def _load() -> str | None:
    global _fn, _quantize_fn, _packed_fn
    if compiled.switched_off(ENV_SWITCH):
        return f"disabled by {ENV_SWITCH}"
    if (why := compiled.cpu_reason(("avx2",))) is not None:
        return why
    compiler = _compiler()
    if compiler is None:
        return "no C++ compiler found ($CXX, c++, g++, clang++)"
    try:
        lib = compiled.load(library_path(compiler), (SOURCE, compiler, FLAGS))
        fn, pfn, qfn = lib.cas_int8_linear, lib.cas_int8_linear_packed, lib.cas_int8_quantize_rows
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, ptr, ptr, ptr]
    pfn.argtypes = [ptr, i64, ptr, ptr]
    qfn.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr]
    fn.restype = pfn.restype = qfn.restype = None
    _fn, _packed_fn, _quantize_fn = fn, pfn, qfn
    try:
        why = _probe()
    except Exception as exc:
        why = f"the compiled int8 kernel failed in the probe: {type(exc).__name__}: {exc}"
    if why is not None:
        _fn = _packed_fn = _quantize_fn = None
    return why


def status() -> str | None:
    """None when the kernel is usable here, else why not (compiles and probes it on first call)."""
    global _why
    with _lock:
        if _why == "not loaded yet":
            _why = _load()
        return _why


def ready() -> bool:
    """Whether the kernel can be called now (loads it on first call)."""
    return _fn is not None or (_why == "not loaded yet" and status() is None)


def disable(reason: str) -> None:
    """Stop using the kernel (after a failure); `status()` reports `reason` from now on."""
    global _why, _fn, _packed_fn, _quantize_fn
    with _lock:
        _why, _fn, _packed_fn, _quantize_fn = reason, None, None, None


def _rows(x: torch.Tensor, in_features: int) -> torch.Tensor:
    x2 = x.reshape(-1, in_features)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < in_features):
        x2 = x2.contiguous()
    return x2


def linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, in_features: int
) -> torch.Tensor:
    """The W8A8 product with the compiled kernel (call `status()` first): `x [..., in_features]` CPU
    float32 (any strides), `qweight` packed (`quantize_weight`) and contiguous, `scale [N]` and
    `bias [N]` float32 contiguous. Returns float32 `[..., N]`."""
    x2 = _rows(x.to(torch.float32), in_features)
    rows, n_out = x2.shape[0], scale.shape[0]
    if qweight.shape != (-(-n_out // GROUP) * GROUP, padded(in_features)) or not qweight.is_contiguous():
        raise ValueError(f"qweight {tuple(qweight.shape)} is not a packed int8 weight for {n_out} x {in_features}")
    out = torch.empty(rows, n_out, dtype=torch.float32)
    if rows:
        assert _fn is not None, "call status() first"
        _fn(
            x2.data_ptr(),
            rows,
            in_features,
            x2.stride(0),
            qweight.data_ptr(),
            n_out,
            qweight.shape[1],
            scale.data_ptr(),
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
        )
    return out.view(*x.shape[:-1], n_out)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's own activation quantization of `x [M, K]` (for tests): (int8 `[M, K]`, scales `[M]`)."""
    x2 = _rows(x.to(torch.float32), x.shape[-1])
    rows, k = x2.shape
    kp = padded(k)
    q = torch.empty(rows, kp, dtype=torch.int8)
    qa = torch.empty(rows, kp, dtype=torch.uint8)
    s = torch.empty(rows, dtype=torch.float32)
    assert _quantize_fn is not None, "call status() first"
    _quantize_fn(x2.data_ptr(), rows, k, x2.stride(0), kp, q.data_ptr(), qa.data_ptr(), s.data_ptr())
    return q[:, :k], s


def packed_function() -> Any:
    """The loaded kernel's packed-argument entry point (`Int8Linear`'s fast path), or None while it
    is not loaded or was disabled."""
    return _packed_fn
