/* One generation step of a charrnn model with int8 layer weights, in C: native.py builds and loads it.
 *
 * Why C: at batch 1 a step is a few microseconds of arithmetic, but from Python it costs
 * far more: per-call overhead of a dozen small NumPy calls, and weights evicted from cache
 * by everything around them (docs/performance.md). Here a step is a loop
 * over the layers with no allocation and no calls out, and generation draws each next
 * character here too, so Python is entered once per chunk of characters, not per step.
 *
 * The numbers are those of linear.QuantLinear, the reference this file is tested against:
 * per output column n, int8 weights q_w[k][n] with scale w_scale[n]; per call and per row, the
 * input x quantized symmetrically, s = max|x| / 127, q_x = rint(x / s); then
 *     out[n] = (sum_k q_x[k] q_w[k][n]) * (s * w_scale[n]) + bias[n].
 * The integer sums are exact, and every float operation after them (the epilogue, the cells, the
 * polynomial tanh below, which linear.tanh_approx repeats in NumPy) happens in the same order
 * with the same float32 rounding (native.py compiles with -ffp-contract=off: no fused multiply-adds),
 * so the NumPy int8 step and this one compute the same states bit for bit. That matters: any
 * difference could round a later input to another int8 level, and the recurrence carries it on.
 * Only the logits differ, by the head's summation order.
 *
 * Threads: the hidden units are split into `regions`, one per thread; a region owns all gate
 * columns of its units, so a thread computes its gates, runs the cell for its units and writes
 * their new h with no other thread involved; the threads meet once per layer, because the next
 * layer reads all of h. New hidden states go to `hnew` (old ones stay readable in `h` until the
 * step ends), so no thread reads a value another is overwriting. A worker that finds no step
 * to do spins for SPIN_NS, then sleeps on a condition variable: an idle model costs no CPU.
 *
 * Packed weights, per region: columns in chunks of 16 and chunks in blocks of 8 (128 columns);
 * within a block, for each group of 4 input rows, each chunk's 16 columns x 4 rows as 64 bytes:
 *     w[block][k4][chunk][col 0..15][row 0..3]
 * (K rounded up to a multiple of 4, N to a multiple of 16, padding zeros). That is the operand
 * layout of AVX-512 VNNI's vpdpbusd (u8 x s8, 4 products into each int32 lane), so a block
 * streams through memory once, front to back. The unsigned operand is q_x + 128;
 * 128 * sum_k q_w[k][n] (colsum) is taken off after. On AVX2 without VNNI the same 64 bytes are
 * two 32-byte halves for vpmaddubsw + vpmaddwd, on signed q_x (see avx2_madd: why it cannot
 * saturate); elsewhere a plain loop. All three compute the same int32 sums. Which one a library
 * holds is decided at compile time (native.py can build each) and charrnn_isa() says which.
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define CHARRNN_PATH "avx512-vnni"
#define USE_VNNI 1
#define XQ_OFFSET 128       /* block_dot sums xq q_w = (q_x + 128) q_w: vpdpbusd's activations are unsigned */
#elif defined(__AVX2__)
#include <immintrin.h>
#define CHARRNN_PATH "avx2"
#define USE_AVX2 1
#define XQ_OFFSET 0         /* block_dot sums q_x q_w */
#else
#define CHARRNN_PATH "portable"
#define XQ_OFFSET 0
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

enum { CELL_RNN = 0, CELL_GRU = 1, CELL_LSTM = 2 };
enum { CHUNK = 16, BLOCK = 8, MAX_THREADS = 64 };
#define SPIN_NS 300000L  /* a worker's busy wait for the next step before it sleeps: 0.3 ms */

typedef struct {            /* one region's columns of a layer's matmul: G gates x its units, gate-major */
    const int8_t *w;        /* packed, see above */
    const float *scale;     /* (n) per column */
    const int32_t *colsum;  /* (n) sum over k of q_w[k][n] */
    const float *bias;      /* (n) or NULL */
    int32_t n;              /* G * units */
} qregion;

typedef struct {
    const qregion *regions; /* (regions) */
    int32_t k;              /* input width */
} qlinear;

