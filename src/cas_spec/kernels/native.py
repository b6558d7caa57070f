"""`native`: a small AVX2/FMA linear kernel for few rows, compiled on first use.

Why: on the AVX2 dev box (AMD EPYC Zen 3, 1 thread) MKL and oneDNN run 2-16-row products at
15-40 GFLOPS, so a forward over 8 tokens costs ~2× a 1-token step. Streaming the weight once from
memory costs about as much as computing 8-16 rows at full speed, so a kernel that computes all
rows while the next block of the weight is being fetched costs about the same for 1 to 8 rows.

What: `out[r, j] = Σ_k x[r, k] · W[j, k]` on the weight **as it is** (row-major `[out, in]`, no
copy): panels of 12 weight rows; inside a panel, blocks of up to 4 input rows × 3 weight rows
accumulate 8-wide FMA dot products in registers; while a panel is computed, the next panel is
prefetched into L2 a few cache lines per step. Single-threaded. Results differ from MKL's only by
float32 summation order (~1e-6 relative).

How: the C++ source below is compiled with the system C++ compiler (`$CXX`, else `c++`, `g++` or
`clang++`; `-O3 -mavx2 -mfma -shared`, about 2 s) into `$CAS_SPEC_CACHE/kernels/` (default
`~/.cache/cas-spec/kernels/`), keyed by a hash of source and flags, and loaded with `ctypes`
(`compiled.py`, shared with the int8 kernel). It is
available only on x86-64 CPUs with AVX2 and FMA, when a compiler is found, and when the compiled
kernel passes a numerical probe; `CAS_SPEC_NATIVE_KERNEL=0` disables it. `status()` says why not.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from cas_spec.kernels import compiled

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    return _mm_cvtss_f32(_mm_add_ss(s, sh));
}

// Walks the next panel of the weight, a few cache lines per k-step, into L2.
struct Prefetch {
    const char* cur;
    const char* end;
    int64_t per_step;
    inline void step() {
        for (int64_t i = 0; i < per_step && cur < end; ++i, cur += 64) _mm_prefetch(cur, _MM_HINT_T1);
    }
};

// out[r, j] = sum_k x[r, k] * w[j, k] (+ bias[j]) for r < RB, j < JB.
template <int RB, int JB>
static inline __attribute__((always_inline)) void block(const float* __restrict x, int64_t K,
        const float* __restrict w, const float* bias, float* __restrict out, int64_t ldo, Prefetch& pf) {
    __m256 acc[RB][JB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
        for (int j = 0; j < JB; ++j) acc[r][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        pf.step();
        __m256 xv[RB];
#pragma GCC unroll 16
        for (int r = 0; r < RB; ++r) xv[r] = _mm256_loadu_ps(x + r * K + k);
#pragma GCC unroll 16
        for (int j = 0; j < JB; ++j) {
            __m256 wv = _mm256_loadu_ps(w + j * K + k);
#pragma GCC unroll 16
            for (int r = 0; r < RB; ++r) acc[r][j] = _mm256_fmadd_ps(xv[r], wv, acc[r][j]);
        }
    }
    for (int r = 0; r < RB; ++r)
        for (int j = 0; j < JB; ++j) {
            float s = hsum(acc[r][j]);
            for (int64_t kk = k; kk < K; ++kk) s += x[r * K + kk] * w[j * K + kk];
            out[r * ldo + j] = bias ? s + bias[j] : s;
        }
}

template <int RB, int JB>
static inline void rows_panel(const float* x, int64_t K, const float* w, int64_t P, const float* bias,
                              float* out, int64_t N, Prefetch& pf) {
    int64_t j = 0;
    for (; j + JB <= P; j += JB) block<RB, JB>(x, K, w + j * K, bias ? bias + j : nullptr, out + j, N, pf);
    for (; j < P; ++j) block<RB, 1>(x, K, w + j * K, bias ? bias + j : nullptr, out + j, N, pf);
}

static const int64_t PANEL = 12;

// x [M, K], w [N, K], bias [N] or null, out [M, N]; all contiguous float32.
extern "C" void cas_linear_rows(const float* x, int64_t M, int64_t K, const float* w, int64_t N,
                                const float* bias, float* out) {
    if (M <= 0 || N <= 0) return;
    int64_t blocks = (M / 4) * (PANEL / 3);  // blocks per panel, as dispatched below
    switch (M % 4) { case 3: blocks += PANEL / 4; break; case 2: case 1: blocks += PANEL / 6; break; default: break; }
    int64_t steps = blocks * (K / 8);  // k-steps spent on one panel
    int64_t lines = (PANEL * K * 4 + 63) / 64;
    int64_t per_step = steps > 0 ? (lines + steps - 1) / steps : lines;
    for (int64_t j0 = 0; j0 < N; j0 += PANEL) {
        int64_t P = N - j0 < PANEL ? N - j0 : PANEL;
        const float* wp = w + j0 * K;
        const float* bp = bias ? bias + j0 : nullptr;
        float* op = out + j0;
        int64_t next = j0 + PANEL < N ? j0 + PANEL : N;
        int64_t next_end = next + PANEL < N ? next + PANEL : N;
        Prefetch pf{(const char*)(w + next * K), (const char*)(w + next_end * K), per_step};
        int64_t r = 0;
        for (; r + 4 <= M; r += 4) rows_panel<4, 3>(x + r * K, K, wp, P, bp, op + r * N, N, pf);
        switch (M - r) {
            case 3: rows_panel<3, 4>(x + r * K, K, wp, P, bp, op + r * N, N, pf); break;
            case 2: rows_panel<2, 6>(x + r * K, K, wp, P, bp, op + r * N, N, pf); break;
            case 1: rows_panel<1, 6>(x + r * K, K, wp, P, bp, op + r * N, N, pf); break;
            default: break;
        }
    }
}
"""

