/* GPT-2 decode steps for the CPU: the whole forward pass for a few tokens, in one call.
 *
 * Why C: decoding one token reads every weight once and does little else, so its speed is set by how
 * close the matrix-vector products come to the memory bandwidth and by what happens between them.
 * PyTorch's one-row matmuls stream weights at about half the bandwidth here, and ~200 dispatched ops
 * a token add milliseconds. This file does one token step (for several rows at once, each with its own
 * cache slot and position) as one job for the engine's own threads: dot-product kernels that read each
 * weight row once for all rows, the attention over each row's own cached prefix, LayerNorm, GELU and
 * residual adds, with barriers between phases instead of op dispatch. (Why its own threads and not
 * OpenMP: see "the engine's threads" below.)
 *
 * The math is GPT-2's, as in gpt2/model.py: pre-LN blocks, LayerNorm (eps 1e-5, biased variance),
 * tanh-GELU, scaled dot-product attention with a causal view of the cache, tied or untied head.
 * Weights are row-major [out, in] (the layout torch's own matmuls use too, so one copy serves both), each
 * linear layer in its own precision (an int4 model keeps an int8 head):
 *   fp32  float weights, fp32 activations;
 *   bf16  bf16 weights (uint16 bits). Widened to fp32 in registers (a bf16 is the top half of an fp32)
 *         and multiplied with fp32 activations: only the weights are rounded, and it costs nothing in a
 *         loop that waits on memory. Also on CPUs with AVX512-BF16: vdpbf16ps needs the activations in
 *         bf16 too (split hi + lo to keep their precision: two dot products per weight), which measured
 *         1.6x slower per token than widening on a Sapphire Rapids (docs/engine.md);
 *   f16   IEEE half weights (uint16 bits), widened with vcvtph2ps (F16C) and used exactly as bf16: three
 *         more mantissa bits than bf16 for a narrower range (|w| <= 65504, checked when packing);
 *   int8  int8 weights with one fp32 scale per output row; activations become 16-bit integers with one
 *         scale per group of 64 values (finer than bf16's 8-bit mantissa), so only weights are coarse;
 *         int16 x int16 pair products (vpmaddwd, or vpdpwssd with VNNI) summed exactly in int32 lanes;
 *   int4  4-bit codes with one f16 scale per group of 32 inputs of a row (4.5 bits a weight), two codes
 *         a byte ([out, in / 2]; layout at tile_int4), scales [out, in / 32]; the same 16-bit activation
 *         codes and exact int32 sums as int8, one sum per group of 32.
 * The residual stream, LayerNorm, attention and KV cache are fp32 in every mode.
 *
 * gpt2_linear is the one other entry point: a single packed (bf16/f16/int8/int4) layer over many rows (a
 * blocked GEMM that widens the weight while packing it), which PyTorch's path calls for long prompts.
 *
 * Built at run time by gpt2/engine/build.py for this CPU (-march=native): AVX-512 (F/BW/VL/DQ) or AVX2 +
 * FMA, each with F16C (every CPU with AVX2 has it), gives all five precisions; anything else builds only
 * the entry points below, with gpt2_features() reporting 0, and Python keeps its own path. Every argument is checked again here (Python checks them
 * first, with messages): a refused call returns a negative GPT2_E_* code and touches nothing.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever a struct below, an entry point's signature or the error codes change; gpt2/engine/abi.py
 * holds the same number and will not call a library that reports another. */
#define GPT2_ABI_VERSION 5

/* The instruction set the kernels are written for (AVX-512 or AVX2 + FMA, with F16C for f16 and int4's
 * scales); 0 builds no kernels. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__F16C__)
#define GPT2_ISA 512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define GPT2_ISA 256
#else
#define GPT2_ISA 0
#endif
#if GPT2_ISA
#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#endif

/* A linear layer's precision; gpt2_features() has bit (1 << code) set for each one this build runs. */
enum { PREC_FP32 = 0, PREC_BF16 = 1, PREC_INT8 = 2, PREC_F16 = 3, PREC_INT4 = 4, N_PREC = 5 };
#define GROUP 64  /* int8/int4: activation values per 16-bit scale group; every GPT-2 width is a multiple */
#define GROUP4 32 /* int4: weights of a row per f16 scale (two of them per activation group) */

/* Return codes of gpt2_forward (gpt2/engine/abi.py turns each into a message). */
enum {
    GPT2_OK = 0,
    GPT2_E_NULL = -1,      /* a required pointer is NULL */
    GPT2_E_CONFIG = -2,    /* model sizes this engine does not run */
    GPT2_E_WEIGHTS = -3,   /* a linear layer's shape does not match the model */
    GPT2_E_PRECISION = -4, /* a linear layer's precision is unknown, or not built for this CPU */
    GPT2_E_COUNT = -5,     /* n < 1, or logits_from outside [0, n] */
    GPT2_E_CACHE = -6,     /* the cache's sizes or strides do not fit the model */
    GPT2_E_TOKEN = -7,     /* a token id outside [0, n_vocab) */
    GPT2_E_POSITION = -8,  /* a position outside [0, min(max_len, n_ctx)) */
    GPT2_E_SLOT = -9,      /* a slot outside [0, n_slots) */
    GPT2_E_MEMORY = -10,   /* scratch buffers could not be allocated */
    GPT2_E_THREADS = -11,  /* the engine's threads could not be started */
};

typedef struct {
    const void *w;     /* [out, in] row-major: float, bf16/f16 bits (uint16), int8; int4: [out, in / 2] bytes */
    const void *scale; /* int8: float [out] per-row scales; int4: f16 bits [out, in / 32]; else NULL */
    const float *bias; /* [out] or NULL */
    int64_t out, in;
    int64_t precision; /* PREC_* */
} Linear;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    Linear attn, proj, fc, mlp;
} Layer;

typedef struct {
    int64_t n_layer, n_embd, n_head, n_vocab, n_ctx;
    const float *wte, *wpe, *lnf_w, *lnf_b; /* wte [n_vocab, n_embd], wpe [n_ctx, n_embd] */
    Linear head;
    const Layer *layers;
} Model;

typedef struct {
    float *k, *v;                                   /* fp32, last dimension contiguous */
    int64_t layer_stride, slot_stride, head_stride; /* in floats; a position is head_dim floats */
    int64_t n_layer, n_slots, n_head, max_len, head_dim; /* the shape, checked against the model */
} Cache;

int gpt2_abi_version(void) { return GPT2_ABI_VERSION; }

/* sizeof of each struct above (0 Linear, 1 Layer, 2 Model, 3 Cache), checked against Python's mirrors. */
int64_t gpt2_struct_size(int which) {
    switch (which) {
    case 0: return (int64_t)sizeof(Linear);
    case 1: return (int64_t)sizeof(Layer);
    case 2: return (int64_t)sizeof(Model);
    case 3: return (int64_t)sizeof(Cache);
    default: return -1;
    }
}

/* The instruction-set extensions this build was compiled to use, one bit each (abi.py names them and
 * checks the CPU has them all before calling anything else: a library built with GPT2_NATIVE_MARCH for
 * another CPU is refused with a reason instead of dying on an illegal instruction). */
int64_t gpt2_required_isa(void) {
    int64_t bits = 0;
#if defined(__AVX2__)
    bits |= 1 << 0;
#endif
#if defined(__FMA__)
    bits |= 1 << 1;
#endif
#if defined(__F16C__)
    bits |= 1 << 2;
#endif
#if defined(__BMI2__)
    bits |= 1 << 3;
#endif
#if defined(__AVX512F__)
    bits |= 1 << 4;
#endif
#if defined(__AVX512BW__)
    bits |= 1 << 5;
#endif
#if defined(__AVX512VL__)
    bits |= 1 << 6;
#endif
#if defined(__AVX512DQ__)
    bits |= 1 << 7;
#endif
#if defined(__AVX512BF16__)
    bits |= 1 << 8;
#endif
#if defined(__AVX512VNNI__)
    bits |= 1 << 9;
#endif
#if defined(__AVXVNNI__)
    bits |= 1 << 10;
#endif
#if defined(__AVX512VBMI__)
    bits |= 1 << 11;
#endif
#if defined(__AVX512FP16__)
    bits |= 1 << 12;
#endif
    return bits;
}