typedef struct pool pool;

typedef struct {
    int32_t cell, layers, hidden, vocab, batch, regions;
    const int32_t *unit_start; /* (regions + 1) region r owns units [unit_start[r], unit_start[r+1]) */
    const float *table;     /* (V, G*H) the first layer's input side and biases, per character */
    const qlinear *xh;      /* (layers) rnn, lstm: [h(k-1), hk] -> G*H (layer 0: h0 -> G*H); gru: hk -> 3H */
    const qlinear *x;       /* (layers) gru only: h(k-1) -> 3H; entry 0 unused */
    const float *head_w;    /* (H, V) */
    const float *head_b;    /* (V) */
    float *h;               /* (B, L*H) layer k's h in columns [kH, (k+1)H): the state */
    float *c;               /* (L, B, H) lstm cell states */
    pool *pool;             /* charrnn_open's: threads and scratch */
} net;

typedef struct {            /* one thread's scratch */
    float *a, *a2;          /* (B, G * max units) its regions' pre-activations */
    uint8_t *xq, *xq2;      /* (B, 2H + 4) quantized inputs */
    float *s, *s2;          /* (B) their scales */
    int32_t *acc;           /* (4, BLOCK * CHUNK): sums for up to four rows */
    int sense;
} scratch;

struct pool {
    int threads;            /* including the caller's */
    pid_t owner;            /* after fork() the workers are gone: the child steps alone */
    float *hnew;            /* (B, L*H) */
    scratch work[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    const net *m;
    const int64_t *chars;   /* the step being done: (B) */
    float *logits;          /* where it writes its logits (B, V), or NULL */
    atomic_int posted, arrived, flag, sleeping, quit;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

/* round to nearest, ties to even, for |v| < 2^22: the same as rint and NumPy's rint */
static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

static inline float clamp(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

/* exp(x) for x in [-87, 88]: Cephes' expf polynomial, ~1 ulp; branch-free, so loops vectorize (gcc
 * if-converts the clamps into compare-and-blend only under -fno-trapping-math, which native.py passes:
 * the same values, NaN included, and AVX2 steps ~15% faster than with scalar branches) */
static inline float exp_approx(float x) {
    x = clamp(x, -87.0f, 88.0f);
    float n = round_even(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh(x), absolute error ~1e-7: beyond |x| = 9 tanh is 1 to float precision */
static inline float tanh_approx(float x) {
    float e = exp_approx(2.0f * clamp(x, -9.0f, 9.0f));
    return (e - 1.0f) / (e + 1.0f);
}

/* The input x = [x1 (n1), x2 (n2)] quantized: xq = q_x + 128, padded to a multiple of 4 with
 * 128 (q = 0); returns s. Two pieces because [h(k-1) new, hk old] live in two buffers. */
static float quantize_input(const float *x1, int n1, const float *x2, int n2, uint8_t *xq) {
    float m = 0.0f;
    for (int i = 0; i < n1; i++) m = fabsf(x1[i]) > m ? fabsf(x1[i]) : m;
    for (int i = 0; i < n2; i++) m = fabsf(x2[i]) > m ? fabsf(x2[i]) : m;
    float s = m > 0.0f ? m / 127.0f : 1.0f;
    for (int i = 0; i < n1; i++) xq[i] = (uint8_t)(int32_t)(round_even(x1[i] / s) + 128.0f);
    for (int i = 0; i < n2; i++) xq[n1 + i] = (uint8_t)(int32_t)(round_even(x2[i] / s) + 128.0f);
    for (int i = n1 + n2; i < ((n1 + n2 + 3) & ~3); i++) xq[i] = 128;
    return s;
}

#if USE_AVX2
/* AVX2 has no u8 x s8 dot product into int32 (that is VNNI's vpdpbusd); the widening pair is
 * vpmaddubsw (u8 x s8, adjacent pairs summed into SATURATED int16) then vpmaddwd by ones (int16
 * pairs into int32). With vpdpbusd's operands, xq = q_x + 128 up to 255 times q_w up to 127, a
 * pair reaches 2 * 255 * 127 = 64770 and saturates at 32767. So the unsigned operand here is
 * |q_x| and the signed one q_w with q_x's sign (vpsignb: negated where q_x < 0, zero where q_x = 0):
 * each product is q_x q_w exactly, |q_x| <= 127 (quantize_input rounds x / s, which is 127 at
 * most but for a rounding error far below 0.5) and |q_w| <= 127 (linear.quantize_columns clips
 * to [-127, 127], so negating it cannot wrap), so a pair is at most 2 * 127 * 127 = 32258 < 32767:
 * no saturation, exact sums, no offset. Each group of 4 inputs' signs and magnitudes are taken
 * once and serve the 4 chunks (or 4 rows) computed beside them. */
static inline __m256i avx2_x4(const uint8_t *xq) {   /* 4 q_x, broadcast, as int8: xq ^ 0x80 = xq - 128 */
    int32_t v;
    memcpy(&v, xq, sizeof v);
    return _mm256_xor_si256(_mm256_set1_epi32(v), _mm256_set1_epi8((char)0x80));
}

/* acc += q_x . w for the 8 columns of one 32-byte half chunk: signed x (sx), |x| (ax) */
static inline __m256i avx2_madd(__m256i acc, __m256i ax, __m256i sx, __m256i w) {
    __m256i pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, sx));     /* |pair| <= 32258 */
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* 4 chunks (64 columns) of a block whose rows of 4 inputs are `stride` bytes apart: 8 accumulators */
static void avx2_dot_4chunks(const int8_t *w, size_t stride, const uint8_t *xq, int k4, int32_t *acc) {
    __m256i s[8];
    for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_si256();
    for (int i = 0; i < k4; i++) {
        __m256i sx = avx2_x4(xq + 4 * i), ax = _mm256_abs_epi8(sx);
        const int8_t *p = w + (size_t)i * stride;
        for (int j = 0; j < 8; j++) s[j] = avx2_madd(s[j], ax, sx, _mm256_loadu_si256((const __m256i *)(p + 32 * j)));
    }
    for (int j = 0; j < 8; j++) _mm256_storeu_si256((__m256i *)(acc + 8 * j), s[j]);
}

static void avx2_dot_chunk(const int8_t *w, size_t stride, const uint8_t *xq, int k4, int32_t *acc) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
    for (int i = 0; i < k4; i++) {
        __m256i sx = avx2_x4(xq + 4 * i), ax = _mm256_abs_epi8(sx);
        const int8_t *p = w + (size_t)i * stride;
        s0 = avx2_madd(s0, ax, sx, _mm256_loadu_si256((const __m256i *)p));
        s1 = avx2_madd(s1, ax, sx, _mm256_loadu_si256((const __m256i *)(p + 32)));
    }
    _mm256_storeu_si256((__m256i *)acc, s0);
    _mm256_storeu_si256((__m256i *)(acc + 8), s1);
}

/* one chunk of a full block for four rows: each weight load serves the four; acc rows BLOCK * CHUNK apart */
static void avx2_dot4_chunk(const int8_t *w, const uint8_t *xq, size_t xq_stride, int k4, int32_t *acc) {
    __m256i s[4][2];
    for (int r = 0; r < 4; r++) s[r][0] = s[r][1] = _mm256_setzero_si256();
    for (int i = 0; i < k4; i++) {
        const int8_t *p = w + (size_t)i * BLOCK * 64;
        __m256i w0 = _mm256_loadu_si256((const __m256i *)p), w1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        for (int r = 0; r < 4; r++) {
            __m256i sx = avx2_x4(xq + r * xq_stride + 4 * i), ax = _mm256_abs_epi8(sx);
            s[r][0] = avx2_madd(s[r][0], ax, sx, w0);
            s[r][1] = avx2_madd(s[r][1], ax, sx, w1);
        }
    }
    for (int r = 0; r < 4; r++) {
        _mm256_storeu_si256((__m256i *)(acc + r * BLOCK * CHUNK), s[r][0]);
        _mm256_storeu_si256((__m256i *)(acc + r * BLOCK * CHUNK + 8), s[r][1]);
    }
}
#endif

/* acc[0 .. chunks*16) = sum_k (q_x[k] + XQ_OFFSET) q_w[k][col] for one block of `chunks` chunks */
static void block_dot(const int8_t *w, const uint8_t *xq, int k4, int chunks, int32_t *acc) {
#if USE_VNNI
    if (chunks == BLOCK) {
        __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        for (int i = 0; i < k4; i++) {
            __m512i xv = _mm512_set1_epi32(*(const int32_t *)(xq + 4 * i));
            const int8_t *p = w + (size_t)i * BLOCK * 64;
            s0 = _mm512_dpbusd_epi32(s0, xv, _mm512_loadu_si512(p));
            s1 = _mm512_dpbusd_epi32(s1, xv, _mm512_loadu_si512(p + 64));
            s2 = _mm512_dpbusd_epi32(s2, xv, _mm512_loadu_si512(p + 128));
            s3 = _mm512_dpbusd_epi32(s3, xv, _mm512_loadu_si512(p + 192));
            s4 = _mm512_dpbusd_epi32(s4, xv, _mm512_loadu_si512(p + 256));
            s5 = _mm512_dpbusd_epi32(s5, xv, _mm512_loadu_si512(p + 320));
            s6 = _mm512_dpbusd_epi32(s6, xv, _mm512_loadu_si512(p + 384));
            s7 = _mm512_dpbusd_epi32(s7, xv, _mm512_loadu_si512(p + 448));
        }
        _mm512_storeu_si512(acc, s0);
        _mm512_storeu_si512(acc + 16, s1);
        _mm512_storeu_si512(acc + 32, s2);
        _mm512_storeu_si512(acc + 48, s3);
        _mm512_storeu_si512(acc + 64, s4);
        _mm512_storeu_si512(acc + 80, s5);
        _mm512_storeu_si512(acc + 96, s6);
        _mm512_storeu_si512(acc + 112, s7);
        return;
    }
    for (int c = 0; c < chunks; c++) {
        __m512i s = _mm512_setzero_si512();
        for (int i = 0; i < k4; i++) {
            __m512i xv = _mm512_set1_epi32(*(const int32_t *)(xq + 4 * i));
            s = _mm512_dpbusd_epi32(s, xv, _mm512_loadu_si512(w + ((size_t)i * chunks + c) * 64));
        }
        _mm512_storeu_si512(acc + 16 * c, s);
    }
#elif USE_AVX2
    int c = 0;
    for (; c + 4 <= chunks; c += 4) avx2_dot_4chunks(w + 64 * c, 64 * chunks, xq, k4, acc + 16 * c);
    for (; c < chunks; c++) avx2_dot_chunk(w + 64 * c, 64 * chunks, xq, k4, acc + 16 * c);
#else
    memset(acc, 0, sizeof(int32_t) * chunks * CHUNK);
    for (int i = 0; i < k4; i++) {
        for (int c = 0; c < chunks; c++) {
            const int8_t *p = w + ((size_t)i * chunks + c) * 64;
            int32_t *a = acc + 16 * c;
            for (int col = 0; col < CHUNK; col++) {
                int32_t sum = 0;
                for (int r = 0; r < 4; r++) sum += ((int32_t)xq[4 * i + r] - 128) * (int32_t)p[4 * col + r];
                a[col] += sum;
            }
        }
    }
#endif
}

/* Four rows at once over a full block: each weight vector loaded serves four rows, so a batch
 * reads its weights from cache a quarter as often. acc: (4, BLOCK * CHUNK). */
static void block_dot4(const int8_t *w, const uint8_t *xq, size_t xq_stride, int k4, int32_t *acc) {
#if USE_VNNI
    for (int half = 0; half < 2; half++) {
        __m512i a[4][4];
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) a[r][c] = _mm512_setzero_si512();
        for (int i = 0; i < k4; i++) {
            const int8_t *p = w + ((size_t)i * BLOCK + 4 * half) * 64;
            __m512i w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);
            __m512i w2 = _mm512_loadu_si512(p + 128), w3 = _mm512_loadu_si512(p + 192);
            for (int r = 0; r < 4; r++) {
                __m512i xv = _mm512_set1_epi32(*(const int32_t *)(xq + r * xq_stride + 4 * i));
                a[r][0] = _mm512_dpbusd_epi32(a[r][0], xv, w0);
                a[r][1] = _mm512_dpbusd_epi32(a[r][1], xv, w1);
                a[r][2] = _mm512_dpbusd_epi32(a[r][2], xv, w2);
                a[r][3] = _mm512_dpbusd_epi32(a[r][3], xv, w3);
            }
        }
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) _mm512_storeu_si512(acc + r * BLOCK * CHUNK + (4 * half + c) * 16, a[r][c]);
    }
#elif USE_AVX2
    for (int c = 0; c < BLOCK; c++) avx2_dot4_chunk(w + 64 * c, xq, xq_stride, k4, acc + 16 * c);
#else
    for (int r = 0; r < 4; r++) block_dot(w, xq + r * xq_stride, k4, BLOCK, acc + r * BLOCK * CHUNK);
#endif
}

