// CoQuant runtime kernels: layouts and contracts in include/coquant_kernels.h. Each AVX2 function sits next to
// the scalar reference that defines its result; cq_simd_enabled() picks between them at every call.
#include "coquant_kernels.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float hsum_ps(__m256 s);

static int simd_requested = 1;

int cq_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

void cq_set_simd(int enabled) { simd_requested = enabled; }

int cq_simd_enabled(void) {
    static int has = -1;
    if (has < 0) has = cq_cpu_has_avx2();
    return simd_requested && has;
}

int64_t cq_row_bytes(const cq_run *runs, int nruns) {
    int64_t n = 0;
    for (int i = 0; i < nruns; i++) n += (int64_t)runs[i].planes * runs[i].padded / 2;
    return n;
}

int64_t cq_padded_cols(const cq_run *runs, int nruns) {
    int64_t n = 0;
    for (int i = 0; i < nruns; i++) n += runs[i].padded;
    return n;
}

// Code of padded column j (0 ≤ j < padded) of one plane: byte j mod 16 of its 32-column chunk, low or high nibble.
static inline int plane_code(const uint8_t *plane, int j) {
    uint8_t b = plane[(j / 32) * 16 + (j % 16)];
    return (j % 32) < 16 ? (b & 15) : (b >> 4);
}

static void row_code_sums_scalar(const uint8_t *w, int64_t row_bytes, int64_t rows, const cq_run *runs, int nruns, int32_t *sum_u) {
    for (int64_t r = 0; r < rows; r++) {
        for (int k = 0; k < nruns; k++) {
            const cq_run *run = &runs[k];
            int32_t s = 0;
            for (int p = 0; p < run->planes; p++) {
                const uint8_t *plane = w + r * row_bytes + run->byte_offset + (int64_t)p * run->padded / 2;
                int32_t sp = 0;
                for (int j = 0; j < run->padded; j++) sp += plane_code(plane, j);
                s += p == 0 ? sp : 16 * sp;
            }
            sum_u[r * nruns + k] = s;
        }
    }
}

// Σ of both nibbles of each byte: vpsadbw of the low and the high nibbles against zero, 16 bytes a step.
AVX2 static void row_code_sums_avx2(const uint8_t *w, int64_t row_bytes, int64_t rows, const cq_run *runs, int nruns, int32_t *sum_u) {
    const __m128i m = _mm_set1_epi8(0x0F), zero = _mm_setzero_si128();
    for (int64_t r = 0; r < rows; r++) {
        for (int k = 0; k < nruns; k++) {
            const cq_run *run = &runs[k];
            int32_t s = 0;
            for (int p = 0; p < run->planes; p++) {
                const uint8_t *plane = w + r * row_bytes + run->byte_offset + (int64_t)p * run->padded / 2;
                __m128i acc = _mm_setzero_si128();
                for (int64_t b = 0; b < run->padded / 2; b += 16) {
                    __m128i x = _mm_loadu_si128((const __m128i *)(plane + b));
                    acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_and_si128(x, m), zero));
                    acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_and_si128(_mm_srli_epi16(x, 4), m), zero));
                }
                int32_t sp = (int32_t)(_mm_cvtsi128_si64(acc) + _mm_extract_epi64(acc, 1));
                s += p == 0 ? sp : 16 * sp;
            }
            sum_u[r * nruns + k] = s;
        }
    }
}

void cq_row_code_sums(const uint8_t *w, int64_t row_bytes, int64_t rows, const cq_run *runs, int nruns, int32_t *sum_u) {
    if (cq_simd_enabled()) row_code_sums_avx2(w, row_bytes, rows, runs, nruns, sum_u);
    else row_code_sums_scalar(w, row_bytes, rows, runs, nruns, sum_u);
}

// ---------------------------------------------------------------------------------------------------------------
// Activation quantization (the simulator's ActivationQuantizer, producing codes instead of fake-quantized floats).

// Scale and zero point of one block of one token, exactly as ActivationQuantizer.quantizeSlice computes them.
static void block_grid(const float *x, const cq_act_block *b, float *s_out, float *z_out) {
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < b->count; i++) {
        float v = x[b->col + i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (!b->min_max || lo == hi) {
        lo = lo < 0 ? lo : 0;
        hi = hi > 0 ? hi : 0;
    }
    lo *= b->clip;
    hi *= b->clip;
    if (lo == 0 && hi == 0) { lo = -1; hi = 1; }
    float maxq = (float)((1 << b->bits) - 1);
    float s = (hi - lo) / maxq;
    *s_out = s;
    *z_out = nearbyintf(-lo / s);
}

static void quantize_codes_scalar(const float *x, int n, float s, float z, float maxq, int off, int8_t *a, int32_t *sum) {
    int32_t acc = 0;
    for (int i = 0; i < n; i++) {
        float q = nearbyintf(x[i] / s) + z;
        q = q < 0 ? 0 : (q > maxq ? maxq : q);
        int v = (int)q - off;
        a[i] = (int8_t)v;
        acc += v;
    }
    *sum += acc;
}

AVX2 static void quantize_codes_avx2(const float *x, int n, float s, float z, float maxq, int off, int8_t *a, int32_t *sum) {
    const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z), zero = _mm256_setzero_ps(), mq = _mm256_set1_ps(maxq);
    const __m256i offv = _mm256_set1_epi32(off);
    __m256i acc = _mm256_setzero_si256();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 q = _mm256_add_ps(_mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), sv),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zv);
        q = _mm256_min_ps(_mm256_max_ps(q, zero), mq);
        __m256i v = _mm256_sub_epi32(_mm256_cvtps_epi32(q), offv);
        acc = _mm256_add_epi32(acc, v);
        // int32 → int8 (values already in range): pack to 16 then 8 bits, undo the lane interleave.
        __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
        __m128i p16 = _mm_packs_epi32(lo, hi);
        __m128i p8 = _mm_packs_epi16(p16, p16);
        _mm_storel_epi64((__m128i *)(a + i), p8);
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    *sum += _mm_cvtsi128_si32(s4);
    if (i < n) quantize_codes_scalar(x + i, n - i, s, z, maxq, off, a + i, sum);
}