/* Vector width in bits of the kernels (512, 256), or 0 where none were built. */
int gpt2_isa(void) { return GPT2_ISA; }

/* Every kernel build runs all five precisions (none needs more than AVX2 + FMA + F16C). */
int gpt2_features(void) { return GPT2_ISA ? (1 << N_PREC) - 1 : 0; }

#if GPT2_ISA

/* ---------------------------------------------------------------- vectors of either width
 * Every kernel is written once over these: vf holds VL floats, vi 2*VL int16 (or VL int32) values. */
#if GPT2_ISA == 512
#define VL 16
typedef __m512 vf;
typedef __m512i vi;
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vzero _mm512_setzero_ps
#define vset1 _mm512_set1_ps
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmul _mm512_mul_ps
#define vdiv _mm512_div_ps
#define vmin _mm512_min_ps
#define vmax _mm512_max_ps
#define vabs _mm512_abs_ps
#define vfma _mm512_fmadd_ps   /* a * b + c */
#define vfnma _mm512_fnmadd_ps /* c - a * b */
#define vsum _mm512_reduce_add_ps
#define vhmax _mm512_reduce_max_ps
#define vround(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vpow2(p, n) _mm512_scalef_ps(p, n) /* p * 2^n */
/* VL bf16 values (uint16 bits) as fp32: zero-extend each to 32 bits and move it to the top half. */
#define vload_bf16(p)                                                                                        \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define vload_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p))) /* VL f16 as fp32 */
#define vizero _mm512_setzero_si512
#define vload_i16(p) _mm512_loadu_si512((const void *)(p))                           /* 2*VL int16 */
#define vload_i8_as_i16(p) _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(p))) /* 2*VL int8 */
#define vload_u8_as_i16(p) _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p))) /* 2*VL uint8 */
#define vand_i _mm512_and_si512
#define vset1_i16 _mm512_set1_epi16
#define vmadd_i16 _mm512_madd_epi16 /* a0*b0 + a1*b1 per int32 lane */
/* The first n (<= VL) floats / f16 values at p, zeros after (nothing past them is read); and the first
 * n / 2 floats, each twice: p0 p0 p1 p1 ... */
#define vload_n(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), p)
#define vload_f16_n(p, n) _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)((1u << (n)) - 1), p))
#define vload_twice_n(p, n)                                                                                 \
    _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0),                 \
                          _mm512_castps256_ps512(_mm256_maskz_loadu_ps((__mmask8)((1u << ((n) / 2)) - 1), p)))
#define vcvt_i32 _mm512_cvtepi32_ps
#if defined(__AVX512VNNI__)
#define vdot_i16(acc, a, b) _mm512_dpwssd_epi32(acc, a, b) /* acc + a0*b0 + a1*b1 per int32 lane */
#else
#define vdot_i16(acc, a, b) _mm512_add_epi32(acc, _mm512_madd_epi16(a, b))
#endif
/* VL int32 -> VL int16 stored at p (values already within int16). */
static inline void vstore_i32_as_i16(int16_t *p, vi c) { _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(c)); }
#define vcvt_f32_i32 _mm512_cvtps_epi32
#define vclamp_i32(c, lim) _mm512_max_epi32(_mm512_min_epi32(c, _mm512_set1_epi32(lim)), _mm512_set1_epi32(-(lim)))
#else
#define VL 8
typedef __m256 vf;
typedef __m256i vi;
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vzero _mm256_setzero_ps
#define vset1 _mm256_set1_ps
#define vadd _mm256_add_ps
#define vsub _mm256_sub_ps
#define vmul _mm256_mul_ps
#define vdiv _mm256_div_ps
#define vmin _mm256_min_ps
#define vmax _mm256_max_ps
#define vabs(x) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x)
#define vfma _mm256_fmadd_ps
#define vfnma _mm256_fnmadd_ps
#define vround(x) _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline float vsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float vhmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* p * 2^n for integral n in [-126, 127] (vexp's clamp keeps it there): build 2^n in the exponent bits */
static inline __m256 vpow2(__m256 p, __m256 n) {
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#define vload_bf16(p)                                                                                        \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define vload_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define vizero _mm256_setzero_si256
#define vload_i16(p) _mm256_loadu_si256((const __m256i *)(p))
#define vload_i8_as_i16(p) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p)))
#define vload_u8_as_i16(p) _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p)))
#define vand_i _mm256_and_si256
#define vset1_i16 _mm256_set1_epi16
#define vmadd_i16 _mm256_madd_epi16
/* lanes [0, n) all ones, the rest zeros: a mask for maskload */
#define vmask_n(n) _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define vload_n(p, n) _mm256_maskload_ps(p, vmask_n(n))
#define vload_f16_n(p, n) _mm256_cvtph_ps(_mm_maskload_epi32((const int *)(p), _mm256_castsi256_si128(vmask_n((n) / 2))))
#define vload_twice_n(p, n)                                                                                 \
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_maskload_ps(p, _mm256_castsi256_si128(vmask_n((n) / 2)))), \
                             _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0))
#define vcvt_i32 _mm256_cvtepi32_ps
#if defined(__AVXVNNI__)
#define vdot_i16(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#else
#define vdot_i16(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#endif
static inline void vstore_i32_as_i16(int16_t *p, vi c) {
    _mm_storeu_si128((__m128i *)p, _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1)));
}
#define vcvt_f32_i32 _mm256_cvtps_epi32
#define vclamp_i32(c, lim) _mm256_max_epi32(_mm256_min_epi32(c, _mm256_set1_epi32(lim)), _mm256_set1_epi32(-(lim)))
#endif

/* ---------------------------------------------------------------- small vector helpers */

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); } /* an f16 (its bits) as fp32, exactly */

/* e^x per lane: x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^7 (relative error below
 * 1e-8 on that range), then scaled by 2^n. Inputs are clamped to [-87, 88]: e^-87 ~ 1.6e-38 stands in
 * for anything smaller (a softmax weight or GELU term that small changes nothing). */
static inline vf vexp(vf x) {
    x = vmax(vmin(x, vset1(88.0f)), vset1(-87.0f));
    vf n = vround(vmul(x, vset1(1.44269504088896341f)));
    vf r = vfnma(n, vset1(0.693145751953125f), x); /* ln2, split in two */
    r = vfnma(n, vset1(1.428606765330187045e-06f), r);
    vf p = vset1(1.0f / 5040);
    p = vfma(p, r, vset1(1.0f / 720));
    p = vfma(p, r, vset1(1.0f / 120));
    p = vfma(p, r, vset1(1.0f / 24));
    p = vfma(p, r, vset1(1.0f / 6));
    p = vfma(p, r, vset1(0.5f));
    p = vfma(p, r, vset1(1.0f));
    p = vfma(p, r, vset1(1.0f));
    return vpow2(p, n);
}

/* GELU, tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3); written as x * sigmoid(2u)
 * = x / (1 + e^(-2u)), which is the same function and needs one exp. */
static inline vf vgelu(vf x) {
    vf x3 = vmul(vmul(x, x), x);
    vf u = vmul(vset1(0.7978845608028654f), vfma(vset1(0.044715f), x3, x));
    return vdiv(x, vadd(vset1(1.0f), vexp(vmul(u, vset1(-2.0f)))));
}

/* ---------------------------------------------------------------- activations, per precision */

/* A linear layer's input rows, in the form its kernel consumes. */
typedef struct {
    const float *f32; /* fp32, bf16, f16: the rows as they are, [rows, in] */
    int16_t *q;       /* int8, int4: 16-bit codes, [rows, in] */
    float *qs;        /* int8, int4: one scale per row and group, [rows, in / GROUP] */
    float *qsum;      /* int4: the sum of each row's codes per group of 32 (exact), [rows, in / GROUP4] */
    int64_t in;
} Act;

/* Convert row r of x (fp32, length in) into act's buffers for a layer of `precision` (the float ones
 * read x itself). int8 and int4: per group of 64, scale = max|x| / 32767 and code = round(x / scale), so
 * the largest value maps to +-32767 and no code leaves [-32767, 32767]. */