/* For B rows: out[b] (G*units of region r) = x[b] @ W[:, region r] + bias. The rows were quantized
 * already (xq (B, row), s (B)); each block of weights serves every row while it is in cache. */
static void region_apply(const net *m, const qlinear *L, int r, const uint8_t *xq, const float *s, int32_t *acc,
                         float *out, size_t out_stride) {
    const qregion *q = &L->regions[r];
    int k4 = (L->k + 3) / 4, n16 = (q->n + CHUNK - 1) / CHUNK * CHUNK;
    size_t xq_stride = 2 * (size_t)m->hidden + 4;
    for (int n0 = 0; n0 < n16; n0 += BLOCK * CHUNK) {
        int chunks = (n16 - n0) / CHUNK < BLOCK ? (n16 - n0) / CHUNK : BLOCK;
        int end = n0 + chunks * CHUNK < q->n ? n0 + chunks * CHUNK : q->n;
        const int8_t *w = q->w + (size_t)n0 * k4 * 4;
        for (int b0 = 0; b0 < m->batch; b0 += 4) {
            int rows = m->batch - b0 < 4 ? m->batch - b0 : 4;
            if (rows == 4 && chunks == BLOCK)
                block_dot4(w, xq + b0 * xq_stride, xq_stride, k4, acc);
            else
                for (int b = 0; b < rows; b++) block_dot(w, xq + (b0 + b) * xq_stride, k4, chunks, acc + b * BLOCK * CHUNK);
            for (int b = b0; b < b0 + rows; b++) {
                const int32_t *sums = acc + (b - b0) * BLOCK * CHUNK;
                float *o = out + b * out_stride;
                if (q->bias)
                    for (int n = n0; n < end; n++)
                        o[n] = (float)(sums[n - n0] - XQ_OFFSET * q->colsum[n]) * (s[b] * q->scale[n]) + q->bias[n];
                else
                    for (int n = n0; n < end; n++)
                        o[n] = (float)(sums[n - n0] - XQ_OFFSET * q->colsum[n]) * (s[b] * q->scale[n]);
            }
        }
    }
}