void cq_quantize_activations(const float *x, int64_t ldx, int64_t tokens, const cq_act_block *blocks, int nblocks,
                             const cq_run *runs, int nruns, int64_t padded_cols,
                             int8_t *a, float *s_a, int32_t *z_a, int32_t *sum_a) {
    const int simd = cq_simd_enabled();
    float s[nblocks > 0 ? nblocks : 1], z[nblocks > 0 ? nblocks : 1];
    for (int64_t t = 0; t < tokens; t++) {
        const float *xt = x + t * ldx;
        int8_t *at = a + t * padded_cols;
        for (int b = 0; b < nblocks; b++) block_grid(xt, &blocks[b], &s[b], &z[b]);
        for (int k = 0; k < nruns; k++) {
            const cq_run *run = &runs[k];
            const cq_act_block *b = &blocks[run->block];
            int off = b->bits == 8 ? 128 : 0;
            float maxq = (float)((1 << b->bits) - 1);
            int32_t sum = 0;
            int8_t *dst = at + run->code_offset;
            if (simd) quantize_codes_avx2(xt + run->col, run->count, s[run->block], z[run->block], maxq, off, dst, &sum);
            else quantize_codes_scalar(xt + run->col, run->count, s[run->block], z[run->block], maxq, off, dst, &sum);
            memset(dst + run->count, 0, (size_t)(run->padded - run->count));
            s_a[t * nruns + k] = s[run->block];
            z_a[t * nruns + k] = (int32_t)z[run->block] - off;
            sum_a[t * nruns + k] = sum;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// W4A8 integer GEMM.

// The epilogue's integer part for one (token, row, run): Σ(u − z_w)(a − z') from Σua, Σu, Σa. Exact in int64.
static inline float corrected(int64_t dot, int32_t sum_u, int32_t sum_a, int32_t z_w, int32_t z_a, int32_t n) {
    return (float)(dot - (int64_t)z_a * sum_u - (int64_t)z_w * sum_a + (int64_t)n * z_w * z_a);
}

void cq_gemm_w4a8_ref(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                      const float *s_w, const int32_t *z_w, int groups, const int32_t *sum_u,
                      const int8_t *a, int64_t padded_cols, int64_t tokens,
                      const float *s_a, const int32_t *z_a, const int32_t *sum_a,
                      float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < tokens; t++) {
        for (int64_t r = r0; r < r1; r++) {
            float acc = 0;
            for (int k = 0; k < nruns; k++) {
                const cq_run *run = &runs[k];
                int64_t dot = 0;
                for (int p = 0; p < run->planes; p++) {
                    const uint8_t *plane = w + r * row_bytes + run->byte_offset + (int64_t)p * run->padded / 2;
                    const int8_t *at = a + t * padded_cols + run->code_offset;
                    int64_t d = 0;
                    for (int j = 0; j < run->padded; j++) d += plane_code(plane, j) * at[j];
                    dot += p == 0 ? d : 16 * d;
                }
                int g = run->group, tk = (int)(t * nruns + k);
                acc += s_w[r * groups + g] * s_a[tk] *
                       corrected(dot, sum_u[r * nruns + k], sum_a[tk], z_w[r * groups + g], z_a[tk], run->count);
            }
            y[t * ldy + r] = acc;
        }
    }
}

AVX2 static inline __m256i unpack32(const uint8_t *p) {
    const __m128i m = _mm_set1_epi8(0x0F);
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

AVX2 static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// Σ u·a over `chunks` 32-column chunks for RB weight rows × TB tokens. Each vpmaddubsw pair sum is ≤ 2·15·128 =
// 3840, so int16 partial sums of up to 8 chunks (≤ 30 720) cannot saturate; they widen to int32 every 8 chunks.
#define DOT_TILE(RB, TB)                                                                                             \
    AVX2 static void dot_tile_##RB##x##TB(const uint8_t *const *w, const int8_t *const *a, int chunks,              \
                                          int32_t *out) {                                                           \
        const __m256i ones = _mm256_set1_epi16(1);                                                                  \
        __m256i acc[RB][TB];                                                                                        \
        for (int i = 0; i < RB; i++)                                                                                \
            for (int j = 0; j < TB; j++) acc[i][j] = _mm256_setzero_si256();                                        \
        for (int k0 = 0; k0 < chunks; k0 += 8) {                                                                    \
            int k1 = k0 + 8 < chunks ? k0 + 8 : chunks;                                                             \
            __m256i acc16[RB][TB];                                                                                  \
            for (int i = 0; i < RB; i++)                                                                            \
                for (int j = 0; j < TB; j++) acc16[i][j] = _mm256_setzero_si256();                                  \
            for (int k = k0; k < k1; k++) {                                                                         \
                __m256i av[TB];                                                                                     \
                for (int j = 0; j < TB; j++) av[j] = _mm256_loadu_si256((const __m256i *)(a[j] + 32 * k));          \
                for (int i = 0; i < RB; i++) {                                                                      \
                    __m256i wv = unpack32(w[i] + 16 * k);                                                           \
                    for (int j = 0; j < TB; j++)                                                                    \
                        acc16[i][j] = _mm256_add_epi16(acc16[i][j], _mm256_maddubs_epi16(wv, av[j]));               \
                }                                                                                                   \
            }                                                                                                       \
            for (int i = 0; i < RB; i++)                                                                            \
                for (int j = 0; j < TB; j++)                                                                        \
                    acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(acc16[i][j], ones));                  \
        }                                                                                                           \
        for (int i = 0; i < RB; i++)                                                                                \
            for (int j = 0; j < TB; j++) out[i * TB + j] = hsum_i32(acc[i][j]);                                     \
    }
DOT_TILE(4, 2)
DOT_TILE(4, 1)
DOT_TILE(1, 2)
DOT_TILE(1, 1)

// The same product with the weights already unpacked to one code per byte (32 bytes per chunk): prefill unpacks a
// 4-row tile once per block of tokens, so the inner loop is two loads, eight vpmaddubsw and eight adds per chunk.
AVX2 static void dot_tile_u8_4x2(const uint8_t *const *w, const int8_t *const *a, int chunks, int32_t *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
    for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (int k0 = 0; k0 < chunks; k0 += 8) {
        int k1 = k0 + 8 < chunks ? k0 + 8 : chunks;
        __m256i s[4][2];
        for (int i = 0; i < 4; i++) s[i][0] = s[i][1] = _mm256_setzero_si256();
        for (int k = k0; k < k1; k++) {
            __m256i a0 = _mm256_loadu_si256((const __m256i *)(a[0] + 32 * k));
            __m256i a1 = _mm256_loadu_si256((const __m256i *)(a[1] + 32 * k));
            for (int i = 0; i < 4; i++) {
                __m256i wv = _mm256_load_si256((const __m256i *)(w[i] + 32 * k));
                s[i][0] = _mm256_add_epi16(s[i][0], _mm256_maddubs_epi16(wv, a0));
                s[i][1] = _mm256_add_epi16(s[i][1], _mm256_maddubs_epi16(wv, a1));
            }
        }
        for (int i = 0; i < 4; i++) {
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(s[i][0], ones));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(s[i][1], ones));
        }
    }
    for (int i = 0; i < 4; i++) { out[2 * i] = hsum_i32(acc[i][0]); out[2 * i + 1] = hsum_i32(acc[i][1]); }
}