FLAGS = ("-O3", "-mavx2", "-mfma", "-fPIC", "-shared", "-std=c++17")
ENV_SWITCH = "CAS_SPEC_NATIVE_KERNEL"

_lock = threading.Lock()
_fn: Callable[..., None] | None = None  # the ctypes function once loaded
_why: str | None = "not loaded yet"


def _cpu_reason() -> str | None:
    return compiled.cpu_reason(("avx2", "fma"))


def _compiler() -> str | None:
    return compiled.compiler()


def library_path(compiler: str) -> Path:
    return compiled.library_path("cas_linear_rows", SOURCE, compiler, FLAGS)


def _build(compiler: str, target: Path) -> None:
    compiled.build(SOURCE, compiler, FLAGS, target)


def _load() -> str | None:
    global _fn
    if compiled.switched_off(ENV_SWITCH):
        return f"disabled by {ENV_SWITCH}"
    if (why := _cpu_reason()) is not None:
        return why
    compiler = _compiler()
    if compiler is None:
        return "no C++ compiler found ($CXX, c++, g++, clang++)"
    target = library_path(compiler)
    try:
        if not target.exists():
            _build(compiler, target)
        fn = ctypes.CDLL(str(target)).cas_linear_rows
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    fn.restype = None
    _fn = fn
    gen = torch.Generator().manual_seed(0)
    for rows, n_in, n_out in ((1, 16, 24), (5, 37, 29), (9, 64, 12)):
        w, b = torch.randn(n_out, n_in, generator=gen), torch.randn(n_out, generator=gen)
        x = torch.randn(rows, n_in, generator=gen)
        for bias in (None, b):
            if not torch.allclose(linear(x, w, bias), torch.nn.functional.linear(x, w, bias), atol=1e-4):
                _fn = None
                return "the compiled kernel gave wrong results in the probe"
    return None


def status() -> str | None:
    """None when the kernel is usable here, else why not (compiles and probes it on first call)."""
    global _why
    with _lock:
        if _why == "not loaded yet":
            _why = _load()
        return _why


def disable(reason: str) -> None:
    global _why, _fn
    with _lock:
        _why, _fn = reason, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for CPU float32 tensors with the native kernel (call `status()` first)."""
    n_out, n_in = weight.shape
    x2 = x.reshape(-1, n_in)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if not weight.is_contiguous():
        weight = weight.contiguous()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    out = torch.empty(x2.shape[0], n_out, dtype=x.dtype, device=x.device)
    assert _fn is not None, "call status() first"
    _fn(
        x2.data_ptr(),
        x2.shape[0],
        n_in,
        weight.data_ptr(),
        n_out,
        None if bias is None else bias.data_ptr(),
        out.data_ptr(),
    )
    return out.view(*x.shape[:-1], n_out)