/* Quantize every row's input to a matmul: [x1 (n1) at column c1 of buf1, x2 (n2) at c2 of buf2] */
static void quantize_rows(const net *m, const float *buf1, int c1, int n1, const float *buf2, int c2, int n2,
                          uint8_t *xq, float *s) {
    size_t row = (size_t)m->layers * m->hidden, xq_stride = 2 * (size_t)m->hidden + 4;
    for (int b = 0; b < m->batch; b++)
        s[b] = quantize_input(buf1 + b * row + c1, n1, buf2 + b * row + c2, n2, xq + b * xq_stride);
}

/* Layer k, the regions this thread owns: gates, cell, new h into hnew. */
static void layer_share(const net *m, int k, int t, int stride, const int64_t *chars) {
    pool *p = m->pool;
    scratch *w = &p->work[t];
    int B = m->batch, H = m->hidden, G = m->cell == CELL_LSTM ? 4 : m->cell == CELL_GRU ? 3 : 1;
    size_t row = (size_t)m->layers * H, gh = (size_t)G * H;
    float *hnew = p->hnew;
    /* inputs: rnn, lstm [h(k-1) new, hk old] (layer 0: h0 old); gru x side h(k-1) new, h side hk old */
    if (m->cell == CELL_GRU) {
        quantize_rows(m, m->h, k * H, H, m->h, 0, 0, w->xq, w->s);
        if (k > 0) quantize_rows(m, hnew, (k - 1) * H, H, hnew, 0, 0, w->xq2, w->s2);
    } else if (k == 0) {
        quantize_rows(m, m->h, 0, H, m->h, 0, 0, w->xq, w->s);
    } else {
        quantize_rows(m, hnew, (k - 1) * H, H, m->h, k * H, H, w->xq, w->s);
    }
    for (int r = t; r < m->regions; r += stride) {
        int u0 = m->unit_start[r], units = m->unit_start[r + 1] - u0;
        size_t ga = (size_t)G * units;                                    /* a row's stride in a, a2 */
        if (m->cell != CELL_GRU) {
            region_apply(m, &m->xh[k], r, w->xq, w->s, w->acc, w->a, ga);
            for (int b = 0; b < B; b++) {
                float *a = w->a + b * ga, *h = hnew + b * row + (size_t)k * H + u0;
                if (k == 0) {
                    const float *x = m->table + (size_t)chars[b] * gh + u0;
                    for (int g = 0; g < G; g++)
                        for (int j = 0; j < units; j++) a[g * units + j] += x[(size_t)g * H + j];
                }
                if (m->cell == CELL_RNN) {
                    for (int j = 0; j < units; j++) h[j] = tanh_approx(a[j]);
                    continue;
                }
                float *c = m->c + ((size_t)k * B + b) * H + u0;
                for (int j = 0; j < G * units; j++) a[j] = tanh_approx(a[j]);  /* i, f, o halved: sigmoid = 0.5 + 0.5 tanh */
                for (int j = 0; j < units; j++) {
                    float i = 0.5f + 0.5f * a[j], f = 0.5f + 0.5f * a[units + j], o = 0.5f + 0.5f * a[2 * units + j];
                    float cj = f * c[j] + i * a[3 * units + j];
                    c[j] = cj;
                    h[j] = o * tanh_approx(cj);
                }
            }
            continue;
        }
        region_apply(m, &m->xh[k], r, w->xq, w->s, w->acc, w->a2, ga);          /* W_h h + b_h */
        if (k > 0) region_apply(m, &m->x[k], r, w->xq2, w->s2, w->acc, w->a, ga); /* W_i x + b_i */
        for (int b = 0; b < B; b++) {
            float *xp = w->a + b * ga, *hp = w->a2 + b * ga;
            const float *hold = m->h + b * row + (size_t)k * H + u0;
            float *h = hnew + b * row + (size_t)k * H + u0;
            if (k == 0) {
                const float *x = m->table + (size_t)chars[b] * gh + u0;
                for (int g = 0; g < G; g++)
                    for (int j = 0; j < units; j++) xp[g * units + j] = x[(size_t)g * H + j];
            }
            for (int j = 0; j < 2 * units; j++) xp[j] = 0.5f + 0.5f * tanh_approx(xp[j] + hp[j]);   /* r, z */
            for (int j = 0; j < units; j++) {
                float n = tanh_approx(xp[2 * units + j] + xp[j] * hp[2 * units + j]);
                h[j] = n + xp[units + j] * (hold[j] - n);
            }
        }
    }
}