// Unpacks rows [r, r + 4) to one code per byte: plane p of run k at u8 + i·stride + 2·byte_offset + p·padded.
AVX2 static void unpack_rows_4(const uint8_t *w, int64_t row_bytes, int64_t r, uint8_t *u8, int64_t stride) {
    for (int i = 0; i < 4; i++) {
        const uint8_t *src = w + (r + i) * row_bytes;
        uint8_t *dst = u8 + i * stride;
        for (int64_t b = 0; b < row_bytes; b += 16) _mm256_store_si256((__m256i *)(dst + 2 * b), unpack32(src + b));
    }
}

// One tile of rows [r, r + RB) × tokens [t, t + TB), RB ∈ {1, 4}, TB ∈ {1, 2}.
AVX2 static void gemm_tile(int RB, int TB, const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                           const float *s_w, const int32_t *z_w, int groups, const int32_t *sum_u,
                           const int8_t *a, int64_t padded_cols, const float *s_a, const int32_t *z_a,
                           const int32_t *sum_a, float *y, int64_t ldy, int64_t r, int64_t t) {
    float acc[8] = {0};
    for (int k = 0; k < nruns; k++) {
        const cq_run *run = &runs[k];
        int64_t dot[8] = {0};
        for (int p = 0; p < run->planes; p++) {
            const uint8_t *wp[4];
            const int8_t *ap[2];
            for (int i = 0; i < RB; i++) wp[i] = w + (r + i) * row_bytes + run->byte_offset + (int64_t)p * run->padded / 2;
            for (int j = 0; j < TB; j++) ap[j] = a + (t + j) * padded_cols + run->code_offset;
            int32_t d[8];
            int chunks = run->padded / 32;
            if (RB == 4 && TB == 2) dot_tile_4x2(wp, ap, chunks, d);
            else if (RB == 4) dot_tile_4x1(wp, ap, chunks, d);
            else if (TB == 2) dot_tile_1x2(wp, ap, chunks, d);
            else dot_tile_1x1(wp, ap, chunks, d);
            for (int i = 0; i < RB * TB; i++) dot[i] += p == 0 ? d[i] : 16 * (int64_t)d[i];
        }
        for (int i = 0; i < RB; i++) {
            int64_t ri = r + i;
            for (int j = 0; j < TB; j++) {
                int64_t tk = (t + j) * nruns + k;
                int g = run->group;
                acc[i * TB + j] += s_w[ri * groups + g] * s_a[tk] *
                    corrected(dot[i * TB + j], sum_u[ri * nruns + k], sum_a[tk], z_w[ri * groups + g], z_a[tk], run->count);
            }
        }
    }
    for (int i = 0; i < RB; i++)
        for (int j = 0; j < TB; j++) y[(t + j) * ldy + r + i] = acc[i * TB + j];
}

