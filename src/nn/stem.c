/* stem.c: direct kernels for 3-D convolutions with one input channel: MedicalNet's stem, 1->64 k7 s2 p3.
 *
 * On the GEMM path such a layer unfolds 343 taps per output voxel (vol2col), multiplies a (voxels x 343) by
 * (343 x 64) matrix and transposes the channels-last product back: the unfold and the transpose took a quarter of
 * the stem's time, and with only 64 columns BLIS ran the product at two thirds of its peak.  Here nothing is
 * unfolded.  The output is cut into items of one output row segment (sample, z, y, STEM_SEG consecutive x); an item
 * copies the kd*kh input rows its window reads into zero-padded row windows (this is all the padding logic), lists
 * its taps as pointers into them, and runs a register-blocked kernel:
 *   forward           y[o][k]  += w[tap][k] x(tap, o)        6 outputs x (4 or 2) vectors of channels per block
 *   backward-weights  dw[tap][k] += x(tap, o) dy[o][k]       6 taps x (4 or 2) vectors of channels per block
 * with the channels in the vector lanes (the input has one channel, so an input value is a broadcast), the weights
 * tap-major (w[tap][k], a 88 KiB copy in the workspace for 343 x 64) and dy transposed per item into a small
 * channels-last block.  Every output is a fixed sequence of FMAs, and the weight gradient is summed over a fixed
 * number of item chunks (STEM_CHUNKS, each one thread's) in chunk order, so results do not depend on the thread
 * count.  The kernels are compiled for AVX-512F and for AVX2+FMA (stem_kernel.h, with intrinsics) and the
 * CPU picks; without either, or with MEDNET_CONV_ALGO=gemm, the layer takes the GEMM path.
 *
 * Backward-data stays on the GEMM path: the first layer of a network never needs it.
 */
#include "nn/stem.h"

#include <stdint.h>
#include <string.h>

#include "nn/vol2col.h"
#include "nn/winograd.h"

#define STEM_SEG 48     /* outputs per item along x (a multiple of STEM_R) */
#define STEM_R 6        /* outputs (forward) or taps (backward-weights) per register block */
#define STEM_MAXWIN 8192 /* floats of row windows per item: (kd*kh + 1) * (STEM_SEG*sw + kw) */
#define STEM_MAXTAP 512 /* taps per item, padded to a multiple of STEM_R */
#define STEM_CHUNKS 16  /* fixed item chunks of the weight gradient */

typedef struct stem_geom {
    int N, K, in[3], out[3], k[3], s[3], p[3];
    int taps, nseg, wl; /* kd*kh*kw, items per output row, window row length */
    long items;
} stem_geom;

/* One item's row windows and tap list. */
typedef struct stem_item {
    int n, oz, oy, ox0, nox;
    int ntap_real, ntap; /* taps reading in-volume rows; padded to a multiple of STEM_R */
    const float *src[STEM_MAXTAP];
    int tap[STEM_MAXTAP];
    float win[STEM_MAXWIN];
} stem_item;

static int stem_geom_init(stem_geom *g, const mn_conv3d *l, const mn_shape *in, const mn_shape *out)
{
    g->N = in->n;
    g->K = l->cout;
    const int ie[3] = {in->d, in->h, in->w}, oe[3] = {out->d, out->h, out->w};
    for (int i = 0; i < 3; i++) {
        g->in[i] = ie[i];
        g->out[i] = oe[i];
        g->k[i] = l->k[i];
        g->s[i] = l->s[i];
        g->p[i] = l->p[i];
    }
    g->taps = l->k[0] * l->k[1] * l->k[2];
    g->nseg = (oe[2] + STEM_SEG - 1) / STEM_SEG;
    g->wl = STEM_SEG * l->s[2] + l->k[2];
    g->items = (long)in->n * oe[0] * oe[1] * g->nseg;
    return (size_t)(l->k[0] * l->k[1] + 1) * (size_t)g->wl <= STEM_MAXWIN &&
           g->taps + STEM_R <= STEM_MAXTAP;
}