/* All threads wait here until every one has arrived (sense-reversing, spinning: a layer is ~50 us) */
static void barrier(pool *p, int t) {
    int sense = p->work[t].sense = !p->work[t].sense;
    if (atomic_fetch_add(&p->arrived, 1) == p->threads - 1) {
        atomic_store(&p->arrived, 0);
        atomic_store(&p->flag, sense);
    } else {
        /* yield now and then: with more threads than free cores (several models stepping at
         * once), the thread we wait for may be the one our spinning keeps off its core */
        for (int spins = 1; atomic_load(&p->flag) != sense; spins++) {
            cpu_relax();
            if (spins % 1024 == 0) sched_yield();
        }
    }
}

/* logits (V) = h_top (H) @ head_w + head_b for row b; head_w is (H, V) so that the inner loop runs
 * over independent outputs and vectorizes (a dot product would be a serial float sum) */
static void head_row(const net *m, int b, float *out) {
    int H = m->hidden, V = m->vocab;
    const float *h_top = m->h + ((size_t)b * m->layers + m->layers - 1) * H;
    memcpy(out, m->head_b, sizeof(float) * V);
    for (int j = 0; j < H; j++) {
        const float *w = m->head_w + (size_t)j * V;
        float hj = h_top[j];
        for (int v = 0; v < V; v++) out[v] += hj * w[v];
    }
}

