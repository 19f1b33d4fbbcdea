/* scalelab's CPU decoding kernels, fp32: sl_linear (y = x @ W [+ res] for few rows x), sl_attention (new
 * tokens' attention over the KV cache, with the cache writes) and sl_sample (temperature / top-k / top-p draws).
 *
 * Built and loaded by scalelab/lm/inference/cpu_kernels.py (cc -O3 -march=native -fopenmp, on the machine that runs it).
 * Why: a decode step multiplies 1-8 activation rows by each weight matrix. oneDNN's packed linear, torch's best
 * CPU path for that, costs ~12-15 us a call before any arithmetic (256 x 256 at 8 rows: 14.8 us, of which ~6 us
 * is oneDNN's own execution), and a step makes 17 such calls on the demo model. sl_linear is the plain
 * register-blocked loop: W is packed into column panels of PANEL floats, (ceil(N / PANEL), K, PANEL), zero padded,
 * so one panel streams through contiguously; each panel keeps MR rows x 2 vector accumulators in registers and
 * does MR x 2 fused multiply-adds per two vector loads of W. Work is shared out with OpenMP, which links to the
 * libgomp that torch loaded (same soname), so it runs on torch's own thread team.
 *
 * GCC vector extensions, not intrinsics: -march=native picks AVX-512 (16 floats a vector), AVX2 (8) or NEON (4).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#if defined(__AVX512F__)
#define VEC 16
#define MAXR 8
#elif defined(__AVX__)
#define VEC 8
#define MAXR 4 /* 16 vector registers: 4 rows x 2 accumulators + 2 weight vectors + 1 broadcast */
#else
#define VEC 4
#define MAXR 4
#endif
#define PANEL (2 * VEC)

typedef float vec __attribute__((vector_size(VEC * sizeof(float))));

static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }

typedef int ivec __attribute__((vector_size(VEC * sizeof(int))));

/* The sum of a vector's lanes, as a tree (log2(VEC) dependent adds, not VEC). */
static inline float hsum(vec v) {
    float t[VEC];
    memcpy(t, &v, sizeof t);
    for (int w = VEC / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) t[i] += t[i + w];
    return t[0];
}

/* e^x for x <= 0 (softmax after subtracting the maximum), lane by lane: x = n ln2 + r, |r| <= ln2 / 2, e^r by
 * Cephes' expf polynomial (about 1 ulp), times 2^n built in the exponent bits; below -87 it is 0. */
static inline vec vexp(vec x) {
    const vec lo = (vec){0} - 87.0f;
    ivec under = x < lo;
    x = (vec)((ivec)x & ~under) + (vec)((ivec)lo & under);
    vec n = x * 1.44269504088896341f + 12582912.0f;  /* round to nearest: the magic 1.5 * 2^23 */
    ivec ni = (ivec)n - (ivec)((vec){0} + 12582912.0f);
    n = n - 12582912.0f;
    vec r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vec p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vec scale = (vec)((ni + 127) << 23);
    return (vec)((ivec)(p * scale) & ~under);
}

int sl_panel_width(void) { return PANEL; }
int sl_max_rows(void) { return MAXR; }