// gemm_tile's 4 × 2 case on unpacked rows (unpack_rows_4).
AVX2 static void gemm_tile_unpacked(const uint8_t *u8, int64_t stride, const cq_run *runs, int nruns,
                                    const float *s_w, const int32_t *z_w, int groups, const int32_t *sum_u,
                                    const int8_t *a, int64_t padded_cols, const float *s_a, const int32_t *z_a,
                                    const int32_t *sum_a, float *y, int64_t ldy, int64_t r, int64_t t) {
    float acc[8] = {0};
    for (int k = 0; k < nruns; k++) {
        const cq_run *run = &runs[k];
        int64_t dot[8] = {0};
        for (int p = 0; p < run->planes; p++) {
            const uint8_t *wp[4];
            const int8_t *ap[2] = {a + t * padded_cols + run->code_offset, a + (t + 1) * padded_cols + run->code_offset};
            for (int i = 0; i < 4; i++) wp[i] = u8 + i * stride + 2 * (int64_t)run->byte_offset + (int64_t)p * run->padded;
            int32_t d[8];
            dot_tile_u8_4x2(wp, ap, run->padded / 32, d);
            for (int i = 0; i < 8; i++) dot[i] += p == 0 ? d[i] : 16 * (int64_t)d[i];
        }
        for (int i = 0; i < 4; i++) {
            int64_t ri = r + i;
            for (int j = 0; j < 2; j++) {
                int64_t tk = (t + j) * nruns + k;
                int g = run->group;
                acc[i * 2 + j] += s_w[ri * groups + g] * s_a[tk] *
                    corrected(dot[i * 2 + j], sum_u[ri * nruns + k], sum_a[tk], z_w[ri * groups + g], z_a[tk], run->count);
            }
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++) y[(t + j) * ldy + r + i] = acc[i * 2 + j];
}

AVX2 static void gemm_w4a8_avx2(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                                const float *s_w, const int32_t *z_w, int groups, const int32_t *sum_u,
                                const int8_t *a, int64_t padded_cols, int64_t tokens,
                                const float *s_a, const int32_t *z_a, const int32_t *sum_a,
                                float *y, int64_t ldy, int64_t r0, int64_t r1) {
    // Token blocks small enough that their codes stay in L2 while every row tile of the block streams past.
    const int64_t tblock = 128;
    // Prefill: 4-row tiles unpacked once per token block into an aligned scratch (2 bytes per packed byte).
    const int unpacked = tokens >= 8;
    const int64_t stride = (2 * row_bytes + 63) / 64 * 64;
    uint8_t *u8 = unpacked ? aligned_alloc(64, (size_t)(4 * stride)) : NULL;
    for (int64_t tb = 0; tb < tokens; tb += tblock) {
        int64_t te = tb + tblock < tokens ? tb + tblock : tokens;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            int64_t t = tb;
            if (unpacked) {
                unpack_rows_4(w, row_bytes, r, u8, stride);
                for (; t + 2 <= te; t += 2)
                    gemm_tile_unpacked(u8, stride, runs, nruns, s_w, z_w, groups, sum_u, a, padded_cols, s_a, z_a, sum_a, y, ldy, r, t);
            }
            for (; t + 2 <= te; t += 2)
                gemm_tile(4, 2, w, row_bytes, runs, nruns, s_w, z_w, groups, sum_u, a, padded_cols, s_a, z_a, sum_a, y, ldy, r, t);
            if (t < te)
                gemm_tile(4, 1, w, row_bytes, runs, nruns, s_w, z_w, groups, sum_u, a, padded_cols, s_a, z_a, sum_a, y, ldy, r, t);
        }
        for (; r < r1; r++) {
            int64_t t = tb;
            for (; t + 2 <= te; t += 2)
                gemm_tile(1, 2, w, row_bytes, runs, nruns, s_w, z_w, groups, sum_u, a, padded_cols, s_a, z_a, sum_a, y, ldy, r, t);
            if (t < te)
                gemm_tile(1, 1, w, row_bytes, runs, nruns, s_w, z_w, groups, sum_u, a, padded_cols, s_a, z_a, sum_a, y, ldy, r, t);
        }
    }
    free(u8);
}

void cq_gemm_w4a8(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                  const float *s_w, const int32_t *z_w, int groups, const int32_t *sum_u,
                  const int8_t *a, int64_t padded_cols, int64_t tokens,
                  const float *s_a, const int32_t *z_a, const int32_t *sum_a,
                  float *y, int64_t ldy, int64_t r0, int64_t r1) {
    if (cq_simd_enabled())
        gemm_w4a8_avx2(w, row_bytes, runs, nruns, s_w, z_w, groups, sum_u, a, padded_cols, tokens, s_a, z_a, sum_a, y, ldy, r0, r1);
    else
        cq_gemm_w4a8_ref(w, row_bytes, runs, nruns, s_w, z_w, groups, sum_u, a, padded_cols, tokens, s_a, z_a, sum_a, y, ldy, r0, r1);
}

// ---------------------------------------------------------------------------------------------------------------
// Weight-only products with fp32 activations.

void cq_gather_runs(const float *x, int64_t ldx, int64_t tokens, const cq_run *runs, int nruns, int64_t padded_cols,
                    float *xp, float *sum_x) {
    for (int64_t t = 0; t < tokens; t++) {
        for (int k = 0; k < nruns; k++) {
            const cq_run *run = &runs[k];
            float *dst = xp + t * padded_cols + run->code_offset;
            const float *src = x + t * ldx + run->col;
            float s = 0;
            for (int j = 0; j < run->count; j++) { dst[j] = src[j]; s += src[j]; }
            for (int j = run->count; j < run->padded; j++) dst[j] = 0;
            sum_x[t * nruns + k] = s;
        }
    }
}

void cq_gemv_w4_f32_ref(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                        const float *s_w, const float *z_w, int groups,
                        const float *x, int64_t padded_cols, int64_t tokens, const float *sum_x,
                        float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < tokens; t++) {
        for (int64_t r = r0; r < r1; r++) {
            float acc = 0;
            for (int k = 0; k < nruns; k++) {
                const cq_run *run = &runs[k];
                float dot = 0;
                for (int p = 0; p < run->planes; p++) {
                    const uint8_t *plane = w + r * row_bytes + run->byte_offset + (int64_t)p * run->padded / 2;
                    const float *xt = x + t * padded_cols + run->code_offset;
                    float d = 0;
                    for (int j = 0; j < run->padded; j++) d += (float)plane_code(plane, j) * xt[j];
                    dot += p == 0 ? d : 16 * d;
                }
                int g = run->group;
                acc += s_w[r * groups + g] * (dot - z_w[r * groups + g] * sum_x[t * nruns + k]);
            }
            y[t * ldy + r] = acc;
        }
    }
}