static void prepare_row(int64_t precision, const float *x, Act *act, int64_t r) {
    const int64_t in = act->in;
    if (precision == PREC_INT8 || precision == PREC_INT4) {
        int16_t *q = act->q + r * in;
        float *qs = act->qs + r * (in / GROUP);
        for (int64_t g = 0; g < in / GROUP; g++) {
            const float *xg = x + g * GROUP;
            vf m = vzero();
            for (int j = 0; j < GROUP; j += VL) m = vmax(m, vabs(vload(xg + j)));
            const float amax = vhmax(m);
            const float scale = amax > 0 ? amax / 32767.0f : 1.0f;
            const vf inv = vset1(1.0f / scale);
            for (int j = 0; j < GROUP; j += VL)
                vstore_i32_as_i16(q + g * GROUP + j, vclamp_i32(vcvt_f32_i32(vmul(vload(xg + j), inv)), 32767));
            qs[g] = scale;
        }
    }
    if (precision == PREC_INT4) {
        const int16_t *q = act->q + r * in;
        for (int64_t g = 0; g < in / GROUP4; g++) {
            int32_t sum = 0; /* |sum| <= 32 * 32767: exact in fp32 too */
            for (int j = 0; j < GROUP4; j++) sum += q[g * GROUP4 + j];
            act->qsum[r * (in / GROUP4) + g] = (float)sum;
        }
    }
}

/* ---------------------------------------------------------------- dot-product kernels
 * A tile: NO consecutive weight rows against NB input rows (NO, NB <= 4, compile-time constants after
 * inlining), one sum per (weight row, input row). Each sum is one chain of multiply-adds in the order of
 * k, whatever NO and NB are: a token's logits do not depend on what else is in the batch (or on the
 * thread count: each output is computed by one thread), so batched decoding gives bit-identical text.
 * One input row (decoding alone) uses NO = 1: the matrix is then read as one sequential stream, which
 * the hardware prefetcher follows best (4 weight rows read side by side are 4 short streams: 30 vs 45
 * GB/s measured on 768-wide rows). Several input rows use NO = 4, so each loaded activation chunk feeds
 * 4 weight rows (the batched step is compute-bound), with the next tile prefetched. */

#define PREFETCH_NEXT(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
/* How far ahead the one-row stream asks for weights: the hardware prefetcher alone left bf16 and int8
 * ~15-20% slower per token (CPU time, AVX2 Zen 3, docs/engine.md); 2 KB and 4 KB measured alike. */
#define STREAM_AHEAD 2048

/* fp32 activations against weights of `precision` fp32, or bf16 / f16 widened in registers. */
static inline __attribute__((always_inline)) void tile_wide(const void *W, int precision, const float *X,
                                                            int64_t in, int NO, int NB, float out[4][4]) {
    const size_t esize = precision == PREC_FP32 ? 4 : 2;
    vf a[4][4];
    for (int i = 0; i < NO; i++)
        for (int b = 0; b < NB; b++) a[i][b] = vzero();
    for (int64_t k = 0; k < in; k += VL) {
        vf x[4];
        for (int b = 0; b < NB; b++) x[b] = vload(X + b * in + k);
        for (int i = 0; i < NO; i++) {
            if (NO > 1) PREFETCH_NEXT((const char *)W + ((i + NO) * in + k) * esize);
            if (NO == 1 && (k * esize) % 64 == 0) PREFETCH_NEXT((const char *)W + k * esize + STREAM_AHEAD);
            vf w = precision == PREC_BF16  ? vload_bf16((const uint16_t *)W + i * in + k)
                   : precision == PREC_F16 ? vload_f16((const uint16_t *)W + i * in + k)
                                           : vload((const float *)W + i * in + k);
            for (int b = 0; b < NB; b++) a[i][b] = vfma(w, x[b], a[i][b]);
        }
    }
    for (int i = 0; i < NO; i++)
        for (int b = 0; b < NB; b++) out[i][b] = vsum(a[i][b]);
}

/* int8 weights x 16-bit activation codes: vdot_i16 adds pairs of int16 products into int32 lanes,
 * exactly; each group of 64 values goes to fp32 with its activation scale before the next. No int32
 * overflow: a lane sums at most the group's 64 products, |w| <= 127 and |q| <= 32767, and
 * 64 * 127 * 32767 = 266,331,776 < 2^31. Integer sums are exact, so vpdpwssd (VNNI) and
 * vpmaddwd + vpaddd give the same bits. The caller applies the weight row's scale. */
static inline __attribute__((always_inline)) void tile_int8(const int8_t *W, const int16_t *Q, const float *S,
                                                            int64_t in, int NO, int NB, float out[4][4]) {
    enum { CHUNKS = GROUP / (2 * VL) }; /* int16 vectors per group */
    vf a[4][4];
    for (int i = 0; i < NO; i++)
        for (int b = 0; b < NB; b++) a[i][b] = vzero();
    const int64_t ng = in / GROUP;
    for (int64_t g = 0; g < ng; g++) {
        const int64_t k = g * GROUP;
        for (int i = 0; i < NO; i++) {
            if (NO > 1) PREFETCH_NEXT(W + (i + NO) * in + k);
            if (NO == 1) PREFETCH_NEXT(W + k + STREAM_AHEAD); /* a group is one 64-byte line */
            vi w[CHUNKS];
            for (int j = 0; j < CHUNKS; j++) w[j] = vload_i8_as_i16(W + i * in + k + j * 2 * VL);
            for (int b = 0; b < NB; b++) {
                vi s = vizero();
                for (int j = 0; j < CHUNKS; j++) s = vdot_i16(s, w[j], vload_i16(Q + b * in + k + j * 2 * VL));
                a[i][b] = vfma(vcvt_i32(s), vset1(S[b * ng + g]), a[i][b]);
            }
        }
    }
    for (int i = 0; i < NO; i++)
        for (int b = 0; b < NB; b++) out[i][b] = vsum(a[i][b]);
}

/* int4 weights x 16-bit activation codes. Each 64 inputs of a row are 32 bytes: byte j holds the code of
 * input j in its low nibble and that of input j + 32 in its high one, each as code + 8 (0..15 for -8..7).
 * The loop is bound by the vector ALU ports, not by memory: 512-bit operations have two ports, and
 * multiplies, conversions and shifts share one of them. So a block costs one zero-extending load (2*VL
 * bytes as int16), an AND for the low codes (inputs k..k+31, in order: no shuffle) and an AND with 0xF0
 * for the high ones (k+32..k+63, each 16x its code: no shift; the group's scale carries the 1/16). Per
 * group one exact int32 sum (pair sums <= 2 * 240 * 32767 < 2^24, so its fp32 conversion is exact too)
 * goes to fp32 times (weight scale x activation scale), precomputed for a chunk of groups in `cs` and
 * broadcast from there (a load, not a shuffle); even and odd groups have their own accumulators (one
 * multiply-add per 64 inputs on each chain). The codes' offset, sum (c + 8) q = sum c q + 8 sum q, is
 * taken back once per chunk from the rows' group sums (`qsum`): one multiply-add per VL groups. */