/* One panel for MR rows: out (MR rows, PANEL columns, row stride ldo) = x @ panel (+ res, same layout). */
#define PANEL_KERNEL(MR)                                                                                        \
    static void panel_##MR(const float *x, long ldx, const float *w, long K, const float *res, float *out,      \
                           long ldo) {                                                                          \
        vec a0[MR], a1[MR];                                                                                     \
        for (int r = 0; r < MR; r++) {                                                                          \
            if (res) { a0[r] = load(res + r * ldo); a1[r] = load(res + r * ldo + VEC); }                        \
            else { a0[r] = (vec){0}; a1[r] = (vec){0}; }                                                        \
        }                                                                                                       \
        for (long k = 0; k < K; k++) {                                                                          \
            vec w0 = load(w + k * PANEL), w1 = load(w + k * PANEL + VEC);                                       \
            for (int r = 0; r < MR; r++) {                                                                      \
                float xr = x[r * ldx + k];                                                                      \
                a0[r] += xr * w0;                                                                               \
                a1[r] += xr * w1;                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        for (int r = 0; r < MR; r++) { store(out + r * ldo, a0[r]); store(out + r * ldo + VEC, a1[r]); }      \
    }
PANEL_KERNEL(1)
PANEL_KERNEL(2)
PANEL_KERNEL(3)
PANEL_KERNEL(4)
#if MAXR == 8
PANEL_KERNEL(5)
PANEL_KERNEL(6)
PANEL_KERNEL(7)
PANEL_KERNEL(8)
#endif

typedef void (*panel_fn)(const float *, long, const float *, long, const float *, float *, long);
static const panel_fn PANELS[] = {0, panel_1, panel_2, panel_3, panel_4,
#if MAXR == 8
                                  panel_5, panel_6, panel_7, panel_8
#endif
};

/* y = x @ W (+ res). x (M, K), y and res (M, N): row-major and contiguous; wp: W packed by sl_pack. */
void sl_linear(const float *x, const float *wp, const float *res, float *y, long M, long K, long N, int threads) {
    long panels = (N + PANEL - 1) / PANEL;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && panels > 1)
    for (long p = 0; p < panels; p++) {
        long c = p * PANEL, width = N - c < PANEL ? N - c : PANEL;
        const float *w = wp + (size_t)p * K * PANEL;
        for (long r0 = 0; r0 < M; r0 += MAXR) {
            long mr = M - r0 < MAXR ? M - r0 : MAXR;
            if (width == PANEL) {
                PANELS[mr](x + r0 * K, K, w, K, res ? res + r0 * N + c : NULL, y + r0 * N + c, N);
            } else { /* the last, partial panel: through a full-width scratch tile */
                float tile[MAXR * PANEL], rtile[MAXR * PANEL];
                if (res)
                    for (long r = 0; r < mr; r++) memcpy(rtile + r * PANEL, res + (r0 + r) * N + c, width * sizeof(float));
                PANELS[mr](x + r0 * K, K, w, K, res ? rtile : NULL, tile, PANEL);
                for (long r = 0; r < mr; r++) memcpy(y + (r0 + r) * N + c, tile + r * PANEL, width * sizeof(float));
            }
        }
    }
}

/* Pack W (K, N), row-major, into (ceil(N / PANEL), K, PANEL) panels, zero padded; wp holds panels * K * PANEL. */
void sl_pack(const float *w, float *wp, long K, long N) {
    long panels = (N + PANEL - 1) / PANEL;
    for (long p = 0; p < panels; p++) {
        long c = p * PANEL, width = N - c < PANEL ? N - c : PANEL;
        for (long k = 0; k < K; k++) {
            float *dst = wp + ((size_t)p * K + k) * PANEL;
            memcpy(dst, w + k * N + c, width * sizeof(float));
            memset(dst + width, 0, (PANEL - width) * sizeof(float));
        }
    }
}

/* Attention over the KV cache for N packed queries: the new tokens of a decode step (one per cache row), of a
 * prompt (consecutive positions of one row), or both in one call.
 *
 * Query i's key and value (knew / vnew: (N, Hkv, hd) at row strides ldk / ldv floats) are first all written into
 * cache row rows[i] at position pos[i]; then each query head h (q: (N, H, hd) at row stride ldq) attends to that
 * row's positions 0..pos[i] of its key/value head h / (H / Hkv), so the queries of one prompt are causal and rows
 * at different lengths need no mask. rows NULL: query i uses cache row i. Caches: (R, Hkv, T, hd), contiguous.
 * out: (N, H, hd), contiguous. scratch: threads * T floats. Softmax in fp32 with the running maximum subtracted,
 * as torch's. Returns -1 (and writes nothing) when a row lies outside 0..R-1 or a position outside 0..T-1. */
int sl_attention(const float *q, long ldq, const float *knew, long ldk, const float *vnew, long ldv, float *kc,
                 float *vc, const long *rows, const long *pos, long N, long R, long H, long Hkv, long hd, long T,
                 float scale, float *out, float *scratch, int threads) {
    for (long i = 0; i < N; i++)
        if (pos[i] < 0 || pos[i] >= T || (rows ? rows[i] : i) < 0 || (rows ? rows[i] : i) >= R) return -1;
    for (long i = 0; i < N; i++)
        for (long g = 0; g < Hkv; g++) {
            size_t at = ((size_t)((rows ? rows[i] : i) * Hkv + g) * T + pos[i]) * hd;
            memcpy(kc + at, knew + i * ldk + g * hd, hd * sizeof(float));
            memcpy(vc + at, vnew + i * ldv + g * hd, hd * sizeof(float));
        }
    long group = H / Hkv, chunks = hd / VEC;
    /* (static, 1): round robin, so a prompt's queries (each one position longer than the last) share out evenly */
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1 && N * H > 1)
    for (long ih = 0; ih < N * H; ih++) {
        long i = ih / H, h = ih % H, L = pos[i] + 1, r = rows ? rows[i] : i;
        const float *qv = q + i * ldq + h * hd;
        const float *K = kc + (size_t)(r * Hkv + h / group) * T * hd, *V = vc + (size_t)(r * Hkv + h / group) * T * hd;
        float *s = scratch + (size_t)omp_get_thread_num() * T, m = -__builtin_inff(), sum = 0.0f;
        for (long j = 0; j < L; j++) {
            vec acc = (vec){0};
            for (long c = 0; c < chunks; c++) acc += load(qv + c * VEC) * load(K + j * hd + c * VEC);
            s[j] = hsum(acc) * scale;
            m = s[j] > m ? s[j] : m;
        }
        long j = 0;
        vec vsum = (vec){0};
        for (; j + VEC <= L; j += VEC) {
            vec e = vexp(load(s + j) - m);
            store(s + j, e);
            vsum += e;
        }
        for (; j < L; j++) { s[j] = __builtin_expf(s[j] - m); sum += s[j]; }
        sum += hsum(vsum);
        float inv = 1.0f / sum;
        vec o[chunks > 0 ? chunks : 1];
        for (long c = 0; c < chunks; c++) o[c] = (vec){0};
        for (long j = 0; j < L; j++) {
            float p = s[j] * inv;
            for (long c = 0; c < chunks; c++) o[c] += p * load(V + j * hd + c * VEC);
        }
        for (long c = 0; c < chunks; c++) store(out + (size_t)ih * hd + c * VEC, o[c]);
    }
    return 0;
}