// Σ code·x over one plane of `chunks` 32-column chunks, for one row and one token.
AVX2 static inline float plane_dot_f32(const uint8_t *plane, const float *x, int chunks) {
    const __m128i m = _mm_set1_epi8(0x0F);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int k = 0; k < chunks; k++) {
        __m128i b = _mm_loadu_si128((const __m128i *)(plane + 16 * k));
        __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        const float *xk = x + 32 * k;
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xk), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xk + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xk + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xk + 24), a3);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

AVX2 static void gemv_w4_f32_avx2(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                                  const float *s_w, const float *z_w, int groups,
                                  const float *x, int64_t padded_cols, int64_t tokens, const float *sum_x,
                                  float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t t = 0; t < tokens; t++) {
            float acc = 0;
            for (int k = 0; k < nruns; k++) {
                const cq_run *run = &runs[k];
                const uint8_t *plane = w + r * row_bytes + run->byte_offset;
                const float *xt = x + t * padded_cols + run->code_offset;
                float dot = plane_dot_f32(plane, xt, run->padded / 32);
                if (run->planes == 2) dot += 16 * plane_dot_f32(plane + run->padded / 2, xt, run->padded / 32);
                int g = run->group;
                acc += s_w[r * groups + g] * (dot - z_w[r * groups + g] * sum_x[t * nruns + k]);
            }
            y[t * ldy + r] = acc;
        }
    }
}

void cq_gemv_w4_f32(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                    const float *s_w, const float *z_w, int groups,
                    const float *x, int64_t padded_cols, int64_t tokens, const float *sum_x,
                    float *y, int64_t ldy, int64_t r0, int64_t r1) {
    if (cq_simd_enabled())
        gemv_w4_f32_avx2(w, row_bytes, runs, nruns, s_w, z_w, groups, x, padded_cols, tokens, sum_x, y, ldy, r0, r1);
    else
        cq_gemv_w4_f32_ref(w, row_bytes, runs, nruns, s_w, z_w, groups, x, padded_cols, tokens, sum_x, y, ldy, r0, r1);
}

// One plane chunk of 32 codes → fp32 s·(u − z) (+ 16·s·hi for the second plane of an 8-bit run, added in place).
AVX2 static void dequantize_rows_avx2(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                                      const float *s_w, const float *z_w, int groups, int64_t cols,
                                      int64_t r0, int64_t r1, float *out) {
    const __m128i m = _mm_set1_epi8(0x0F);
    for (int64_t r = r0; r < r1; r++) {
        float *o = out + (r - r0) * cols;
        for (int k = 0; k < nruns; k++) {
            const cq_run *run = &runs[k];
            const uint8_t *plane = w + r * row_bytes + run->byte_offset;
            const float s = s_w[r * groups + run->group], z = z_w[r * groups + run->group];
            const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
            int full = run->count / 32;
            for (int c = 0; c < full; c++) {
                __m128i b = _mm_loadu_si128((const __m128i *)(plane + 16 * c));
                __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
                __m256 v[4] = {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                               _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)))};
                __m256 extra[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                if (run->planes == 2) {
                    __m128i b2 = _mm_loadu_si128((const __m128i *)(plane + run->padded / 2 + 16 * c));
                    __m128i lo2 = _mm_and_si128(b2, m), hi2 = _mm_and_si128(_mm_srli_epi16(b2, 4), m);
                    extra[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo2));
                    extra[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo2, 8)));
                    extra[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi2));
                    extra[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi2, 8)));
                }
                for (int j = 0; j < 4; j++) {
                    // s·((lo + 16·hi) − z), the code formed exactly in float before the one rounding multiply.
                    __m256 u = _mm256_add_ps(v[j], _mm256_mul_ps(extra[j], _mm256_set1_ps(16)));
                    _mm256_storeu_ps(o + run->col + 32 * c + 8 * j, _mm256_mul_ps(sv, _mm256_sub_ps(u, zv)));
                }
            }
            for (int j = 32 * full; j < run->count; j++) {
                int u = plane_code(plane, j);
                if (run->planes == 2) u += 16 * plane_code(plane + run->padded / 2, j);
                o[run->col + j] = s * ((float)u - z);
            }
        }
    }
}

