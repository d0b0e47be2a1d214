// Integer and low-bit kernels of CoQuant's runtime (DESIGN.md §2 "Runtime", RUNTIME.md).
//
// Written in C because Swift cannot emit vpmaddubsw / vpmaddwd (no widening multiply-add in its SIMD types).
// Every kernel has a scalar reference (`*_ref`) that defines its result; the AVX2 versions must equal it exactly
// (integer kernels) or up to float summation order (fp32 kernels). `cq_set_simd(0)` routes every call to the
// scalar code (tests, and CPUs without AVX2).
//
// ## Packed weights: "runs" of 4-bit planes
// A linear W [rows, cols] is split into runs: maximal ranges of consecutive input columns that share one weight
// group (one scale and zero point per row) and one activation block (one scale and zero point per token). Each run
// is padded to a multiple of 32 columns. A run of b ≤ 4-bit codes is one 4-bit plane; a run of 5–8-bit codes is
// two planes, u = 16·hi + lo (so u4 × s8 products, ≤ 2·15·128 per vpmaddubsw pair, never saturate int16).
// A plane holds 32 columns in 16 bytes: byte j = code(col j) | code(col j + 16) << 4, j = 0…15 (llama.cpp's
// Q4_0 nibble order, so one load + mask + shift gives 32 codes in column order).
// Row r's bytes: the runs in order, each run's planes in order (lo first), each plane padded_len / 2 bytes.
// Padding codes are 0, and so are the padded activation codes: padding adds nothing to any dot product or sum.
// The layout's home is CoQuantModel/PlaneLayout.swift (which packs it); these kernels read it.
//
// ## Activations
// Per token and activation block, asymmetric as the simulator (ActivationQuantizer.swift):
//   [lo, hi] = range (0 forced in, or plain min/max), × clip;  s = (hi − lo)/maxq;  z = round(−lo/s)
//   q = clamp(round(x/s) + z, 0, maxq)
// stored as int8 a = q − off with off = 128 for 8-bit blocks (q up to 255) and 0 below; z' = z − off.
// x ≈ s·(a − z'), exactly the simulator's s·(q − z).
//
// ## Integer GEMM epilogue, per token t, row r:
//   y[t, r] = Σ_runs s_w[r, g]·s_a[t, run]·(Σ u·a − z'·Σu − z_w·Σa + n·z_w·z')
// with Σu per (row, run) precomputed at load, Σa per (token, run) from the activation quantizer, n the run's real
// (unpadded) column count.
#ifndef COQUANT_KERNELS_H
#define COQUANT_KERNELS_H

#include <stdint.h>

/// One run of a packed linear (see above).
typedef struct {
    int32_t col;        // first input column (original order)
    int32_t count;      // real columns
    int32_t padded;     // count rounded up to 32
    int32_t code_offset;// first column of this run in the padded activation buffer (Σ padded of earlier runs)
    int32_t byte_offset;// first byte of this run within a weight row
    int32_t planes;     // 1 (≤ 4-bit codes) or 2 (5–8-bit codes)
    int32_t group;      // weight group: index into a row's scales / zeros
    int32_t block;      // activation block
} cq_run;

/// One activation block: a column range quantized with one scale and zero point per token.
typedef struct {
    int32_t col, count;
    int32_t bits;       // 2…8
    int32_t min_max;    // 1: plain min/max range (0 not forced in); 0: range widened to contain 0
    float clip;         // range multiplier in (0, 1]
} cq_act_block;

/// 1 when the CPU has AVX2 + FMA + F16C (what the fast paths use).
int cq_cpu_has_avx2(void);
/// 1: use the AVX2 paths when the CPU has them (the default); 0: always the scalar references.
void cq_set_simd(int enabled);
int cq_simd_enabled(void);

/// Bytes of one packed row.
int64_t cq_row_bytes(const cq_run *runs, int nruns);
/// Columns of the padded activation buffer.
int64_t cq_padded_cols(const cq_run *runs, int nruns);