/* One draw per row of logits (n, V), fp32: probabilities exp((x - max) * inv_temp[r]) over the entries >= thr[r]
 * (a top-k threshold; -inf keeps all), cut to the nucleus when top_p[r] < 1 (the largest entries, in order, while
 * the mass before each is below top_p of the total; ties with the last one kept stay), inverted at u[r] * their
 * total in vocabulary order: the first entry whose running sum exceeds it. Sums run over blocks of VEC entries,
 * then within the block found. The nucleus is found without a full sort: the mass of each value bucket (a
 * float's top 12 bits), walked from the top to the bucket where the cut falls, whose few entries are sorted.
 * Rows are independent, so a row draws the same token in any batch. A row whose total is not a positive finite
 * number (NaN logits) takes its first largest logit. scratch: 2 * n * V floats. */
static int descending(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static inline unsigned bucket(float v) {
    unsigned u;
    memcpy(&u, &v, sizeof u);
    u >>= 20;
    return u > 1023 ? 1023 : u;
}

/* The smallest value kept by a top_p cut of e[0..V) (positive entries; total their sum), or 0 to keep all. */
static float nucleus_cut(const float *e, long V, float total, float top_p, float *vals) {
    float need = top_p * total, mass[1024] = {0}, above = 0.0f;
    for (long i = 0; i < V; i++)
        if (e[i] > 0.0f) mass[bucket(e[i])] += e[i];
    int b = 1023;
    for (; b >= 0; b--) {
        if (above + mass[b] >= need) break;
        above += mass[b];
    }
    if (b < 0) return 0.0f; /* rounding: the buckets never reached the mass asked for */
    long count = 0;
    for (long i = 0; i < V; i++)
        if (e[i] > 0.0f && (int)bucket(e[i]) == b) vals[count++] = e[i];
    qsort(vals, count, sizeof(float), descending);
    float cut = 0.0f;
    for (long i = 0; i < count && above < need; i++) { cut = vals[i]; above += vals[i]; }
    return cut;
}

void sl_sample(const float *logits, long n, long V, const float *inv_temp, const float *thr, const float *top_p,
               const float *u, long *out, float *scratch, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && n > 1)
    for (long r = 0; r < n; r++) {
        const float *x = logits + r * V;
        float *e = scratch + r * V, m = -__builtin_inff(), t = inv_temp[r], lo = thr[r];
        long nb = V / VEC, j = 0, best = 0;
        vec mv = (vec){0} - __builtin_inff();
        for (long b = 0; b < nb; b++) {
            vec xv = load(x + b * VEC);
            ivec gt = xv > mv;
            mv = (vec)(((ivec)xv & gt) | ((ivec)mv & ~gt));
        }
        for (int i = 0; i < VEC; i++) m = mv[i] > m ? mv[i] : m;
        for (long i = nb * VEC; i < V; i++) m = x[i] > m ? x[i] : m;
        while (best < V - 1 && !(x[best] == m)) best++;
        float total = 0.0f;
        for (long b = 0; b < nb; b++, j += VEC) {
            vec xv = load(x + j);
            vec ev = vexp((xv - m) * t);
            ev = (vec)((ivec)ev & (ivec)(xv >= lo));
            store(e + j, ev);
            total += hsum(ev);
        }
        for (; j < V; j++) { e[j] = x[j] >= lo ? __builtin_expf((x[j] - m) * t) : 0.0f; total += e[j]; }
        out[r] = best;
        if (!(total > 0.0f) || total > 3.0e38f) continue;
        if (top_p[r] < 1.0f) {
            float cut = nucleus_cut(e, V, total, top_p[r], scratch + (n + r) * V);
            if (cut > 0.0f) {
                total = 0.0f;
                for (long i = 0; i < V; i++) {
                    if (e[i] < cut) e[i] = 0.0f;
                    total += e[i];
                }
            }
        }
        float target = u[r] * total, run = 0.0f;
        long k = 0;
        for (long b = 0; b < nb; b++, k += VEC) {  /* the block where the running sum passes the target */
            float s = hsum(load(e + k));
            if (run + s > target) break;
            run += s;
        }
        for (; k < V; k++) {
            run += e[k];
            if (run > target && e[k] > 0.0f) { out[r] = k; break; }
        }
        /* rounding left the target unreached (u * total ~ total): keep the most likely entry */
    }
}