void cq_dequantize_rows(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                        const float *s_w, const float *z_w, int groups, int64_t cols,
                        int64_t r0, int64_t r1, float *out) {
    if (cq_simd_enabled()) {
        dequantize_rows_avx2(w, row_bytes, runs, nruns, s_w, z_w, groups, cols, r0, r1, out);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        float *o = out + (r - r0) * cols;
        for (int k = 0; k < nruns; k++) {
            const cq_run *run = &runs[k];
            const uint8_t *plane = w + r * row_bytes + run->byte_offset;
            float s = s_w[r * groups + run->group], z = z_w[r * groups + run->group];
            for (int j = 0; j < run->count; j++) {
                int u = plane_code(plane, j);
                if (run->planes == 2) u += 16 * plane_code(plane + run->padded / 2, j);
                o[run->col + j] = s * ((float)u - z);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Int8 rows × fp32 (embeddings and LM head).

void cq_gemv_q8_f32_ref(const int8_t *w, int64_t cols, const float *scale, const float *x, int64_t ldx, int64_t tokens,
                        float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < tokens; t++) {
        for (int64_t r = r0; r < r1; r++) {
            float d = 0;
            for (int64_t c = 0; c < cols; c++) d += (float)w[r * cols + c] * x[t * ldx + c];
            y[t * ldy + r] = scale[r] * d;
        }
    }
}

AVX2 static void gemv_q8_f32_avx2(const int8_t *w, int64_t cols, const float *scale, const float *x, int64_t ldx,
                                  int64_t tokens, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *wr = w + r * cols;
        for (int64_t t = 0; t < tokens; t++) {
            const float *xt = x + t * ldx;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            int64_t c = 0;
            for (; c + 16 <= cols; c += 16) {
                __m128i b = _mm_loadu_si128((const __m128i *)(wr + c));
                a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_loadu_ps(xt + c), a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))), _mm256_loadu_ps(xt + c + 8), a1);
            }
            float d = hsum_ps(_mm256_add_ps(a0, a1));
            for (; c < cols; c++) d += (float)wr[c] * xt[c];
            y[t * ldy + r] = scale[r] * d;
        }
    }
}

void cq_gemv_q8_f32(const int8_t *w, int64_t cols, const float *scale, const float *x, int64_t ldx, int64_t tokens,
                    float *y, int64_t ldy, int64_t r0, int64_t r1) {
    if (cq_simd_enabled()) gemv_q8_f32_avx2(w, cols, scale, x, ldx, tokens, y, ldy, r0, r1);
    else cq_gemv_q8_f32_ref(w, cols, scale, x, ldx, tokens, y, ldy, r0, r1);
}

// IEEE half → float, every case (normal, subnormal, zero, inf, NaN), without F16C.
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 0x3FF, bits;
    if (exp == 31) bits = sign | 0x7F800000 | (man << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {
        // Subnormal: normalize the mantissa.
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void cq_gemv_f16_f32_ref(const uint16_t *w, int64_t cols, const float *x, int64_t ldx, int64_t tokens,
                         float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < tokens; t++) {
        for (int64_t r = r0; r < r1; r++) {
            float d = 0;
            for (int64_t c = 0; c < cols; c++) d += half_to_float(w[r * cols + c]) * x[t * ldx + c];
            y[t * ldy + r] = d;
        }
    }
}

AVX2 static void gemv_f16_f32_avx2(const uint16_t *w, int64_t cols, const float *x, int64_t ldx, int64_t tokens,
                                   float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *wr = w + r * cols;
        for (int64_t t = 0; t < tokens; t++) {
            const float *xt = x + t * ldx;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            int64_t c = 0;
            for (; c + 16 <= cols; c += 16) {
                a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + c))), _mm256_loadu_ps(xt + c), a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wr + c + 8))), _mm256_loadu_ps(xt + c + 8), a1);
            }
            float d = hsum_ps(_mm256_add_ps(a0, a1));
            for (; c < cols; c++) d += half_to_float(wr[c]) * xt[c];
            y[t * ldy + r] = d;
        }
    }
}

void cq_gemv_f16_f32(const uint16_t *w, int64_t cols, const float *x, int64_t ldx, int64_t tokens,
                     float *y, int64_t ldy, int64_t r0, int64_t r1) {
    if (cq_simd_enabled()) gemv_f16_f32_avx2(w, cols, x, ldx, tokens, y, ldy, r0, r1);
    else cq_gemv_f16_f32_ref(w, cols, x, ldx, tokens, y, ldy, r0, r1);
}

// ---------------------------------------------------------------------------------------------------------------
// Decode attention over the fp32 KV cache.

void cq_attention_f32_ref(const float *q, const float *k, const float *v, float *ctx, int64_t rows, int64_t start,
                          int H, int KV, int hd, float scale, float *scratch, int h0, int h1) {
    const int64_t ld = (int64_t)KV * hd;
    for (int64_t t = 0; t < rows; t++) {
        int64_t n = start + t + 1;
        for (int h = h0; h < h1; h++) {
            const float *qh = q + (t * H + h) * hd;
            const int64_t g = h / (H / KV);
            float m = -INFINITY, sum = 0;
            for (int64_t p = 0; p < n; p++) {
                float d = 0;
                for (int i = 0; i < hd; i++) d += qh[i] * k[p * ld + g * hd + i];
                scratch[p] = d * scale;
                m = scratch[p] > m ? scratch[p] : m;
            }
            for (int64_t p = 0; p < n; p++) { scratch[p] = expf(scratch[p] - m); sum += scratch[p]; }
            float *c = ctx + (t * H + h) * hd;
            for (int i = 0; i < hd; i++) c[i] = 0;
            for (int64_t p = 0; p < n; p++)
                for (int i = 0; i < hd; i++) c[i] += scratch[p] / sum * v[p * ld + g * hd + i];
        }
    }
}

// e^x for 8 lanes (Cephes expf: Cody–Waite reduction, degree-6 polynomial; ≈ 2 ulp), as Kernels.swift's exp8.
AVX2 static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.72283f));
    __m256 shifted = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(12582912.0f));
    __m256 n = _mm256_sub_ps(shifted, _mm256_set1_ps(12582912.0f));
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(0x4B400000)),
                                                      _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