/// Σ u per (row, run): sum_u [rows, nruns].
void cq_row_code_sums(const uint8_t *w, int64_t row_bytes, int64_t rows, const cq_run *runs, int nruns, int32_t *sum_u);

/// Quantizes x [tokens, ldx ≥ cols] into a [tokens, padded_cols] (int8 codes in the run layout), and per (token, run)
/// s_a, z' and Σa ([tokens, nruns] each).
void cq_quantize_activations(const float *x, int64_t ldx, int64_t tokens, const cq_act_block *blocks, int nblocks,
                             const cq_run *runs, int nruns, int64_t padded_cols,
                             int8_t *a, float *s_a, int32_t *z_a, int32_t *sum_a);

/// Integer GEMM for rows [r0, r1): y[t, r] (y + t·ldy) as the epilogue above. w [rows, row_bytes]; s_w, z_w
/// [rows, groups]; sum_u [rows, nruns]; a [tokens, padded_cols]; s_a, z_a, sum_a [tokens, nruns].
void cq_gemm_w4a8(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                  const float *s_w, const int32_t *z_w, int groups, const int32_t *sum_u,
                  const int8_t *a, int64_t padded_cols, int64_t tokens,
                  const float *s_a, const int32_t *z_a, const int32_t *sum_a,
                  float *y, int64_t ldy, int64_t r0, int64_t r1);
void cq_gemm_w4a8_ref(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                      const float *s_w, const int32_t *z_w, int groups, const int32_t *sum_u,
                      const int8_t *a, int64_t padded_cols, int64_t tokens,
                      const float *s_a, const int32_t *z_a, const int32_t *sum_a,
                      float *y, int64_t ldy, int64_t r0, int64_t r1);

/// Weight-only product with fp32 activations for rows [r0, r1): y[t, r] = Σ_runs s_w·(Σ u·x − z_w·Σx), fp32
/// accumulation. x [tokens, padded_cols] is the activation gathered into the run layout (zeros in the padding),
/// sum_x [tokens, nruns] its run sums (cq_gather_runs makes both).
void cq_gemv_w4_f32(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                    const float *s_w, const float *z_w, int groups,
                    const float *x, int64_t padded_cols, int64_t tokens, const float *sum_x,
                    float *y, int64_t ldy, int64_t r0, int64_t r1);
void cq_gemv_w4_f32_ref(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                        const float *s_w, const float *z_w, int groups,
                        const float *x, int64_t padded_cols, int64_t tokens, const float *sum_x,
                        float *y, int64_t ldy, int64_t r0, int64_t r1);
/// x [tokens, ldx] → xp [tokens, padded_cols] in the run layout, and sum_x [tokens, nruns].
void cq_gather_runs(const float *x, int64_t ldx, int64_t tokens, const cq_run *runs, int nruns, int64_t padded_cols,
                    float *xp, float *sum_x);

/// Rows [r0, r1) of Ŵ = s_w·(u − z_w) in original column order: out [r1 − r0, cols].
void cq_dequantize_rows(const uint8_t *w, int64_t row_bytes, const cq_run *runs, int nruns,
                        const float *s_w, const float *z_w, int groups, int64_t cols,
                        int64_t r0, int64_t r1, float *out);

/// Int8 rows with one fp32 scale each (embeddings, LM head): Ŵ[r, c] = scale[r]·w[r, c].
/// y[t, r] = scale[r]·Σ_c w[r, c]·x[t, c], rows [r0, r1), fp32 accumulation.
void cq_gemv_q8_f32(const int8_t *w, int64_t cols, const float *scale, const float *x, int64_t ldx, int64_t tokens,
                    float *y, int64_t ldy, int64_t r0, int64_t r1);
void cq_gemv_q8_f32_ref(const int8_t *w, int64_t cols, const float *scale, const float *x, int64_t ldx, int64_t tokens,
                        float *y, int64_t ldy, int64_t r0, int64_t r1);