#define INT4_CHUNK 64 /* groups of 32 (2048 inputs) whose scales are combined at a time */
static inline __attribute__((always_inline)) void tile_int4(const uint8_t *W, const uint16_t *WS, const Act *A,
                                                            int64_t b0, int64_t in, int NO, int NB,
                                                            float out[4][4]) {
    enum { CHUNKS = GROUP4 / (2 * VL) }; /* int16 vectors per group of 32 */
    const int64_t nblocks = in / GROUP, row_bytes = in / 2, row_scales = in / GROUP4;
    const int16_t *Q = A->q + b0 * in;
    const vi low = vset1_i16(0x0F), high = vset1_i16(0xF0);
    static const float LOHI[16] = {1, 0.0625f, 1, 0.0625f, 1, 0.0625f, 1, 0.0625f,
                                   1, 0.0625f, 1, 0.0625f, 1, 0.0625f, 1, 0.0625f};
    const vf lohi = vload(LOHI); /* even (low) groups' scales x 1, odd (high) ones' x 1/16: exact */
    float cs[4][4][INT4_CHUNK];
    vf a[4][4][2], offset[4][4];
    for (int i = 0; i < NO; i++)
        for (int b = 0; b < NB; b++) a[i][b][0] = a[i][b][1] = offset[i][b] = vzero();
    for (int64_t c0 = 0; c0 < row_scales; c0 += INT4_CHUNK) { /* row_scales is even, and so is c0 */
        const int64_t nc = row_scales - c0 < INT4_CHUNK ? row_scales - c0 : INT4_CHUNK;
        for (int i = 0; i < NO; i++)
            for (int b = 0; b < NB; b++) {
                const uint16_t *ws = WS + i * row_scales + c0;
                const float *as = A->qs + (b0 + b) * nblocks + c0 / 2; /* one per two groups */
                const float *qsum = A->qsum + (b0 + b) * row_scales + c0;
                for (int64_t j = 0; j < nc; j += VL) { /* the last vector may be partial: zeros past nc */
                    const int n = nc - j < VL ? (int)(nc - j) : VL;
                    const vf c = vmul(vload_f16_n(ws + j, n), vload_twice_n(as + j / 2, n));
                    vstore(cs[i][b] + j, vmul(c, lohi));
                    offset[i][b] = vfma(c, vload_n(qsum + j, n), offset[i][b]);
                }
            }
        for (int64_t g = c0 / 2; g < (c0 + nc) / 2; g++) { /* blocks of 64 inputs: groups 2g, 2g + 1 */
            const int64_t k = g * GROUP, j = 2 * g - c0;
            for (int i = 0; i < NO; i++) {
                const uint8_t *w = W + i * row_bytes + g * (GROUP / 2);
                if (NO > 1 && g % 2 == 0) PREFETCH_NEXT(w + NO * row_bytes);
                if (NO == 1 && g % 2 == 0) PREFETCH_NEXT(w + STREAM_AHEAD); /* two blocks a line */
                vi lo[CHUNKS], hi[CHUNKS];
                for (int c = 0; c < CHUNKS; c++) {
                    const vi x = vload_u8_as_i16(w + c * 2 * VL);
                    lo[c] = vand_i(x, low);
                    hi[c] = vand_i(x, high);
                }
                for (int b = 0; b < NB; b++) {
                    const int16_t *q = Q + b * in + k;
                    vi s0 = vmadd_i16(lo[0], vload_i16(q)), s1 = vmadd_i16(hi[0], vload_i16(q + GROUP4));
                    for (int c = 1; c < CHUNKS; c++) {
                        s0 = vdot_i16(s0, lo[c], vload_i16(q + c * 2 * VL));
                        s1 = vdot_i16(s1, hi[c], vload_i16(q + GROUP4 + c * 2 * VL));
                    }
                    a[i][b][0] = vfma(vcvt_i32(s0), vset1(cs[i][b][j]), a[i][b][0]);
                    a[i][b][1] = vfma(vcvt_i32(s1), vset1(cs[i][b][j + 1]), a[i][b][1]);
                }
            }
        }
    }
    for (int i = 0; i < NO; i++)
        for (int b = 0; b < NB; b++) out[i][b] = vsum(vfnma(vset1(8.0f), offset[i][b], vadd(a[i][b][0], a[i][b][1])));
}

/* out[i][b] = W[o + i] . x[b0 + b] in L's precision (int8: times the row scale; bias added by the caller). */
static inline __attribute__((always_inline)) void
tile(const Linear *L, int64_t o, const Act *a, int64_t b0, int NO, int NB, float out[4][4]) {
    const int64_t in = L->in;
    switch (L->precision) {
    case PREC_BF16:
    case PREC_F16:
        tile_wide((const uint16_t *)L->w + o * in, (int)L->precision, a->f32 + b0 * in, in, NO, NB, out);
        break;
    case PREC_INT8:
        tile_int8((const int8_t *)L->w + o * in, a->q + b0 * in, a->qs + b0 * (in / GROUP), in, NO, NB, out);
        for (int i = 0; i < NO; i++)
            for (int b = 0; b < NB; b++) out[i][b] *= ((const float *)L->scale)[o + i];
        break;
    case PREC_INT4:
        tile_int4((const uint8_t *)L->w + o * (in / 2), (const uint16_t *)L->scale + o * (in / GROUP4), a, b0, in,
                  NO, NB, out);
        break;
    default:
        tile_wide((const float *)L->w + o * in, PREC_FP32, a->f32 + b0 * in, in, NO, NB, out);
    }
}

/* Four weight rows against NB input rows, in tiles of as many weight rows as the registers hold: 4 x 4
 * accumulators + inputs fit AVX-512's 32 registers, where int4's two accumulators per sum take two tiles
 * of 2 rows; AVX2 has 16 registers: tiles of 2 rows, and of 1 for int4. Each (weight row, input row) sum is
 * the same chain whatever the tile, so the results are the same bits. */
static inline __attribute__((always_inline)) void tile_rows(const Linear *L, int64_t o, const Act *a, int64_t b0,
                                                            int NO, int NB, float out[4][4]) {
    for (int r = 0; r < 4; r += NO) {
        float part[4][4] = {{0}};
        tile(L, o + r, a, b0, NO, NB, part);
        for (int i = 0; i < NO; i++)
            for (int b = 0; b < 4; b++) out[r + i][b] = part[i][b];
    }
}

static inline __attribute__((always_inline)) void
tile4(const Linear *L, int64_t o, const Act *a, int64_t b0, int NB, float out[4][4]) {
    const int int4 = L->precision == PREC_INT4;
#if GPT2_ISA == 512
    if (int4)
        tile_rows(L, o, a, b0, 2, NB, out);
    else
        tile(L, o, a, b0, 4, NB, out);
#else
    if (int4)
        tile_rows(L, o, a, b0, 1, NB, out);
    else
        tile_rows(L, o, a, b0, 2, NB, out);
#endif
}

/* What happens to y = x W^T + bias before it is stored into Y[b, o]. */
enum { EPI_STORE = 0, EPI_ADD = 1 };

/* Thread t's share [*lo, *hi) of n iterations cut into nt contiguous ranges. */
static void share(int64_t n, int t, int nt, int64_t *lo, int64_t *hi) {
    const int64_t q = n / nt, r = n % nt;
    *lo = t * q + (t < r ? t : r);
    *hi = *lo + q + (t < r ? 1 : 0);
}

/* Y[b, o] (row stride ldy) for rows [0, nrows) and every output; thread `me` of nt computes its own
 * contiguous range of outputs (no barrier at the end). */
