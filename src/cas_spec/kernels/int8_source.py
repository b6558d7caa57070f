"""The C++ source of the W8A8 AVX2 kernel of `int8.py` (what it computes and why it is shaped so is
described there). Compiled by `int8.py` through `compiled.py`; exports `cas_int8_quantize_rows`,
`cas_int8_linear` and `cas_int8_linear_packed` (C linkage)."""

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <vector>

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// acc + the 8 four-byte dot products of a (unsigned) and s (signed), exactly (|a|, |s| <= 127).
// maddubs: 16 pair sums, each <= 2 * 127 * 127 = 32,258 (no int16 saturation); madd with ones: 8 int32.
static inline __m256i dot_acc(__m256i acc, __m256i a, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, s), _mm256_set1_epi16(1)));
}

// [sum(v[0]), ..., sum(v[3])] and [sum(v[0]), ..., sum(v[7])] of int32 vectors.
static inline __m128i hsum4(const __m256i* v) {
    __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

static inline __m256i hsum8(const __m256i* v) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

static inline __m256i round8(const float* p, __m256 inv) {
    return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), inv));  // round half to even
}

// Per-row symmetric quantization of x [M, K] (row stride ldx) into xq [M, Kp] and |xq| (zero-padded).
extern "C" void cas_int8_quantize_rows(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t Kp,
                                       int8_t* xq, uint8_t* xa, float* scale) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i lo = _mm256_set1_epi8(-127);
    for (int64_t r = 0; r < M; ++r) {
        const float* xr = x + r * ldx;
        __m256 mx = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(xr + k), absmask));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        for (; k < K; ++k) {
            float a = _mm_cvtss_f32(_mm_and_ps(_mm_set_ss(xr[k]), _mm256_castps256_ps128(absmask)));
            amax = a > amax ? a : amax;
        }
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        scale[r] = amax / 127.0f;
        const __m256 vinv = _mm256_set1_ps(inv);
        int8_t* q = xq + r * Kp;
        uint8_t* qa = xa + r * Kp;
        k = 0;
        for (; k + 32 <= K; k += 32) {
            __m256i ab = _mm256_packs_epi32(round8(xr + k, vinv), round8(xr + k + 8, vinv));
            __m256i cd = _mm256_packs_epi32(round8(xr + k + 16, vinv), round8(xr + k + 24, vinv));
            __m256i v = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), perm);
            v = _mm256_max_epi8(v, lo);
            _mm256_storeu_si256((__m256i*)(q + k), v);
            _mm256_storeu_si256((__m256i*)(qa + k), _mm256_abs_epi8(v));
        }
        for (; k < K; ++k) {
            int32_t v = _mm_cvtss_si32(_mm_set_ss(xr[k] * inv));
            v = v < -127 ? -127 : (v > 127 ? 127 : v);
            q[k] = (int8_t)v;
            qa[k] = (uint8_t)(v < 0 ? -v : v);
        }
        for (; k < Kp; ++k) { q[k] = 0; qa[k] = 0; }
    }
}

static const int64_t GROUP = 8;  // weight rows interleaved per 32-byte k-step in the packed layout

// Walks the next panel of the weight, a few cache lines per k-step, into L2.
struct Prefetch {
    const char* cur;
    const char* end;
    int64_t per_step;
    inline void step() {
        for (int64_t i = 0; i < per_step && cur < end; ++i, cur += 64) _mm_prefetch(cur, _MM_HINT_T1);
    }
};

// out[r, j] = float(sum_k xq[r, k] * w[j, k]) * (sx[r] * ws[j]) (+ bias[j]) for r < RB, j < JB.
// w: row j's 32 bytes of k-step ks at w + j * 32 + ks * GROUP * 32 (rows of one group of the packed layout)
template <int RB, int JB>
static inline __attribute__((always_inline)) void block(const int8_t* __restrict xq, const uint8_t* __restrict xa,
        int64_t Kp, const int8_t* __restrict w, const float* sx, const float* ws, const float* bias,
        float* __restrict out, int64_t ldo, Prefetch& pf) {
    __m256i acc[RB][JB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
        for (int j = 0; j < JB; ++j) acc[r][j] = _mm256_setzero_si256();
    for (int64_t k = 0; k < Kp; k += 32, w += GROUP * 32) {
        pf.step();
        __m256i a[RB];
#pragma GCC unroll 16
        for (int r = 0; r < RB; ++r) a[r] = _mm256_loadu_si256((const __m256i*)(xa + r * Kp + k));
#pragma GCC unroll 16
        for (int j = 0; j < JB; ++j) {
            __m256i wv = _mm256_loadu_si256((const __m256i*)(w + j * 32));
#pragma GCC unroll 16
            for (int r = 0; r < RB; ++r) {
                __m256i s = _mm256_sign_epi8(wv, _mm256_loadu_si256((const __m256i*)(xq + r * Kp + k)));
                acc[r][j] = dot_acc(acc[r][j], a[r], s);
            }
        }
    }
    // the same float operations, in the same order, as the scalar form below
    if constexpr (JB == 8) {
        for (int r = 0; r < RB; ++r) {
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(hsum8(acc[r])),
                                     _mm256_mul_ps(_mm256_set1_ps(sx[r]), _mm256_loadu_ps(ws)));
            if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
            _mm256_storeu_ps(out + r * ldo, v);
        }
    } else if constexpr (JB == 4) {
        for (int r = 0; r < RB; ++r) {
            __m128 v = _mm_mul_ps(_mm_cvtepi32_ps(hsum4(acc[r])), _mm_mul_ps(_mm_set1_ps(sx[r]), _mm_loadu_ps(ws)));
            if (bias) v = _mm_add_ps(v, _mm_loadu_ps(bias));
            _mm_storeu_ps(out + r * ldo, v);
        }
    } else {
        for (int r = 0; r < RB; ++r)
            for (int j = 0; j < JB; ++j) {
                float v = (float)hsum_epi32(acc[r][j]) * (sx[r] * ws[j]);
                out[r * ldo + j] = bias ? v + bias[j] : v;
            }
    }
}