static void stem_item_init(const stem_geom *g, const float *x, long i, stem_item *it)
{
    const int seg = (int)(i % g->nseg);
    long r = i / g->nseg;
    it->oy = (int)(r % g->out[1]);
    r /= g->out[1];
    it->oz = (int)(r % g->out[0]);
    it->n = (int)(r / g->out[0]);
    it->ox0 = seg * STEM_SEG;
    it->nox = g->out[2] - it->ox0 < STEM_SEG ? g->out[2] - it->ox0 : STEM_SEG;
    const int W = g->in[2], wl = g->wl, ix0 = it->ox0 * g->s[2] - g->p[2];
    /* Window columns j read x index ix0 + j; those inside the row form [jlo, jhi) (empty when the window lies in the
     * padding, which may be wider than the window). */
    int jlo = ix0 < 0 ? -ix0 : 0, jhi = W - ix0 < wl ? W - ix0 : wl;
    if (jlo > wl) jlo = wl;
    if (jhi < jlo) jhi = jlo;
    int nw = 0, nt = 0;
    for (int tz = 0; tz < g->k[0]; tz++) {
        const int iz = it->oz * g->s[0] - g->p[0] + tz;
        if (iz < 0 || iz >= g->in[0]) continue;
        for (int ty = 0; ty < g->k[1]; ty++) {
            const int iy = it->oy * g->s[1] - g->p[1] + ty;
            if (iy < 0 || iy >= g->in[1]) continue;
            float *w = it->win + (size_t)nw++ * wl;
            const float *xr = x + (((size_t)it->n * g->in[0] + iz) * g->in[1] + iy) * W;
            memset(w, 0, (size_t)jlo * sizeof *w);
            if (jhi > jlo) memcpy(w + jlo, xr + ix0 + jlo, (size_t)(jhi - jlo) * sizeof *w);
            memset(w + jhi, 0, (size_t)(wl - jhi) * sizeof *w);
            for (int tx = 0; tx < g->k[2]; tx++) {
                it->src[nt] = w + tx;
                it->tap[nt++] = (tz * g->k[1] + ty) * g->k[2] + tx;
            }
        }
    }
    it->ntap_real = nt;
    float *zero = it->win + (size_t)nw * wl;
    memset(zero, 0, (size_t)wl * sizeof *zero);
    while (nt % STEM_R) {
        it->src[nt] = zero;
        it->tap[nt++] = g->taps; /* the spare slot */
    }
    it->ntap = nt;
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define STEM_HAVE_KERNELS 1

#include <immintrin.h>

#define STEM_SFX avx512
#define STEM_TARGET "avx512f,fma"
#define STEM_VL 16
#define STEM_KV 4
#define STEM_VT __m512
#define STEM_LOADU _mm512_loadu_ps
#define STEM_STOREU _mm512_storeu_ps
#define STEM_SET1 _mm512_set1_ps
#define STEM_ZERO _mm512_setzero_ps
#define STEM_FMA _mm512_fmadd_ps
#define STEM_ADD _mm512_add_ps
#include "nn/stem_kernel.h"
#undef STEM_SFX
#undef STEM_TARGET
#undef STEM_VL
#undef STEM_KV
#undef STEM_VT
#undef STEM_LOADU
#undef STEM_STOREU
#undef STEM_SET1
#undef STEM_ZERO
#undef STEM_FMA
#undef STEM_ADD

#define STEM_SFX avx2
#define STEM_TARGET "avx2,fma"
#define STEM_VL 8
#define STEM_KV 2
#define STEM_VT __m256
#define STEM_LOADU _mm256_loadu_ps
#define STEM_STOREU _mm256_storeu_ps
#define STEM_SET1 _mm256_set1_ps
#define STEM_ZERO _mm256_setzero_ps
#define STEM_FMA _mm256_fmadd_ps
#define STEM_ADD _mm256_add_ps
#include "nn/stem_kernel.h"
#else
#define STEM_HAVE_KERNELS 0
#endif

/* ---- instruction set ------------------------------------------------------------------------------------------ */

static int stem_cpu_has(int isa)
{
    if (isa == MN_STEM_ISA_NONE) return 1;
#if STEM_HAVE_KERNELS
    __builtin_cpu_init();
    if (isa == MN_STEM_ISA_AVX512) return __builtin_cpu_supports("avx512f") != 0;
    if (isa == MN_STEM_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

static int stem_isa_cur = -1;

int mn_stem_isa(void)
{
    if (stem_isa_cur < 0)
        stem_isa_cur = stem_cpu_has(MN_STEM_ISA_AVX512) ? MN_STEM_ISA_AVX512
                       : stem_cpu_has(MN_STEM_ISA_AVX2) ? MN_STEM_ISA_AVX2
                                                        : MN_STEM_ISA_NONE;
    return stem_isa_cur;
}

int mn_stem_set_isa(int isa)
{
    if (isa < MN_STEM_ISA_NONE || isa > MN_STEM_ISA_AVX512 || !stem_cpu_has(isa)) return -1;
    const int prev = mn_stem_isa();
    stem_isa_cur = isa;
    return prev;
}

const char *mn_stem_isa_name(int isa)
{
    return isa == MN_STEM_ISA_AVX512 ? "avx512" : isa == MN_STEM_ISA_AVX2 ? "avx2" : "none";
}

static int stem_vl(int isa) { return isa == MN_STEM_ISA_AVX512 ? 16 : isa == MN_STEM_ISA_AVX2 ? 8 : 0; }

/* ---- entry points --------------------------------------------------------------------------------------------- */

int mn_stem_eligible(const mn_conv3d *l, const mn_shape *in)
{
    if (!l || !in || !mn_shape_valid(in) || l->cin != 1 || in->c != 1) return 0;
    const int isa = mn_stem_isa(), vl = stem_vl(isa);
    if (!vl || l->cout % vl || l->cout > MN_STEM_MAX_COUT) return 0;
    if (mn_wino_env_force() == MN_CONV_ALGO_GEMM) return 0;
    mn_shape out;
    if (mn_conv3d_out_shape(l, in, &out) != MN_OK) return 0;
    for (int i = 0; i < 3; i++)
        if (l->dil[i] != 1 || l->s[i] < 1 || l->p[i] < 0 || l->k[i] < 1) return 0;
    stem_geom g;
    return stem_geom_init(&g, l, in, &out);
}

size_t mn_stem_workspace_floats(const mn_conv3d *l, const mn_shape *in)
{
    if (!mn_stem_eligible(l, in)) return 0;
    const size_t taps = (size_t)l->k[0] * l->k[1] * l->k[2], K = (size_t)l->cout;
    const size_t fwd = taps * K, bww = (size_t)STEM_CHUNKS * (taps + 1) * K;
    return fwd > bww ? fwd : bww;
}

mn_err mn_stem_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                       float *ws)
{
    stem_geom g;
    MN_CHECK(mn_stem_eligible(l, in) && stem_geom_init(&g, l, in, out), MN_ERR_ARG,
             "conv3d %d->%d: single-channel direct kernel called for a layer it cannot run", l->cin, l->cout);
    mn_weights_tap_major(l->w, g.K, 1, g.taps, ws); /* wt[t][k] = w[k][t] */
#if STEM_HAVE_KERNELS
    if (mn_stem_isa() == MN_STEM_ISA_AVX512)
        stem_fwd_avx512(&g, x, ws, l->b, y);
    else
        stem_fwd_avx2(&g, x, ws, l->b, y);
#else
    (void)x;
    (void)y;
#endif
    return MN_OK;
}

mn_err mn_stem_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                const float *dy, float *ws)
{
    stem_geom g;
    MN_CHECK(mn_stem_eligible(l, in) && stem_geom_init(&g, l, in, out) && l->dw, MN_ERR_ARG,
             "conv3d %d->%d: single-channel direct kernel called for a layer it cannot run", l->cin, l->cout);
#if STEM_HAVE_KERNELS
    if (mn_stem_isa() == MN_STEM_ISA_AVX512)
        stem_bww_avx512(&g, x, dy, ws);
    else
        stem_bww_avx2(&g, x, dy, ws);
#else
    (void)x;
    (void)dy;
#endif
    const int K = g.K, T = g.taps;
    const size_t pstride = (size_t)(T + 1) * K;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++)
        for (int t = 0; t < T; t++) {
            float s = 0.0f;
            for (int c = 0; c < STEM_CHUNKS; c++) s += ws[(size_t)c * pstride + (size_t)t * K + k];
            l->dw[(size_t)k * T + t] += s;
        }
    return MN_OK;
}