/* One step's share of thread t (of `stride`): the layers (meeting after each), then the new h of
 * its rows into the state and, when logits is not NULL, their logits (B, V): the rows split too. */
static void step_share(const net *m, int t, int stride, const int64_t *chars, float *logits) {
    for (int k = 0; k < m->layers; k++) {
        layer_share(m, k, t, stride, chars);
        if (stride > 1) barrier(m->pool, t);
    }
    size_t row = (size_t)m->layers * m->hidden;
    for (int b = t; b < m->batch; b += stride) {
        memcpy(m->h + b * row, m->pool->hnew + b * row, sizeof(float) * row);
        if (logits) head_row(m, b, logits + (size_t)b * m->vocab);
    }
    if (stride > 1 && m->batch > 1) barrier(m->pool, t);
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

typedef struct { pool *p; int t; } worker_arg;

static void *worker(void *arg_) {
    worker_arg arg = *(worker_arg *)arg_;
    free(arg_);
    pool *p = arg.p;
    int seen = 0;
    for (;;) {
        long start = now_ns();
        int spins = 0;
        while (atomic_load(&p->posted) == seen && !atomic_load(&p->quit)) {
            cpu_relax();
            if (++spins % 256 == 0 && now_ns() - start > SPIN_NS) {
                pthread_mutex_lock(&p->lock);
                atomic_store(&p->sleeping, atomic_load(&p->sleeping) + 1);
                while (atomic_load(&p->posted) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->wake, &p->lock);
                atomic_store(&p->sleeping, atomic_load(&p->sleeping) - 1);
                pthread_mutex_unlock(&p->lock);
            }
        }
        if (atomic_load(&p->quit)) return NULL;
        seen = atomic_load(&p->posted);
        step_share(p->m, arg.t, p->threads, p->chars, p->logits);
    }
}

/* one step on every thread: new state, and logits (B, V) unless NULL */
static void step(const net *m, const int64_t *chars, float *logits) {
    pool *p = m->pool;
    if (p->threads > 1 && getpid() == p->owner) {
        p->m = m;
        p->chars = chars;
        p->logits = logits;
        atomic_fetch_add(&p->posted, 1);
        if (atomic_load(&p->sleeping)) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_broadcast(&p->wake);
            pthread_mutex_unlock(&p->lock);
        }
        step_share(m, 0, p->threads, chars, logits);
    } else {
        step_share(m, 0, 1, chars, logits);
    }
}

