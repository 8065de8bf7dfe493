/* One generation step of a charrnn model with int8 layer weights, in C: native.py builds and loads it.
 *
 * Why C: at batch 1 a step of a 2x512 LSTM is ~6 M multiply-adds, a few microseconds of
 * arithmetic, but from Python it costs ~200 us: NumPy's and fbgemm's per-call overhead on
 * a dozen small arrays, and weights evicted from cache by everything around them. Here a
 * step is a loop over the layers with no allocation and no calls out.
 *
 * The numbers are those of quantize.QuantLinear, which is the reference this file is tested
 * against: per output column n, int8 weights q_w[k][n] with scale w_scale[n]; per call and
 * per row, the input x quantized symmetrically, s = max|x| / 127, q_x = rint(x / s); then
 *     out[n] = (sum_k q_x[k] q_w[k][n]) * (s * w_scale[n]) + bias[n].
 * The integer sums are exact, so this file and NumPy agree on them bit for bit; only the
 * float epilogue and the cell's tanh (a polynomial exp here) differ, by float rounding.
 *
 * Packed weights: columns in chunks of 16 and chunks in blocks of 8 (128 columns); within a
 * block, for each group of 4 input rows, each chunk's 16 columns x 4 rows as 64 bytes:
 *     w[block][k4][chunk][col 0..15][row 0..3]
 * (K rounded up to a multiple of 4, N to a multiple of 16, padding zeros). That is the
 * operand layout of AVX-512 VNNI's vpdpbusd (u8 x s8, 4 products into each int32 lane), so
 * a block streams through memory once, front to back. The unsigned operand is q_x + 128;
 * 128 * sum_k q_w[k][n] (colsum) is taken off after. Without VNNI a plain loop does the same.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define CHARRNN_VNNI 1
#else
#define CHARRNN_VNNI 0
#endif

enum { CELL_RNN = 0, CELL_GRU = 1, CELL_LSTM = 2 };
enum { CHUNK = 16, BLOCK = 8 };

typedef struct {
    const int8_t *w;        /* packed, see above */
    const float *scale;     /* (n) per output column */
    const int32_t *colsum;  /* (n) sum over k of q_w[k][n] */
    const float *bias;      /* (n), or NULL */
    int32_t k, n;           /* true sizes */
} qlinear;

typedef struct {
    int32_t cell, layers, hidden, vocab, batch;
    const float *table;     /* (V, G*H) the first layer's input side and biases, per character */
    const qlinear *xh;      /* (layers) rnn, lstm: [h(k-1), hk] -> G*H (layer 0: h0 -> G*H); gru: hk -> 3H */
    const qlinear *x;       /* (layers) gru only: h(k-1) -> 3H; entry 0 unused */
    const float *head_w;    /* (H, V) */
    const float *head_b;    /* (V) */
    float *h;               /* (B, L*H) layer k's h in columns [kH, (k+1)H) */
    float *c;               /* (L, B, H) lstm cell states */
    float *a, *a2;          /* (B, G*H) scratch: pre-activations */
    uint8_t *xq;            /* (B, 2H + 4) scratch: quantized inputs */
    float *s;               /* (B) scratch: their scales */
    int32_t *acc;           /* (BLOCK * CHUNK) scratch */
} net;

/* round to nearest, ties to even, for |v| < 2^22: the same as rint and NumPy's rint */
static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

/* exp(x) for x in [-87, 88]: Cephes' expf polynomial, ~1 ulp; branch-free, so loops vectorize */
static inline float exp_approx(float x) {
    x = fminf(fmaxf(x, -87.0f), 88.0f);
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
    x = fminf(fmaxf(x, -9.0f), 9.0f);
    float e = exp_approx(2.0f * x);
    return (e - 1.0f) / (e + 1.0f);
}

static void tanh_inplace(float *v, int n) {
    for (int i = 0; i < n; i++) v[i] = tanh_approx(v[i]);
}

/* xq = q_x + 128 (k entries, padding to a multiple of 4 with 128, i.e. q = 0); returns s */
static float quantize_input(const float *x, int k, uint8_t *xq) {
    float m = 0.0f;
    for (int i = 0; i < k; i++) m = fmaxf(m, fabsf(x[i]));
    float s = m > 0.0f ? m / 127.0f : 1.0f;
    for (int i = 0; i < k; i++) xq[i] = (uint8_t)(int32_t)(round_even(x[i] / s) + 128.0f);
    for (int i = k; i < ((k + 3) & ~3); i++) xq[i] = 128;
    return s;
}

/* acc[0 .. chunks*16) = sum_k xq[k] * q_w[k][col] for one block of `chunks` chunks */
static void block_dot(const int8_t *w, const uint8_t *xq, int k4, int chunks, int32_t *acc) {
#if CHARRNN_VNNI
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
#else
    memset(acc, 0, sizeof(int32_t) * chunks * CHUNK);
    for (int i = 0; i < k4; i++) {
        for (int c = 0; c < chunks; c++) {
            const int8_t *p = w + ((size_t)i * chunks + c) * 64;
            int32_t *a = acc + 16 * c;
            for (int col = 0; col < CHUNK; col++) {
                int32_t sum = 0;
                for (int r = 0; r < 4; r++) sum += (int32_t)xq[4 * i + r] * (int32_t)p[4 * col + r];
                a[col] += sum;
            }
        }
    }
#endif
}

/* For B rows: out[b] (n) = x[b] (k) @ W + bias, or out[b] += that when `add` (table rows already there).
 * Rows are quantized first; then each block of weights serves every row while it is in cache. */