static void linear_rows(const Linear *L, const Act *a, int64_t nrows, float *Y, int64_t ldy, int epilogue, int me,
                        int nt) {
    int64_t lo, hi;
    share((L->out + 3) / 4, me, nt, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        const int64_t o = 4 * t;
        const int NO = L->out - o >= 4 ? 4 : (int)(L->out - o);
        for (int64_t b0 = 0; b0 < nrows; b0 += 4) {
            const int64_t left = nrows - b0;
            float r[4][4] = {{0}};
            if (left == 1 || NO < 4) { /* one weight row at a time: a sequential stream */
                for (int i = 0; i < NO; i++) {
                    float r1[4][4] = {{0}};
                    if (left >= 4)
                        tile(L, o + i, a, b0, 1, 4, r1);
                    else if (left == 3)
                        tile(L, o + i, a, b0, 1, 3, r1);
                    else if (left == 2)
                        tile(L, o + i, a, b0, 1, 2, r1);
                    else
                        tile(L, o + i, a, b0, 1, 1, r1);
                    for (int b = 0; b < 4; b++) r[i][b] = r1[0][b];
                }
            } else if (left >= 4) { /* constant NO, NB in each call: each instance fully unrolled */
                tile4(L, o, a, b0, 4, r);
            } else if (left == 3) {
                tile4(L, o, a, b0, 3, r);
            } else {
                tile4(L, o, a, b0, 2, r);
            }
            for (int i = 0; i < NO; i++) {
                const float bias = L->bias ? L->bias[o + i] : 0.0f;
                for (int b = 0; b < 4 && b < left; b++) {
                    float *dst = Y + (b0 + b) * ldy + o + i;
                    *dst = (epilogue == EPI_ADD ? *dst : 0.0f) + (r[i][b] + bias);
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- LayerNorm, attention */

static void layer_norm_row(const float *x, const float *w, const float *b, float *y, int64_t C) {
    vf s = vzero();
    for (int64_t k = 0; k < C; k += VL) s = vadd(s, vload(x + k));
    const float mean = vsum(s) / (float)C;
    const vf m = vset1(mean);
    vf v = vzero();
    for (int64_t k = 0; k < C; k += VL) {
        vf d = vsub(vload(x + k), m);
        v = vfma(d, d, v);
    }
    const float var = vsum(v) / (float)C; /* biased, as GPT-2's */
    const vf inv = vset1(1.0f / sqrtf(var + 1e-5f));
    for (int64_t k = 0; k < C; k += VL) {
        vf d = vmul(vsub(vload(x + k), m), inv);
        vstore(y + k, vfma(d, vload(w + k), vload(b + k)));
    }
}

/* One head of one row: q (hs floats) against keys/values at positions [0, pos] of that row's slot.
 * `scores` has room for pos + 1 + VL floats. */
static void attend_head(const float *q, const float *K, const float *V, int64_t pos, int64_t hs,
                        float *scores, float *out) {
    const float scale = 1.0f / sqrtf((float)hs);
    float mx = -INFINITY;
    for (int64_t t = 0; t <= pos; t++) {
        const float *kt = K + t * hs;
        vf s = vzero();
        for (int64_t d = 0; d < hs; d += VL) s = vfma(vload(q + d), vload(kt + d), s);
        float v = vsum(s) * scale;
        scores[t] = v;
        mx = v > mx ? v : mx;
    }
    const int64_t n = pos + 1;
    /* Pad to whole vectors with the maximum's value: those lanes are exponentiated but never used. */
    for (int64_t t = n; t < (n + VL - 1) / VL * VL; t++) scores[t] = mx;
    const vf m = vset1(mx);
    float sum = 0.0f;
    for (int64_t t = 0; t < n; t += VL) {
        vf e = vexp(vsub(vload(scores + t), m));
        vstore(scores + t, e);
        if (t + VL <= n) {
            sum += vsum(e);
        } else {
            for (int64_t u = t; u < n; u++) sum += scores[u];
        }
    }
    const float inv = 1.0f / sum;
    vf acc[64 / VL];
    const int nd = (int)(hs / VL); /* head_dim is 64 in every GPT-2 (<= 64 required by the caller) */
    for (int d = 0; d < nd; d++) acc[d] = vzero();
    for (int64_t u = 0; u < n; u++) {
        const vf p = vset1(scores[u]);
        const float *vt = V + u * hs;
        for (int d = 0; d < nd; d++) acc[d] = vfma(p, vload(vt + VL * d), acc[d]);
    }
    for (int d = 0; d < nd; d++) vstore(out + VL * d, vmul(acc[d], vset1(inv)));
}

/* ---------------------------------------------------------------- scratch memory */

static void *alloc(size_t n) {
    size_t size = (n + 63) / 64 * 64;
    return aligned_alloc(64, size ? size : 64);
}

/* ---------------------------------------------------------------- the engine's threads
 * Why not OpenMP for the step: libgomp keeps a team of threads per calling thread, and once a process
 * holds more OpenMP threads than CPUs (a web server that runs PyTorch on a second thread does) its
 * barriers spin ~100 times and then sleep in the kernel. A decode step has ~120 barriers a few hundred
 * microseconds apart, and a futex sleep and wake-up costs tens of microseconds (more in a VM). These
 * threads are one pool for the whole process, whoever calls: a waiting thread spins for SPIN_NS, which
 * covers a step's phases and the sampling between two decode steps, then sleeps; with more threads than
 * CPUs it sleeps at once (spinning would take the CPU from the thread it waits for). One job runs at a
 * time: a second caller waits on the lock (on a small CPU two jobs at once only slow each other).
 * gpt2_linear keeps OpenMP: PyTorch calls it between its own OpenMP ops, whose threads are awake then. */

#define SPIN_NS 2000000 /* 2 ms: longer than sampling a token between two decode steps */
#define MAX_THREADS 256

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Wait until *word != value: spin for up to spin_ns, then sleep on the word (see wake_all). */
static void wait_change(atomic_uint *word, unsigned value, atomic_uint *sleepers, uint64_t spin_ns) {
    uint64_t deadline = 0;
    for (unsigned i = 1; spin_ns; i++) {
        if (atomic_load_explicit(word, memory_order_acquire) != value) return;
        _mm_pause();
        if (i % 256 == 0) { /* the clock now and then: a pause takes ~10 to ~150 cycles, by CPU */
            const uint64_t t = now_ns();
            if (!deadline)
                deadline = t + spin_ns;
            else if (t > deadline)
                break;
        }
    }
    /* sequentially consistent: either the waker sees this sleeper, or this load sees the new value */
    atomic_fetch_add(sleepers, 1);
    while (atomic_load(word) == value) syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
    atomic_fetch_sub(sleepers, 1);
}

/* After changing *word: wake whoever sleeps on it. */
static void wake_all(atomic_uint *word, atomic_uint *sleepers) {
    if (atomic_load(sleepers)) syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

typedef void (*JobFn)(void *arg, int me, int nt);

static struct {
    pthread_mutex_t lock; /* held by the caller for a whole job */
    pid_t pid;            /* the process the workers belong to (a forked child has none) */
    int nworkers;         /* started so far; worker i (1-based) takes part in jobs with nt > i */
    int ncpus;            /* CPUs this process may run on */
    JobFn fn;             /* the current job, published by bumping epoch */
    void *arg;
    int nt;
    uint64_t spin_ns;                      /* how long this job's threads spin at a wait */
    atomic_uint epoch, epoch_sleepers;     /* bumped to start a job */
    atomic_uint pending, pending_sleepers; /* workers still in the current job */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
    atomic_uint arrived, gen, sleepers;
} Barrier;

/* All nt threads of the job reach this point before any goes on (and then see each other's writes). */
static void barrier_wait(Barrier *b, int nt) {
    if (nt == 1) return;
    const unsigned gen = atomic_load_explicit(&b->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == (unsigned)nt - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_fetch_add(&b->gen, 1);
        wake_all(&b->gen, &b->sleepers);
    } else {
        wait_change(&b->gen, gen, &b->sleepers, pool.spin_ns);
    }
}

typedef struct {
    int id;
    unsigned epoch; /* the epoch when it was started: it waits for the next */
} WorkerStart;

static void *worker_main(void *p) {
    const WorkerStart start = *(WorkerStart *)p;
    free(p);
    unsigned epoch = start.epoch;
    uint64_t spin = SPIN_NS;
    for (;;) {
        wait_change(&pool.epoch, epoch, &pool.epoch_sleepers, spin);
        epoch = atomic_load_explicit(&pool.epoch, memory_order_acquire);
        if (start.id >= pool.nt) { /* a smaller job: not needed, and not likely to be next time */
            spin = 0;
            continue;
        }
        spin = pool.spin_ns;
        pool.fn(pool.arg, start.id, pool.nt);
        if (atomic_fetch_sub(&pool.pending, 1) == 1) wake_all(&pool.pending, &pool.pending_sleepers);
    }
    return NULL;
}

/* Start workers until there are nt - 1 (the caller holds the lock). 0 if the system refuses a thread. */
static int grow(int nt) {
    if (pool.pid != getpid()) { /* first use, or a forked child: the parent's workers are not here */
        pool.pid = getpid();
        pool.nworkers = 0;
        cpu_set_t cpus;
        pool.ncpus = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    }
    while (pool.nworkers < nt - 1) {
        WorkerStart *ws = malloc(sizeof *ws);
        if (!ws) return 0;
        ws->id = pool.nworkers + 1;
        ws->epoch = atomic_load(&pool.epoch);
        pthread_attr_t attr;
        pthread_t thread;
        sigset_t all, old; /* signals go to the caller's threads (Python's), never to these */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int err = pthread_create(&thread, &attr, worker_main, ws);
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (err) {
            free(ws);
            return 0;
        }
        pool.nworkers++;
    }
    return 1;
}

/* In a child forked while some thread held the lock: a fresh lock, and no workers (grow starts them). */
static void after_fork_in_child(void) {
    pthread_mutex_init(&pool.lock, NULL);
    pool.pid = 0;
    atomic_store(&pool.epoch_sleepers, 0);
    atomic_store(&pool.pending_sleepers, 0);
}

static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

static void install_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_in_child); }

/* fn(arg, me, nt) on nt threads (the caller is thread 0); returns when all are done. 0 or a code. */
static int parallel(JobFn fn, void *arg, int nt) {
    if (nt <= 1) {
        fn(arg, 0, 1);
        return GPT2_OK;
    }
    pthread_once(&fork_handler_once, install_fork_handler);
    pthread_mutex_lock(&pool.lock);
    if (!grow(nt)) {
        pthread_mutex_unlock(&pool.lock);
        return GPT2_E_THREADS;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.nt = nt;
    pool.spin_ns = nt <= pool.ncpus ? SPIN_NS : 0;
    atomic_store(&pool.pending, (unsigned)nt - 1);
    atomic_fetch_add(&pool.epoch, 1); /* publishes the job */
    wake_all(&pool.epoch, &pool.epoch_sleepers);
    fn(arg, 0, nt);
    unsigned left;
    while ((left = atomic_load(&pool.pending)) != 0)
        wait_change(&pool.pending, left, &pool.pending_sleepers, pool.spin_ns);
    pthread_mutex_unlock(&pool.lock);
    return GPT2_OK;
}

/* ---------------------------------------------------------------- the step */

typedef struct {
    const Model *m;
    const Cache *c;
    int64_t n, logits_from;
    const int64_t *tokens, *positions, *slots;
    float *logits, *x, *h, *qkv, *y, *scores;
    const Act *act;
    atomic_llong *next_head; /* per layer: the attention's next (row, head) task */
    Barrier bar;
} Step;

/* The step itself, as thread `me` of nt (buffers allocated by gpt2_forward). */
static void step_job(void *arg, int me, int nt) {
    Step *s = arg;
    const Model *m = s->m;
    const Cache *c = s->c;
    const int64_t n = s->n, *tokens = s->tokens, *positions = s->positions, *slots = s->slots;
    float *x = s->x, *h = s->h, *qkv = s->qkv, *y = s->y;
    const int64_t C = m->n_embd, nh = m->n_head, hs = C / nh, F4 = m->layers[0].mlp.in;
    float *my_scores = s->scores + (size_t)me * (c->max_len + 16);
    Act a = *s->act; /* per-thread copy of the pointers; `in` and `f32` set per linear */
    int64_t lo, hi; /* this thread's rows of the row-wise phases */
    share(n, me, nt, &lo, &hi);

    for (int64_t i = lo; i < hi; i++)
        for (int64_t k = 0; k < C; k++) x[i * C + k] = m->wte[tokens[i] * C + k] + m->wpe[positions[i] * C + k];

    for (int64_t l = 0; l < m->n_layer; l++) {
        const Layer *L = &m->layers[l];
        float *Kl = c->k + l * c->layer_stride, *Vl = c->v + l * c->layer_stride;

        a.in = C;
        a.f32 = h;
        for (int64_t i = lo; i < hi; i++) { /* the same rows as the embedding: no barrier between */
            layer_norm_row(x + i * C, L->ln1_w, L->ln1_b, h + i * C, C);
            prepare_row(L->attn.precision, h + i * C, &a, i);
        }
        barrier_wait(&s->bar, nt);
        linear_rows(&L->attn, &a, n, qkv, 3 * C, EPI_STORE, me, nt);
        barrier_wait(&s->bar, nt);
        /* every row's keys and values go into the cache before anyone attends (a prompt chunk reads its
         * own earlier tokens) */
        for (int64_t i = lo; i < hi; i++)
            for (int64_t hd = 0; hd < nh; hd++) {
                const int64_t off = slots[i] * c->slot_stride + hd * c->head_stride + positions[i] * hs;
                memcpy(Kl + off, qkv + i * 3 * C + C + hd * hs, sizeof(float) * hs);
                memcpy(Vl + off, qkv + i * 3 * C + 2 * C + hd * hs, sizeof(float) * hs);
            }
        barrier_wait(&s->bar, nt);
        /* heads taken one at a time: a prompt chunk's rows attend over prefixes of different lengths */
        for (int64_t t; (t = atomic_fetch_add_explicit(&s->next_head[l], 1, memory_order_relaxed)) < n * nh;) {
            const int64_t i = t / nh, hd = t % nh;
            const int64_t base = slots[i] * c->slot_stride + hd * c->head_stride;
            attend_head(qkv + i * 3 * C + hd * hs, Kl + base, Vl + base, positions[i], hs, my_scores,
                        y + i * C + hd * hs);
        }
        barrier_wait(&s->bar, nt);
        a.f32 = y;
        for (int64_t i = lo; i < hi; i++) prepare_row(L->proj.precision, y + i * C, &a, i);
        barrier_wait(&s->bar, nt);
        linear_rows(&L->proj, &a, n, x, C, EPI_ADD, me, nt);
        barrier_wait(&s->bar, nt);

        a.f32 = h;
        for (int64_t i = lo; i < hi; i++) {
            layer_norm_row(x + i * C, L->ln2_w, L->ln2_b, h + i * C, C);
            prepare_row(L->fc.precision, h + i * C, &a, i);
        }
        barrier_wait(&s->bar, nt);
        linear_rows(&L->fc, &a, n, h + n * C, F4, EPI_STORE, me, nt);
        barrier_wait(&s->bar, nt);
        a.in = F4;
        a.f32 = h + n * C;
        for (int64_t i = lo; i < hi; i++) {
            float *row = h + n * C + i * F4;
            for (int64_t k = 0; k < F4; k += VL) vstore(row + k, vgelu(vload(row + k)));
            prepare_row(L->mlp.precision, row, &a, i);
        }
        barrier_wait(&s->bar, nt);
        linear_rows(&L->mlp, &a, n, x, C, EPI_ADD, me, nt);
        barrier_wait(&s->bar, nt);
    }

    const int64_t nl = n - s->logits_from;
    if (nl > 0) {
        a.in = C;
        a.f32 = h;
        int64_t hlo, hhi;
        share(nl, me, nt, &hlo, &hhi);
        for (int64_t i = hlo; i < hhi; i++) {
            layer_norm_row(x + (s->logits_from + i) * C, m->lnf_w, m->lnf_b, h + i * C, C);
            prepare_row(m->head.precision, h + i * C, &a, i);
        }
        barrier_wait(&s->bar, nt);
        linear_rows(&m->head, &a, nl, s->logits, m->n_vocab, EPI_STORE, me, nt);
    }
}

/* ---------------------------------------------------------------- GEMM for long prompts
 * Y[n, out] = X[n, in] W^T + bias for one bf16 or int8 linear layer and many rows: what a long prompt
 * needs on PyTorch's path, where a matmul is compute-bound. PyTorch can only run it by widening the whole
 * weight to fp32 first (a pass over 4 bytes per weight, and fresh pages to fault in, every call); here
 * the widening happens while packing blocks of the weight into cache-sized panels, which a GEMM does
 * anyway. Same arithmetic as that path (the widened weight is exact: a bf16 is the top half of an fp32,
 * an int8 code times its row scale is one fp32 multiply), only the order of the sums differs.
 *
 * The usual blocking: for each block of KC inputs, the weight rows are packed into panels of NR outputs
 * ([kc][NR], widened) and the activations into panels of MR rows ([kc][MR]); a micro-kernel keeps an
 * MR x NR block of outputs in registers (AVX2: 6 x 16 in 12 of its 16 registers; AVX-512: 12 x 32 in 24
 * of 32) and adds kc rank-1 updates, one broadcast activation against two weight vectors each. The
 * threads split the outputs into a grid of row and column ranges, each packing what it reads. */

#define GEMM_NR (2 * VL)
#if GPT2_ISA == 512
#define GEMM_MR 12
#else
#define GEMM_MR 6
#endif
#define GEMM_KC 384 /* inputs per block: a weight panel (KC x NR fp32, 24 KB on AVX2) stays in L1 */
#define GEMM_MC (16 * GEMM_MR) /* rows per block: their panels (AVX2: 96 rows x 384 fp32 = 144 KB) stay in L2 */
/* Below this many rows a layer is not compute-bound: linear_rows streams the weight once instead. */
#define GEMM_MIN_ROWS 16

/* 8 vectors of 8 floats, transposed in registers: r[j][i] becomes r[i][j]. */
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* Weights k..k+7 of row o as fp32, exactly the values the decode kernels multiply by (k % 8 == 0):
 * bf16 and f16 widened, int8 code x row scale, int4 code x group scale (a 4-bit integer times an f16 has at
 * most 15 significant bits: exact in fp32, as torch's dequantized() computes it). */
static inline __m256 widen8(const Linear *L, int64_t o, int64_t k) {
    const int64_t in = L->in;
    switch (L->precision) {
    case PREC_BF16: {
        const __m128i w = _mm_loadu_si128((const __m128i *)((const uint16_t *)L->w + o * in + k));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16));
    }
    case PREC_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)L->w + o * in + k)));
    case PREC_INT8: {
        const __m128i w = _mm_loadl_epi64((const __m128i *)((const int8_t *)L->w + o * in + k));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w)),
                             _mm256_set1_ps(((const float *)L->scale)[o]));
    }
    default: { /* int4: the 8 bytes holding these inputs, low or high nibbles (tile_int4's layout) */
        const uint8_t *w = (const uint8_t *)L->w + o * (in / 2) + k / GROUP * (GROUP / 2) + k % (GROUP / 2);
        __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)w));
        c = _mm256_and_si256(k % GROUP >= GROUP / 2 ? _mm256_srli_epi32(c, 4) : c, _mm256_set1_epi32(15));
        const float scale = half_to_float(((const uint16_t *)L->scale)[o * (in / GROUP4) + k / GROUP4]);
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, _mm256_set1_epi32(8))), _mm256_set1_ps(scale));
    }
    }
}