AVX2 static inline float hsum_ps(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

// ---------------------------------------------------------------------------------------------------------------
// Packed KV cache (layout in the header).

static inline int64_t kv_block_bytes(const cq_act_block *b) { return b->bits <= 4 ? (b->count + 1) / 2 : b->count; }

int64_t cq_kv_row_bytes(const cq_act_block *blocks, int nblocks) {
    int64_t n = 0;
    for (int i = 0; i < nblocks; i++) n += kv_block_bytes(&blocks[i]);
    return n;
}

// Scalar on purpose: it runs once per new token and head (a few hundred rows per token), and
// nearbyintf(x / s) is the simulator's rounding of the same float quotient.
void cq_kv_quantize(const float *x, int64_t rows, int hd, const cq_act_block *blocks, int nblocks,
                    uint8_t *codes, float *sz) {
    const int64_t row_bytes = cq_kv_row_bytes(blocks, nblocks);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * hd;
        uint8_t *c = codes + r * row_bytes;
        for (int k = 0; k < nblocks; k++) {
            const cq_act_block *b = &blocks[k];
            float s, z, maxq = (float)((1 << b->bits) - 1);
            block_grid(xr, b, &s, &z);
            sz[(r * nblocks + k) * 2] = s;
            sz[(r * nblocks + k) * 2 + 1] = z;
            const int64_t h = (b->count + 1) / 2;
            if (b->bits <= 4) memset(c, 0, (size_t)h);
            for (int i = 0; i < b->count; i++) {
                float q = nearbyintf(xr[b->col + i] / s) + z;
                uint8_t u = (uint8_t)(q < 0 ? 0 : (q > maxq ? maxq : q));
                if (b->bits > 4) c[i] = u;
                else if (i < h) c[i] |= u;
                else c[i - h] |= (uint8_t)(u << 4);
            }
            c += kv_block_bytes(b);
        }
    }
}

static void kv_dequantize_row_scalar(const uint8_t *c, const float *sz, const cq_act_block *blocks, int nblocks, float *out) {
    for (int k = 0; k < nblocks; k++) {
        const cq_act_block *b = &blocks[k];
        const float s = sz[2 * k], z = sz[2 * k + 1];
        const int64_t h = (b->count + 1) / 2;
        for (int i = 0; i < b->count; i++) {
            int u = b->bits > 4 ? c[i] : (i < h ? c[i] & 15 : c[i - h] >> 4);
            out[b->col + i] = s * ((float)u - z);
        }
        c += kv_block_bytes(b);
    }
}

AVX2 static void kv_dequantize_row_avx2(const uint8_t *c, const float *sz, const cq_act_block *blocks, int nblocks, float *out) {
    for (int k = 0; k < nblocks; k++) {
        const cq_act_block *b = &blocks[k];
        const float s = sz[2 * k], z = sz[2 * k + 1];
        const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
        const __m256i low = _mm256_set1_epi32(15);
        float *o = out + b->col;
        int i = 0;
        if (b->bits > 4) {
            for (; i + 8 <= b->count; i += 8) {
                __m256 u = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + i))));
                _mm256_storeu_ps(o + i, _mm256_mul_ps(sv, _mm256_sub_ps(u, zv)));
            }
            for (; i < b->count; i++) o[i] = s * ((float)c[i] - z);
        } else {
            const int h = (b->count + 1) / 2;
            for (; i + 8 <= h && h + i + 8 <= b->count; i += 8) {
                __m256i u = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + i)));
                __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(u, low));
                __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(u, 4));
                _mm256_storeu_ps(o + i, _mm256_mul_ps(sv, _mm256_sub_ps(lo, zv)));
                _mm256_storeu_ps(o + h + i, _mm256_mul_ps(sv, _mm256_sub_ps(hi, zv)));
            }
            for (; i < h; i++) {
                o[i] = s * ((float)(c[i] & 15) - z);
                if (h + i < b->count) o[h + i] = s * ((float)(c[i] >> 4) - z);
            }
        }
        c += kv_block_bytes(b);
    }
}

static inline __attribute__((always_inline)) void kv_dequantize_row(int simd, const uint8_t *c, const float *sz, const cq_act_block *blocks, int nblocks, float *out) {
    if (simd) kv_dequantize_row_avx2(c, sz, blocks, nblocks, out);
    else kv_dequantize_row_scalar(c, sz, blocks, nblocks, out);
}

void cq_kv_dequantize(const uint8_t *codes, const float *sz, int64_t rows, int hd, const cq_act_block *blocks,
                      int nblocks, float *out) {
    const int simd = cq_simd_enabled();
    const int64_t row_bytes = cq_kv_row_bytes(blocks, nblocks);
    for (int64_t r = 0; r < rows; r++)
        kv_dequantize_row(simd, codes + r * row_bytes, sz + r * nblocks * 2, blocks, nblocks, out + r * hd);
}

// Σ a_i·b_i and y += w·x over hd floats (hd a multiple of 8 on the AVX2 path).
AVX2 static inline float dot_avx2(const float *a, const float *b, int n) {
    __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        d0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), d0);
        d1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), d1);
    }
    for (; i < n; i += 8) d0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), d0);
    return hsum_ps(_mm256_add_ps(d0, d1));
}

AVX2 static inline void axpy_avx2(float w, const float *x, float *y, int n) {
    const __m256 wv = _mm256_set1_ps(w);
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
}

static inline float dot_scalar(const float *a, const float *b, int n) {
    float d = 0;
    for (int i = 0; i < n; i++) d += a[i] * b[i];
    return d;
}

static inline void axpy_scalar(float w, const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] += w * x[i];
}

AVX2 static float softmax_avx2(float *e, int64_t n) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t p = 0;
    for (; p + 8 <= n; p += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(e + p));
    float m = -INFINITY;
    float lanes[8];
    _mm256_storeu_ps(lanes, mv);
    for (int i = 0; i < 8; i++) m = lanes[i] > m ? lanes[i] : m;
    for (; p < n; p++) m = e[p] > m ? e[p] : m;
    __m256 sv = _mm256_setzero_ps();
    const __m256 mb = _mm256_set1_ps(m);
    for (p = 0; p + 8 <= n; p += 8) {
        __m256 x = exp256(_mm256_sub_ps(_mm256_loadu_ps(e + p), mb));
        _mm256_storeu_ps(e + p, x);
        sv = _mm256_add_ps(sv, x);
    }
    float sum = hsum_ps(sv);
    for (; p < n; p++) { e[p] = expf(e[p] - m); sum += e[p]; }
    return sum;
}