/* Feed chars (T, B) time-major (checked: each in [0, V)); logits (T, B, V), or NULL to keep only the state. */
int charrnn_feed(const net *m, const int64_t *chars, int32_t T, float *logits) {
    size_t B = m->batch, V = m->vocab;
    for (size_t i = 0; i < (size_t)T * B; i++)
        if (chars[i] < 0 || chars[i] >= (int64_t)V) return -1;
    for (int t = 0; t < T; t++) step(m, chars + t * B, logits ? logits + t * B * V : NULL);
    return 0;
}

/* Draw one index from logits / temperature with uniform u in [0, 1): sample.sample_next's
 * rule (inverse CDF in double, the first index whose cumulative mass exceeds u * total). */
static int draw(const float *logits, int V, double inv_temperature, double u, double *cdf) {
    double top = -INFINITY;
    for (int v = 0; v < V; v++) top = fmax(top, logits[v] * inv_temperature);
    double total = 0.0;
    for (int v = 0; v < V; v++) {
        total += exp(logits[v] * inv_temperature - top);
        cdf[v] = total;
    }
    double target = u * total;
    int count = 0;
    for (int v = 0; v < V; v++) count += cdf[v] <= target;
    return count < V - 1 ? count : V - 1;
}

static int argmax(const float *logits, int V) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    return best;
}