/* Panels of NR weight rows [o0, o0 + no) x inputs [k0, k0 + kc), widened to fp32: dst[p][k][NR], built
 * 8 rows x 8 inputs at a time (widen 8 rows, transpose in registers). Rows past the layer's end are
 * zeros (their outputs are never stored). kc is a multiple of 8 (gpt2_linear requires in % 64 == 0). */
static void gemm_pack_weights(const Linear *L, int64_t o0, int64_t no, int64_t k0, int64_t kc, float *dst) {
    for (int64_t p = 0; p < no; p += GEMM_NR, dst += kc * GEMM_NR)
        for (int g = 0; g < GEMM_NR; g += 8)
            for (int64_t k = 0; k < kc; k += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = p + g + i < no ? widen8(L, o0 + p + g + i, k0 + k) : _mm256_setzero_ps();
                transpose8(r);
                for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + (k + j) * GEMM_NR + g, r[j]);
            }
}

/* Panels of MR activation rows [r0, r0 + nr) x inputs [k0, k0 + kc): dst[p][k][MR], zero rows past nr. */
static void gemm_pack_rows(const float *X, int64_t in, int64_t r0, int64_t nr, int64_t k0, int64_t kc, float *dst) {
    for (int64_t p = 0; p < nr; p += GEMM_MR, dst += kc * GEMM_MR)
        for (int i = 0; i < GEMM_MR; i++) {
            if (p + i < nr) {
                const float *x = X + (r0 + p + i) * in + k0;
                for (int64_t k = 0; k < kc; k++) dst[k * GEMM_MR + i] = x[k];
            } else {
                for (int64_t k = 0; k < kc; k++) dst[k * GEMM_MR + i] = 0.0f;
            }
        }
}