static void qlinear_apply(const net *m, const qlinear *L, const float *x, size_t x_stride, float *out, size_t out_stride,
                          int add) {
    int B = m->batch, k4 = (L->k + 3) / 4, n16 = (L->n + CHUNK - 1) / CHUNK * CHUNK;
    for (int b = 0; b < B; b++) m->s[b] = quantize_input(x + b * x_stride, L->k, m->xq + (size_t)b * k4 * 4);
    for (int n0 = 0; n0 < n16; n0 += BLOCK * CHUNK) {
        int chunks = (n16 - n0) / CHUNK < BLOCK ? (n16 - n0) / CHUNK : BLOCK;
        int end = n0 + chunks * CHUNK < L->n ? n0 + chunks * CHUNK : L->n;
        for (int b = 0; b < B; b++) {
            block_dot(L->w + (size_t)n0 * k4 * 4, m->xq + (size_t)b * k4 * 4, k4, chunks, m->acc);
            float s = m->s[b], *o = out + b * out_stride;
            for (int n = n0; n < end; n++) {
                float v = (float)(m->acc[n - n0] - 128 * L->colsum[n]) * (s * L->scale[n]);
                if (L->bias) v += L->bias[n];
                o[n] = add ? o[n] + v : v;
            }
        }
    }
}

/* layer k for all rows; chars (B) feed layer 0 through the table */
static void layer_step(const net *m, int k, const int64_t *chars) {
    int B = m->batch, H = m->hidden, G = m->cell == CELL_LSTM ? 4 : m->cell == CELL_GRU ? 3 : 1;
    size_t row = (size_t)m->layers * H, gh = (size_t)G * H;
    float *a = m->a, *h = m->h + (size_t)k * H;                   /* row b's hk: h + b * row */
    const float *input = m->h + (size_t)(k > 0 ? k - 1 : 0) * H;  /* [h(k-1), hk], or [h0] for layer 0 */
    if (k == 0)
        for (int b = 0; b < B; b++) memcpy(a + b * gh, m->table + (size_t)chars[b] * gh, sizeof(float) * gh);
    if (m->cell == CELL_GRU) {
        float *hp = m->a2;
        if (k > 0) qlinear_apply(m, &m->x[k], input, row, a, gh, 0);
        qlinear_apply(m, &m->xh[k], h, row, hp, gh, 0);
        for (int b = 0; b < B; b++) {
            float *ab = a + b * gh, *hpb = hp + b * gh, *hb = h + b * row;
            for (int j = 0; j < 2 * H; j++) ab[j] = 0.5f + 0.5f * tanh_approx(ab[j] + hpb[j]);   /* r, z */
            for (int j = 0; j < H; j++) {
                float n = tanh_approx(ab[2 * H + j] + ab[j] * hpb[2 * H + j]);
                hb[j] = n + ab[H + j] * (hb[j] - n);
            }
        }
        return;
    }
    qlinear_apply(m, &m->xh[k], input, row, a, gh, k == 0);
    for (int b = 0; b < B; b++) {
        float *ab = a + b * gh, *hb = h + b * row;
        if (m->cell == CELL_RNN) {
            for (int j = 0; j < H; j++) hb[j] = tanh_approx(ab[j]);
            continue;
        }
        float *cb = m->c + ((size_t)k * B + b) * H;
        tanh_inplace(ab, 4 * H);  /* gates i, f, o (columns halved: sigmoid = 0.5 + 0.5 tanh), then g */
        for (int j = 0; j < H; j++) {
            float i = 0.5f + 0.5f * ab[j], f = 0.5f + 0.5f * ab[H + j], o = 0.5f + 0.5f * ab[2 * H + j];
            float c = f * cb[j] + i * ab[3 * H + j];
            cb[j] = c;
            hb[j] = o * tanh_approx(c);
        }
    }
}

/* logits (B, V) = h_top (B, H) @ head_w + head_b; head_w is (H, V) so that the inner loop runs
 * over independent outputs and vectorizes (a dot product would be a serial float sum) */
static void head(const net *m, float *logits) {
    int H = m->hidden, V = m->vocab;
    for (int b = 0; b < m->batch; b++) {
        const float *h_top = m->h + ((size_t)b * m->layers + m->layers - 1) * H;
        float *out = logits + (size_t)b * V;
        memcpy(out, m->head_b, sizeof(float) * V);
        for (int j = 0; j < H; j++) {
            const float *w = m->head_w + (size_t)j * V;
            float hj = h_top[j];
            for (int v = 0; v < V; v++) out[v] += hj * w[v];
        }
    }
}

static void step(const net *m, const int64_t *chars, float *logits) {
    for (int k = 0; k < m->layers; k++) layer_step(m, k, chars);
    head(m, logits);
}

/* Feed chars (T, B) time-major (checked: each in [0, V)); logits (T, B, V), or NULL to keep only the state. */
int charrnn_feed(const net *m, const int64_t *chars, int32_t T, float *logits) {
    size_t B = m->batch, V = m->vocab;
    for (size_t i = 0; i < (size_t)T * B; i++)
        if (chars[i] < 0 || chars[i] >= (int64_t)V) return -1;
    for (int t = 0; t < T; t++) {
        if (logits) step(m, chars + t * B, logits + t * B * V);
        else {
            for (int k = 0; k < m->layers; k++) layer_step(m, k, chars + t * B);
        }
    }
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

int charrnn_has_vnni(void) { return CHARRNN_VNNI; }