/* Generate T characters per row from `last` (B, V), the logits for the next character: draw one
 * per row (uniforms (T, B); greedy argmax when NULL), write it to out (T, B), feed it. On return
 * `last` holds the logits after the final character. cdf: (V) doubles of scratch. */
int charrnn_generate(const net *m, float *last, int32_t T, double inv_temperature, const double *uniforms,
                     int64_t *out, double *cdf) {
    size_t B = m->batch, V = m->vocab;
    for (int t = 0; t < T; t++) {
        int64_t *chars = out + t * B;
        for (size_t b = 0; b < B; b++)
            chars[b] = uniforms ? draw(last + b * V, V, inv_temperature, uniforms[t * B + b], cdf) : argmax(last + b * V, V);
        step(m, chars, last);
    }
    return 0;
}

void charrnn_close(net *m) {
    pool *p = m->pool;
    if (!p) return;
    m->pool = NULL;
    if (getpid() == p->owner) {
        pthread_mutex_lock(&p->lock);
        atomic_store(&p->quit, 1);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (int t = 1; t < p->threads; t++) pthread_join(p->ids[t], NULL);
    }
    for (int t = 0; t < MAX_THREADS; t++) {  /* all: a failed charrnn_open may have allocated beyond p->threads */
        scratch *w = &p->work[t];
        free(w->a); free(w->a2); free(w->xq); free(w->xq2); free(w->s); free(w->s2); free(w->acc);
    }
    free(p->hnew);
    free(p);
}

/* Allocate the scratch and start threads - 1 workers (threads <= regions). 0 on success. */
int charrnn_open(net *m, int32_t threads) {
    if (threads < 1 || threads > MAX_THREADS || threads > m->regions) return -1;
    pool *p = calloc(1, sizeof(pool));
    if (!p) return -1;
    int H = m->hidden, B = m->batch, G = m->cell == CELL_LSTM ? 4 : m->cell == CELL_GRU ? 3 : 1, widest = 0;
    for (int r = 0; r < m->regions; r++)
        if (m->unit_start[r + 1] - m->unit_start[r] > widest) widest = m->unit_start[r + 1] - m->unit_start[r];
    p->threads = threads;
    p->owner = getpid();
    p->hnew = calloc((size_t)B * m->layers * H, sizeof(float));
    int failed = !p->hnew;
    for (int t = 0; t < threads; t++) {
        scratch *w = &p->work[t];
        w->a = calloc((size_t)B * G * widest, sizeof(float));
        w->a2 = calloc((size_t)B * G * widest, sizeof(float));
        w->xq = calloc((size_t)B * (2 * H + 4), 1);
        w->xq2 = calloc((size_t)B * (2 * H + 4), 1);
        w->s = calloc(B, sizeof(float));
        w->s2 = calloc(B, sizeof(float));
        w->acc = aligned_alloc(64, sizeof(int32_t) * 4 * BLOCK * CHUNK);
        failed |= !w->a || !w->a2 || !w->xq || !w->xq2 || !w->s || !w->s2 || !w->acc;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    m->pool = p;
    if (failed) {
        p->threads = 1;
        charrnn_close(m);
        return -1;
    }
    for (int t = 1; t < threads; t++) {
        worker_arg *arg = malloc(sizeof(worker_arg));
        if (!arg) { p->threads = t; charrnn_close(m); return -1; }
        arg->p = p;
        arg->t = t;
        if (pthread_create(&p->ids[t], NULL, worker, arg) != 0) {
            free(arg);
            p->threads = t;
            charrnn_close(m);
            return -1;
        }
    }
    return 0;
}

/* which block_dot this library was compiled with: "avx512-vnni", "avx2" or "portable" */
const char *charrnn_isa(void) { return CHARRNN_PATH; }