/* One MR x NR block: acc = A_panel . B_panel over kc inputs, then Y (rows x cols of it) = acc + (first
 * block of inputs ? bias : Y). */
static inline __attribute__((always_inline)) void gemm_block(const float *A, const float *B, int64_t kc,
                                                             float *Y, int64_t ldy, int rows, int cols,
                                                             const float *bias, int first) {
    vf acc[GEMM_MR][2];
    for (int i = 0; i < GEMM_MR; i++) acc[i][0] = acc[i][1] = vzero();
    for (int64_t k = 0; k < kc; k++) {
        const vf b0 = vload(B + k * GEMM_NR), b1 = vload(B + k * GEMM_NR + VL);
#pragma GCC unroll 16
        for (int i = 0; i < GEMM_MR; i++) {
            const vf a = vset1(A[k * GEMM_MR + i]);
            acc[i][0] = vfma(a, b0, acc[i][0]);
            acc[i][1] = vfma(a, b1, acc[i][1]);
        }
    }
    if (cols == GEMM_NR) {
        const vf z = vzero();
        const vf bias0 = first && bias ? vload(bias) : z, bias1 = first && bias ? vload(bias + VL) : z;
        for (int i = 0; i < rows; i++) {
            float *y = Y + i * ldy;
            vstore(y, vadd(first ? bias0 : vload(y), acc[i][0]));
            vstore(y + VL, vadd(first ? bias1 : vload(y + VL), acc[i][1]));
        }
        return;
    }
    float tmp[GEMM_NR];
    for (int i = 0; i < rows; i++) {
        vstore(tmp, acc[i][0]);
        vstore(tmp + VL, acc[i][1]);
        float *y = Y + i * ldy;
        for (int j = 0; j < cols; j++) y[j] = (first ? (bias ? bias[j] : 0.0f) : y[j]) + tmp[j];
    }
}

/* This thread's part of the GEMM: rows [r0, r1) x outputs [o0, o1). */
static void gemm_part(const Linear *L, const float *X, float *Y, int64_t r0, int64_t r1, int64_t o0, int64_t o1,
                      float *wpack, float *xpack) {
    const int64_t in = L->in, out = L->out;
    for (int64_t k0 = 0; k0 < in; k0 += GEMM_KC) {
        const int64_t kc = in - k0 < GEMM_KC ? in - k0 : GEMM_KC;
        gemm_pack_weights(L, o0, o1 - o0, k0, kc, wpack);
        for (int64_t m0 = r0; m0 < r1; m0 += GEMM_MC) {
            const int64_t mc = r1 - m0 < GEMM_MC ? r1 - m0 : GEMM_MC;
            gemm_pack_rows(X, in, m0, mc, k0, kc, xpack);
            for (int64_t p = 0; p < o1 - o0; p += GEMM_NR) {
                const int cols = o1 - o0 - p < GEMM_NR ? (int)(o1 - o0 - p) : GEMM_NR;
                const float *bias = L->bias ? L->bias + o0 + p : NULL;
                for (int64_t i = 0; i < mc; i += GEMM_MR) {
                    const int rows = mc - i < GEMM_MR ? (int)(mc - i) : GEMM_MR;
                    gemm_block(xpack + i * kc, wpack + p * kc, kc, Y + (m0 + i) * out + o0 + p, out, rows, cols,
                               bias, k0 == 0);
                }
            }
        }
    }
}

/* Output columns per thread: each thread's weight panels for one block of inputs stay within L3's share. */
#define GEMM_NC 1536

static int gemm(const Linear *L, const float *X, int64_t n, float *Y, int nthreads) {
    /* A grid of row ranges x column ranges, one cell per thread: columns first (each thread then packs
     * only its own weights), rows as well where the columns would get too narrow to fill a kernel. */
    int cols = nthreads, rows = 1;
    while (cols > 1 && cols % 2 == 0 && L->out / cols < 4 * GEMM_NR && n / (2 * rows) >= GEMM_MR) {
        cols /= 2;
        rows *= 2;
    }
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        const int t = omp_get_thread_num();
        const int64_t span_o = (L->out + cols - 1) / cols, span_r = (n + rows - 1) / rows;
        const int64_t o_lo = (t % cols) * span_o, r_lo = (t / cols) * span_r;
        const int64_t o_hi = o_lo + span_o < L->out ? o_lo + span_o : L->out;
        const int64_t r_hi = r_lo + span_r < n ? r_lo + span_r : n;
        float *wpack = alloc(sizeof(float) * GEMM_KC * (GEMM_NC + GEMM_NR));
        float *xpack = alloc(sizeof(float) * GEMM_KC * (GEMM_MC + GEMM_MR));
        if (!wpack || !xpack) {
            failed = 1;
        } else {
            for (int64_t o = o_lo; o < o_hi && r_lo < r_hi; o += GEMM_NC)
                gemm_part(L, X, Y, r_lo, r_hi, o, o + GEMM_NC < o_hi ? o + GEMM_NC : o_hi, wpack, xpack);
        }
        free(wpack);
        free(xpack);
    }
    return failed ? GPT2_E_MEMORY : GPT2_OK;
}