// Row j of a panel (a whole number of groups) in the packed layout.
static inline const int8_t* row_ptr(const int8_t* w, int64_t j, int64_t Kp) {
    return w + (j / GROUP) * GROUP * Kp + (j % GROUP) * 32;
}

template <int RB, int JB>
static inline void rows_panel(const int8_t* xq, const uint8_t* xa, int64_t Kp, const int8_t* w, int64_t P,
                              const float* sx, const float* ws, const float* bias, float* out, int64_t N,
                              Prefetch& pf) {
    static_assert(GROUP % JB == 0, "a block must not straddle two groups");
    int64_t j = 0;
    for (; j + JB <= P; j += JB)
        block<RB, JB>(xq, xa, Kp, row_ptr(w, j, Kp), sx, ws + j, bias ? bias + j : nullptr, out + j, N, pf);
    for (; j < P; ++j)
        block<RB, 1>(xq, xa, Kp, row_ptr(w, j, Kp), sx, ws + j, bias ? bias + j : nullptr, out + j, N, pf);
}

static const int64_t PANEL = 24;  // weight rows per panel (3 groups; 16, 32, 48 measured the same)

// x [M, K] float32 (row stride ldx); w int8 in the packed layout: ceil(N / 8) groups of 8 rows, each
// group Kp / 32 k-steps of 8 x 32 bytes (K zero-padded to Kp, a multiple of 32; zero rows pad the
// last group); ws [N] float32, bias [N] float32 or null, out [M, N] float32 contiguous.
extern "C" void cas_int8_linear(const float* x, int64_t M, int64_t K, int64_t ldx, const int8_t* w, int64_t N,
                                int64_t Kp, const float* ws, const float* bias, float* out) {
    if (M <= 0 || N <= 0) return;
    thread_local std::vector<int8_t> bq;
    thread_local std::vector<uint8_t> ba;
    thread_local std::vector<float> bs;
    if ((int64_t)bq.size() < M * Kp) { bq.resize(M * Kp); ba.resize(M * Kp); }
    if ((int64_t)bs.size() < M) bs.resize(M);
    int8_t* xq = bq.data();
    uint8_t* xa = ba.data();
    float* sx = bs.data();
    cas_int8_quantize_rows(x, M, K, ldx, Kp, xq, xa, sx);
    int64_t blocks = (M / 4) * (PANEL / 2);  // blocks per panel, as dispatched below
    switch (M % 4) { case 3: blocks += PANEL / 2; break; case 2: blocks += PANEL / 4; break;
                     case 1: blocks += PANEL / 8; break; default: break; }
    int64_t steps = blocks * (Kp / 32);
    int64_t lines = (PANEL * Kp + 63) / 64;
    int64_t per_step = steps > 0 ? (lines + steps - 1) / steps : lines;
    // One row reads the packed weight as one sequential stream, which the hardware prefetcher
    // follows better alone (measured: 5.0 vs 6.2 ms for SmolLM2-135M's 211 layers); blocks of
    // several rows read each panel in several interleaved passes and need the software prefetch.
    if (M == 1) per_step = 0;
    for (int64_t j0 = 0; j0 < N; j0 += PANEL) {
        int64_t P = N - j0 < PANEL ? N - j0 : PANEL;
        const int8_t* wp = w + j0 * Kp;
        const float* wsp = ws + j0;
        const float* bp = bias ? bias + j0 : nullptr;
        float* op = out + j0;
        int64_t next = j0 + PANEL < N ? j0 + PANEL : N;
        int64_t next_end = next + PANEL < N ? next + PANEL : N;
        Prefetch pf{(const char*)(w + next * Kp), (const char*)(w + next_end * Kp), per_step};
        int64_t r = 0;
        for (; r + 4 <= M; r += 4)
            rows_panel<4, 2>(xq + r * Kp, xa + r * Kp, Kp, wp, P, sx + r, wsp, bp, op + r * N, N, pf);
        switch (M - r) {
            case 3: rows_panel<3, 2>(xq + r * Kp, xa + r * Kp, Kp, wp, P, sx + r, wsp, bp, op + r * N, N, pf); break;
            case 2: rows_panel<2, 4>(xq + r * Kp, xa + r * Kp, Kp, wp, P, sx + r, wsp, bp, op + r * N, N, pf); break;
            case 1: rows_panel<1, 8>(xq + r * Kp, xa + r * Kp, Kp, wp, P, sx + r, wsp, bp, op + r * N, N, pf); break;
            default: break;
        }
    }
}

// The same with the weight's arguments packed: p = {w, N, Kp, ws, bias, K} (one ctypes call
// argument instead of six: ~0.5 µs less per call from Python). x is contiguous [M, K].
extern "C" void cas_int8_linear_packed(const float* x, int64_t M, const int64_t* p, float* out) {
    cas_int8_linear(x, M, p[5], p[5], (const int8_t*)p[0], p[1], p[2], (const float*)p[3], (const float*)p[4], out);
}
"""