static float softmax_scalar(float *e, int64_t n) {
    float m = -INFINITY, sum = 0;
    for (int64_t p = 0; p < n; p++) m = e[p] > m ? e[p] : m;
    for (int64_t p = 0; p < n; p++) { e[p] = expf(e[p] - m); sum += e[p]; }
    return sum;
}

// Row p of KV head g, as fp32: in place in an fp32 cache, else dequantized into buf.
static inline __attribute__((always_inline)) const float *kv_row(int simd, const cq_kv_view *c, int keys, int64_t p, int g, float *buf) {
    const int64_t at = p * c->kv_heads + g;
    if (!c->kc) return (keys ? c->k : c->v) + at * c->head_dim;
    const cq_act_block *b = keys ? c->kb : c->vb;
    const int nb = keys ? c->nkb : c->nvb;
    kv_dequantize_row(simd, (keys ? c->kc : c->vc) + at * cq_kv_row_bytes(b, nb), (keys ? c->ksz : c->vsz) + at * nb * 2, b, nb, buf);
    return buf;
}

// One body, compiled twice: with the AVX2 steps inlined (dot, axpy, softmax and row dequantization of 8 lanes), and
// with the scalar ones. The tests hold both to cq_attention_f32_ref (over the dequantized cache when packed).
#define ATTENTION_PART(NAME, ATTR, SIMD, DOT, AXPY, SOFTMAX)                                                        \
    ATTR static void NAME(const float *q, const cq_kv_view *c, int64_t rows, int64_t start, int H, float scale,    \
                          int64_t p0, int64_t p1, float *scratch, float *m, float *l, float *acc) {                 \
        const int KV = c->kv_heads, hd = c->head_dim, G = H / KV;                                                  \
        const int64_t span = p1 - p0;                                                                              \
        float *buf = scratch + (int64_t)G * span;                                                                  \
        for (int64_t t = 0; t < rows; t++) {                                                                       \
            const int64_t n = start + t + 1 < p1 ? start + t + 1 : p1; /* this share's positions row t sees */    \
            for (int g = 0; g < KV; g++) {                                                                         \
                const int ha = g * G;                                                                              \
                for (int64_t p = p0; p < n; p++) {                                                                 \
                    const float *row = kv_row(SIMD, c, 1, p, g, buf);                                              \
                    for (int i = 0; i < G; i++)                                                                    \
                        scratch[i * span + p - p0] = DOT(q + (t * H + ha + i) * hd, row, hd) * scale;              \
                }                                                                                                  \
                for (int i = 0; i < G; i++) {                                                                      \
                    const int64_t at = t * H + ha + i;                                                             \
                    memset(acc + at * hd, 0, (size_t)hd * sizeof(float));                                         \
                    if (n <= p0) { m[at] = -INFINITY; l[at] = 0; continue; }                                       \
                    float *e = scratch + i * span, mx = -INFINITY;                                                 \
                    for (int64_t p = 0; p < n - p0; p++) mx = e[p] > mx ? e[p] : mx;                               \
                    m[at] = mx;                                                                                    \
                    l[at] = SOFTMAX(e, n - p0);                                                                    \
                }                                                                                                  \
                for (int64_t p = p0; p < n; p++) {                                                                 \
                    const float *row = kv_row(SIMD, c, 0, p, g, buf);                                              \
                    for (int i = 0; i < G; i++)                                                                    \
                        AXPY(scratch[i * span + p - p0], row, acc + (t * H + ha + i) * hd, hd);                    \
                }                                                                                                  \
            }                                                                                                      \
        }                                                                                                          \
    }
ATTENTION_PART(attention_part_avx2, AVX2, 1, dot_avx2, axpy_avx2, softmax_avx2)
ATTENTION_PART(attention_part_scalar, , 0, dot_scalar, axpy_scalar, softmax_scalar)

void cq_attention_part(const float *q, const cq_kv_view *c, int64_t rows, int64_t start, int H, float scale,
                       int64_t p0, int64_t p1, float *scratch, float *m, float *l, float *acc) {
    if (cq_simd_enabled() && c->head_dim % 8 == 0) attention_part_avx2(q, c, rows, start, H, scale, p0, p1, scratch, m, l, acc);
    else attention_part_scalar(q, c, rows, start, H, scale, p0, p1, scratch, m, l, acc);
}

void cq_attention_merge(int parts, int64_t rows, int H, int hd, const float *m, const float *l, const float *acc, float *ctx) {
    const int64_t n = rows * H;
    for (int64_t at = 0; at < n; at++) {
        float mx = -INFINITY;
        for (int k = 0; k < parts; k++) mx = m[k * n + at] > mx ? m[k * n + at] : mx;
        float sum = 0, w[64];
        for (int k = 0; k < parts; k++) { w[k] = l[k * n + at] > 0 ? expf(m[k * n + at] - mx) : 0; sum += w[k] * l[k * n + at]; }
        float *out = ctx + at * hd;
        for (int i = 0; i < hd; i++) {
            float v = 0;
            for (int k = 0; k < parts; k++) v += w[k] * acc[(k * n + at) * hd + i];
            out[i] = v / sum;
        }
    }
}

void cq_pause(void) {
#if defined(__x86_64__)
    _mm_pause();
#endif
}