/// Causal attention of `rows` query rows over a position-major fp32 KV cache, for query heads [h0, h1): the
/// scalar definition of decode attention (the tests' reference). q and ctx [rows, H·hd]; k and v [start + rows, KV·hd]
/// (query head h reads KV head h / (H/KV)); row t sees positions 0 … start + t. scale = 1/√hd; scratch holds
/// start + rows floats.
void cq_attention_f32_ref(const float *q, const float *k, const float *v, float *ctx, int64_t rows, int64_t start,
                          int H, int KV, int hd, float scale, float *scratch, int h0, int h1);

/// fp16 rows (IEEE half bit patterns; the `--embeddings f16` tables) × fp32: y[t, r] = Σ_c w[r, c]·x[t, c], rows
/// [r0, r1), fp32 accumulation.
void cq_gemv_f16_f32(const uint16_t *w, int64_t cols, const float *x, int64_t ldx, int64_t tokens,
                     float *y, int64_t ldy, int64_t r0, int64_t r1);
void cq_gemv_f16_f32_ref(const uint16_t *w, int64_t cols, const float *x, int64_t ldx, int64_t tokens,
                         float *y, int64_t ldy, int64_t r0, int64_t r1);

// ## Packed KV cache
// One (token, KV head) row of hd values is stored as column blocks (cq_act_block; min_max and clip as for
// activations), each quantized with its own fp32 scale s and zero point z exactly as the simulator's per (token, head)
// K/V quantizers, x̂ = s·(q − z). A block of ≤ 4-bit codes takes h = ⌈count/2⌉ bytes, byte j = q(j) | q(j + h) << 4
// (a mask and a shift of one load give both halves in column order); 5–8-bit codes take a byte each. A row: its
// blocks' bytes in order. sz holds (s, z) per (row, block).

/// Bytes of one packed KV row.
int64_t cq_kv_row_bytes(const cq_act_block *blocks, int nblocks);
/// x [rows, hd] → codes [rows, row_bytes] and sz [rows, nblocks, 2].
void cq_kv_quantize(const float *x, int64_t rows, int hd, const cq_act_block *blocks, int nblocks,
                    uint8_t *codes, float *sz);
/// codes, sz → x̂ [rows, hd] (the simulator's fake-quantized values, bit for bit).
void cq_kv_dequantize(const uint8_t *codes, const float *sz, int64_t rows, int hd, const cq_act_block *blocks,
                      int nblocks, float *out);
/// A decode-time view of one layer's cache: fp32 (k, v [positions, KV·hd]; kc = NULL) or packed (kc, vc
/// [positions, KV, row_bytes], ksz, vsz [positions, KV, nblocks, 2], the row blocks kb, vb).
typedef struct {
    const float *k, *v;
    const uint8_t *kc, *vc;
    const float *ksz, *vsz;
    const cq_act_block *kb, *vb;
    int nkb, nvb;
    int kv_heads, head_dim;
} cq_kv_view;

/// One worker's share of decode attention (flash-decoding): positions [p0, p1) for all H heads, row t seeing those
/// ≤ start + t. Per (row, head): the share's max score m, l = Σ e^(s − m) and acc = Σ e^(s − m)·v [rows, H, hd].
/// Each cached row is read (or dequantized) once for the H/KV query heads of its group. scratch holds
/// (H/KV)·(p1 − p0) + hd floats.
void cq_attention_part(const float *q, const cq_kv_view *cache, int64_t rows, int64_t start, int H, float scale,
                       int64_t p0, int64_t p1, float *scratch, float *m, float *l, float *acc);
/// ctx [rows, H·hd] from `parts` (≤ 64) shares: m, l [parts, rows·H], acc [parts, rows·H, hd].
void cq_attention_merge(int parts, int64_t rows, int H, int hd, const float *m, const float *l, const float *acc,
                        float *ctx);

/// The x86 `pause` hint for spin-wait loops (the worker pool's); a no-op elsewhere.
void cq_pause(void);

#endif