/* A few rows: the decode kernels (one pass over the weight for all rows; int8/int4 quantize the rows). */
static int few_rows(const Linear *L, const float *X, int64_t n, float *Y, int nthreads) {
    Act act = {.f32 = X, .in = L->in};
    if (L->precision == PREC_INT8 || L->precision == PREC_INT4) {
        act.q = alloc(sizeof(int16_t) * n * L->in);
        act.qs = alloc(sizeof(float) * n * (L->in / GROUP));
        act.qsum = alloc(sizeof(float) * n * (L->in / GROUP4));
        if (!act.q || !act.qs || !act.qsum) {
            free(act.q);
            free(act.qs);
            free(act.qsum);
            return GPT2_E_MEMORY;
        }
        for (int64_t i = 0; i < n; i++) prepare_row(L->precision, X + i * L->in, &act, i);
    }
#pragma omp parallel num_threads(nthreads)
    linear_rows(L, &act, n, Y, L->out, EPI_STORE, omp_get_thread_num(), omp_get_num_threads());
    free(act.q);
    free(act.qs);
    free(act.qsum);
    return GPT2_OK;
}

#endif /* GPT2_ISA */

/* ---------------------------------------------------------------- the checks at the boundary */

/* A linear layer the kernels can run as [out, in]: 0, GPT2_E_PRECISION (unknown, or not built here) or
 * GPT2_E_WEIGHTS (another shape, inputs not a multiple of GROUP, or no scales where its precision has them). */
static int check_linear(const Linear *L, int64_t out, int64_t in) {
    if (L->precision < 0 || L->precision >= N_PREC || !(gpt2_features() >> L->precision & 1))
        return GPT2_E_PRECISION;
    const int scaled = L->precision == PREC_INT8 || L->precision == PREC_INT4;
    if (!L->w || L->out != out || L->in != in || out < 1 || in < GROUP || in % GROUP || (scaled && !L->scale))
        return GPT2_E_WEIGHTS;
    return GPT2_OK;
}

/* Everything gpt2_forward relies on that the arguments themselves can tell: 0 or a GPT2_E_* code. */
static int check_arguments(const Model *m, const Cache *c, int64_t n, const int64_t *tokens,
                           const int64_t *positions, const int64_t *slots, int64_t logits_from,
                           const float *logits) {
    if (!m || !c || !tokens || !positions || !slots) return GPT2_E_NULL;
    if (n < 1 || logits_from < 0 || logits_from > n) return GPT2_E_COUNT;
    if (logits_from < n && !logits) return GPT2_E_NULL;
    const int64_t C = m->n_embd, nh = m->n_head;
    if (!m->layers || !m->wte || !m->wpe || !m->lnf_w || !m->lnf_b) return GPT2_E_NULL;
    if (m->n_layer < 1 || m->n_vocab < 1 || m->n_ctx < 1 || C < GROUP || C % GROUP || nh < 1 || C % nh)
        return GPT2_E_CONFIG;
    const int64_t hs = C / nh; /* attend_head holds one head in 64 / VL vectors */
    if (hs % 16 || hs > 64) return GPT2_E_CONFIG;
    const int64_t F4 = m->layers[0].mlp.in; /* the MLP's width: 4 * n_embd in GPT-2, any multiple of 64 */
    for (int64_t l = 0; l < m->n_layer; l++) {
        const Layer *L = &m->layers[l];
        if (!L->ln1_w || !L->ln1_b || !L->ln2_w || !L->ln2_b) return GPT2_E_NULL;
        const Linear *lin[4] = {&L->attn, &L->proj, &L->fc, &L->mlp};
        const int64_t shape[4][2] = {{3 * C, C}, {C, C}, {F4, C}, {C, F4}};
        for (int j = 0; j < 4; j++) {
            const int rc = check_linear(lin[j], shape[j][0], shape[j][1]);
            if (rc != GPT2_OK) return rc;
        }
    }
    const int rc = check_linear(&m->head, m->n_vocab, C);
    if (rc != GPT2_OK) return rc;
    /* The cache: the model's shape, and strides that keep every (layer, slot, head, position) apart. */
    if (!c->k || !c->v) return GPT2_E_NULL;
    if (c->n_layer != m->n_layer || c->n_head != nh || c->head_dim != hs || c->max_len < 1 || c->n_slots < 1 ||
        c->head_stride < c->max_len * hs || c->slot_stride < nh * c->head_stride ||
        c->layer_stride < c->n_slots * c->slot_stride)
        return GPT2_E_CACHE;
    const int64_t max_pos = c->max_len < m->n_ctx ? c->max_len : m->n_ctx;
    for (int64_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab) return GPT2_E_TOKEN;
        if (positions[i] < 0 || positions[i] >= max_pos) return GPT2_E_POSITION;
        if (slots[i] < 0 || slots[i] >= c->n_slots) return GPT2_E_SLOT;
    }
    return GPT2_OK;
}

/* One forward pass for n tokens: token i is `tokens[i]` at position `positions[i]` of the sequence in
 * cache slot `slots[i]`; its keys and values are written there, and it attends to that slot's positions
 * 0..positions[i] (tokens of one slot in one call must come in position order: a prompt chunk works).
 * Logits of tokens [logits_from, n) go to `logits` ([n - logits_from, n_vocab], fp32).
 * Returns 0, or a negative GPT2_E_* code for arguments it refuses (checked again here, though Python
 * checks them first). */
int gpt2_forward(const Model *m, const Cache *c, int64_t n, const int64_t *tokens, const int64_t *positions,
                 const int64_t *slots, int64_t logits_from, float *logits, int nthreads) {
    const int rc = check_arguments(m, c, n, tokens, positions, slots, logits_from, logits);
    if (rc != GPT2_OK) return rc;
#if GPT2_ISA
    nthreads = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    const int64_t C = m->n_embd, F4 = m->layers[0].mlp.in;
    const int64_t widest = 4 * C > F4 ? 4 * C : F4;
    float *x = alloc(sizeof(float) * n * C);            /* residual stream */
    float *h = alloc(sizeof(float) * n * (C + widest)); /* LayerNorm output, then the MLP's hidden rows */
    float *qkv = alloc(sizeof(float) * n * 3 * C);
    float *y = alloc(sizeof(float) * n * C); /* attention output */
    Act act = {.in = 0};
    act.q = alloc(sizeof(int16_t) * n * widest);
    act.qs = alloc(sizeof(float) * n * (widest / GROUP));
    act.qsum = alloc(sizeof(float) * n * (widest / GROUP4));
    float *scores = alloc(sizeof(float) * (size_t)nthreads * (c->max_len + 16));
    atomic_llong *next_head = alloc(sizeof(atomic_llong) * m->n_layer);
    const int ok = x && h && qkv && y && act.q && act.qs && act.qsum && scores && next_head;
    int status = GPT2_E_MEMORY;
    if (ok) {
        for (int64_t l = 0; l < m->n_layer; l++) atomic_init(&next_head[l], 0);
        Step s = {.m = m, .c = c, .n = n, .logits_from = logits_from, .tokens = tokens, .positions = positions,
                  .slots = slots, .logits = logits, .x = x, .h = h, .qkv = qkv, .y = y, .scores = scores,
                  .act = &act, .next_head = next_head};
        status = parallel(step_job, &s, nthreads);
    }
    free(next_head);
    free(x);
    free(h);
    free(qkv);
    free(y);
    free(act.q);
    free(act.qs);
    free(act.qsum);
    free(scores);
    return status;
#else
    (void)nthreads; /* unreachable: check_arguments refuses every precision without kernels */
    return GPT2_E_PRECISION;
#endif
}

/* Y[n, L->out] = X[n, L->in] W^T + bias for one packed layer (bf16, f16, int8, int4; fp32 X and Y,
 * row-major): PyTorch's path calls this for its packed layers (gpt2/engine/precision.py). From
 * GEMM_MIN_ROWS rows on a blocked GEMM (weights widened exactly, fp32 sums); fewer rows go through the
 * decode kernels. fp32 layers are refused: torch's own GEMM runs them. 0 or a GPT2_E_* code. */
int gpt2_linear(const Linear *L, const float *X, int64_t n, float *Y, int nthreads) {
    if (!L || !X || !Y || !L->w) return GPT2_E_NULL;
    if (n < 1) return GPT2_E_COUNT;
    if (L->precision == PREC_FP32) return GPT2_E_PRECISION;
    const int rc = check_linear(L, L->out, L->in);
    if (rc != GPT2_OK) return rc;
#if GPT2_ISA
    nthreads = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    if (n < GEMM_MIN_ROWS) return few_rows(L, X, n, Y, nthreads);
    return gemm(L, X, n, Y, nthreads);
#else
    (void)nthreads;
    return GPT2_E_PRECISION;
#endif
}
