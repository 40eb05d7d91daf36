/* direct.c: channel-blocked direct kernels for 3-D convolutions with several input channels.
 *
 * The GEMM path unfolds 27 taps per output voxel (vol2col) before BLIS multiplies, and Winograd sends its
 * transformed tiles through memory and back; oneDNN's direct kernels ran MedicalNet's ordinary 3x3x3 layers 1.5-2x
 * faster than either on 2 threads.  Here nothing is unfolded.  The output channels sit in the vector lanes, an input
 * value is a broadcast, and each register block holds up to 6 outputs (or taps) x 4 vectors (AVX-512) or 2 (AVX2):
 *
 *   forward           y[o][k]   += w[c][t][k] x[c](o, t)       blocks of 6 outputs along x by 64 (16) channels
 *   backward-data     the forward kernel run on dy, with the taps flipped and cin in the lanes (stride 1)
 *   backward-weights  dw[c][t][k] += x[c](o, t) dy[o][k]         blocks of 6 taps by 64 (16) channels
 *
 * Padding: the input is copied once per call with its rows padded in x (p on each side); taps whose z or y falls in
 * the padding are left out of the tap lists, and so are x taps that read only padding for a whole block.  Dilation
 * and stride are just the offsets of those lists.
 *
 * Forward items are (sample, block of 64 output channels, output plane, rows of that plane); an item runs the
 * input channels in blocks of DC_CB (the block's weights, 4 x 27 x 64 floats = 27 KiB, stay in L1 while every
 * output row of the item uses them; blocks of 16, whose 108 KiB streamed from L2 for every register block, ran the
 * dilated 14^3 layers 5-9% slower), keeps its outputs channels-last in a stack block (at most DC_OBUF floats) and
 * writes them to the NCDHW output at the end, with the bias.  Backward-weights items are (DC_BWC input channels, block of
 * 64 output channels): an item owns its part of dw, reads dy channels-last (transposed once per call) and sums over
 * samples and planes in order.  No result depends on the thread count or the schedule.
 *
 * The kernels are compiled for AVX-512F and for AVX2+FMA (direct_kernel.h, intrinsics) and the CPU picks (the same
 * choice as the stem's kernels, mn_stem_isa).  Which pass of which layer runs here is conv_choose.c's decision.
 */
#include "nn/direct.h"

#include <limits.h>
#include <string.h>

#include "nn/stem.h"
#include "nn/vol2col.h"

#define DC_R 6        /* outputs (forward) or taps (backward-weights) per register block, at most */
#define DC_CB 4      /* input channels per forward channel block (its weights stay in L1) */
#define DC_CSUB 4     /* input channels per partial sum (accuracy: see direct_kernel.h) */
#define DC_BWROWS 128 /* backward-weights: outputs per partial sum, at least (whole rows) */
#define DC_OBUF 16384 /* floats of a forward item's channels-last output block (rows x ox x 64) */
#define DC_MAXT 64    /* taps per kernel (4x4x4) */
#define DC_LISTS 48   /* forward: tap lists an item keeps (rows x blocks per row) */
#define DC_LTAPS 27   /* forward: taps per kept list (3x3x3) */
#define DC_BWC 4      /* input channels per backward-weights item */

typedef struct dc_geom {
    int N, C, K; /* samples, reduced-over channels, lane channels */
    int in[3], out[3], k[3], s[3], p[3], d[3];
    int T, wp;       /* taps; row length of the padded input copy */
    size_t cstride;  /* floats per channel of the padded input copy: an odd number of cache lines */
    int flip;        /* backward-data: tap t reads the weights of tap T-1-t */
    int vl, kbmax, nkb; /* floats per vector, lane channels per block (DC_KV vectors), blocks */
    int nrb;         /* forward: row blocks per output plane */
    int nblk;        /* forward: register blocks per output row, at bx0[b] with bR[b] outputs */
    int cache_taps;  /* forward: an item keeps its tap lists (rows x nblk <= DC_LISTS, T <= DC_LTAPS) */
    short bx0[MN_DIRECT_MAX_OX], bR[MN_DIRECT_MAX_OX];
    long items;
} dc_geom;

typedef struct dc_fwd_item {
    int n, k0, kv, oz, oy0, oy1;
} dc_fwd_item;

typedef struct dc_bww_item {
    int c0, c1, k0, kv;
} dc_bww_item;

/* Up to DC_R taps of one input channel that share the output rows [oy0, oy1) they read inside the volume. */
typedef struct dc_bww_group {
    int R, oy0, oy1;
    int tap[DC_R];
    size_t xoff[DC_R]; /* into the padded input, at (oy0, ox 0) */
} dc_bww_group;

static int dc_vl(int isa) { return isa == MN_STEM_ISA_AVX512 ? 16 : isa == MN_STEM_ISA_AVX2 ? 8 : 0; }
static int dc_kv(int isa) { return isa == MN_STEM_ISA_AVX512 ? 4 : 2; }

/* 1 when x tap tx reads inside the row for some output of [ox0, ox0 + R). */
static int dc_tx_live(const dc_geom *g, int tx, int ox0, int R)
{
    const int lo = ox0 * g->s[2] - g->p[2] + tx * g->d[2], hi = lo + (R - 1) * g->s[2];
    return hi >= 0 && lo < g->in[2];
}

/* Blocks of at most DC_R outputs covering [x0, x1) evenly, appended at *nb; returns the cost: per block, its live x
 * taps times its outputs (at least 3: a narrower block runs at a fraction of the FMA rate). */
static int dc_split(dc_geom *g, int x0, int x1, int *nb)
{
    const int n = (x1 - x0 + DC_R - 1) / DC_R;
    int cost = 0;
    for (int b = 0; b < n; b++) {
        const int a = x0 + (x1 - x0) * b / n, R = x0 + (x1 - x0) * (b + 1) / n - a;
        int live = 0;
        for (int tx = 0; tx < g->k[2]; tx++) live += dc_tx_live(g, tx, a, R);
        g->bx0[*nb] = (short)a;
        g->bR[(*nb)++] = (short)R;
        cost += live * (R > 3 ? R : 3);
    }
    return cost;
}

/* The register blocks of an output row: even blocks over the row, or even blocks over the segments between the
 * outputs where an x tap enters or leaves the row, whichever executes fewer FMAs.  With dilation 4 on 14 outputs
 * the segments [0,4) [4,10) [10,14) leave out every tap that would read only padding (5+5+4 blocks compute 42 tap
 * rows, 4+6+4 compute 34); with padding 1 the even blocks win. */
static int dc_same_taps(const dc_geom *g, int xa, int xb)
{
    for (int tx = 0; tx < g->k[2]; tx++)
        if (dc_tx_live(g, tx, xa, 1) != dc_tx_live(g, tx, xb, 1)) return 0;
    return 1;
}

static void dc_row_blocks(dc_geom *g)
{
    const int Ox = g->out[2];
    dc_geom cut = *g;
    int nb = 0, ncut = 0, cost = 0;
    const int even = dc_split(g, 0, Ox, &nb);
    for (int x0 = 0; x0 < Ox;) {
        int x1 = x0 + 1;
        while (x1 < Ox && dc_same_taps(g, x0, x1)) x1++;
        cost += dc_split(&cut, x0, x1, &ncut);
        x0 = x1;
    }
    g->nblk = nb;
    if (cost < even) {
        memcpy(g->bx0, cut.bx0, sizeof g->bx0);
        memcpy(g->bR, cut.bR, sizeof g->bR);
        g->nblk = ncut;
    }
}

static size_t dc_in_floats(const dc_geom *g) { return (size_t)g->N * g->C * g->cstride; }

static size_t dc_w_floats(const dc_geom *g) { return (size_t)g->T * g->C * g->K; }

/* The geometry of a pass: forward and backward-weights read x (C = cin, K = cout); backward-data runs the forward
 * kernel on dy (C = cout, K = cin, stride 1, padding dilation*(kernel-1) - p, flipped taps). */
static void dc_geom_init(dc_geom *g, const mn_conv3d *l, const mn_shape *in, const mn_shape *out, int pass)
{
    const int isa = mn_stem_isa(), vl = dc_vl(isa);
    const int ie[3] = {in->d, in->h, in->w}, oe[3] = {out->d, out->h, out->w};
    const int bwd_data = pass == MN_CONV_PASS_BWD_DATA;
    memset(g, 0, sizeof *g);
    g->N = in->n;
    g->C = bwd_data ? l->cout : l->cin;
    g->K = bwd_data ? l->cin : l->cout;
    g->T = l->k[0] * l->k[1] * l->k[2];
    for (int i = 0; i < 3; i++) {
        g->k[i] = l->k[i];
        g->d[i] = l->dil[i];
        g->in[i] = bwd_data ? oe[i] : ie[i];
        g->out[i] = bwd_data ? ie[i] : oe[i];
        g->s[i] = bwd_data ? 1 : l->s[i];
        g->p[i] = bwd_data ? l->dil[i] * (l->k[i] - 1) - l->p[i] : l->p[i];
    }
    g->wp = g->in[2] + 2 * g->p[2];
    g->flip = bwd_data;
    /* Channels a power-of-two number of cache lines apart (8^3 rows padded to 16: 4 KiB) would put the rows the
     * forward kernel reads from 16 channels into one L1 set. */
    size_t lines = ((size_t)g->in[0] * g->in[1] * g->wp + 15) / 16;
    if (!(lines & 1)) lines++;
    g->cstride = lines * 16;
    g->vl = vl ? vl : 1;
    g->kbmax = vl ? dc_kv(isa) * vl : 1;
    g->nkb = (g->K + g->kbmax - 1) / g->kbmax;
    if (pass == MN_CONV_PASS_BWD_WEIGHTS) {
        g->items = (long)((g->C + DC_BWC - 1) / DC_BWC) * g->nkb;
    } else {
        if (g->out[2] <= MN_DIRECT_MAX_OX) dc_row_blocks(g); /* else not eligible */
        int rows = DC_OBUF / (g->out[2] * g->kbmax);
        /* An item's tap lists are built once and kept for all its channel blocks when they fit (DC_LISTS lists of
         * up to DC_LTAPS taps): building them per channel block took 5-10% of the forward time. */
        g->cache_taps = g->T <= DC_LTAPS && g->nblk >= 1 && g->nblk <= DC_LISTS;
        if (g->cache_taps && rows > DC_LISTS / g->nblk) rows = DC_LISTS / g->nblk;
        if (rows < 1) rows = 1;
        g->nrb = (g->out[1] + rows - 1) / rows;
        g->items = (long)g->N * g->nkb * g->out[0] * g->nrb;
    }
}

/* ---- items and tap lists (shared by both instruction sets) ---------------------------------------------------- */

static void dc_fwd_item_init(const dc_geom *g, long i, dc_fwd_item *it)
{
    const int rb = (int)(i % g->nrb);
    long r = i / g->nrb;
    it->oz = (int)(r % g->out[0]);
    r /= g->out[0];
    const int kb = (int)(r % g->nkb);
    it->n = (int)(r / g->nkb);
    it->k0 = kb * g->kbmax;
    it->kv = (g->K - it->k0 < g->kbmax ? g->K - it->k0 : g->kbmax) / g->vl;
    it->oy0 = (int)((long)g->out[1] * rb / g->nrb);
    it->oy1 = (int)((long)g->out[1] * (rb + 1) / g->nrb);
}

/* The taps of outputs (oz, oy, ox0 .. ox0+R-1) that read inside the volume: offsets into one channel of the padded
 * input (at the block's first output) and into one reduced channel's packed weights (KB lanes per tap).  Returns
 * their number. */
static int dc_fwd_taps(const dc_geom *g, int oz, int oy, int ox0, int R, int KB, int *xoff, int *woff)
{
    int nt = 0;
    for (int tz = 0; tz < g->k[0]; tz++) {
        const int iz = oz * g->s[0] - g->p[0] + tz * g->d[0];
        if (iz < 0 || iz >= g->in[0]) continue;
        for (int ty = 0; ty < g->k[1]; ty++) {
            const int iy = oy * g->s[1] - g->p[1] + ty * g->d[1];
            if (iy < 0 || iy >= g->in[1]) continue;
            for (int tx = 0; tx < g->k[2]; tx++) {
                if (!dc_tx_live(g, tx, ox0, R)) continue;
                const int lo = ox0 * g->s[2] - g->p[2] + tx * g->d[2];
                const int t = (tz * g->k[1] + ty) * g->k[2] + tx;
                xoff[nt] = (iz * g->in[1] + iy) * g->wp + lo + g->p[2];
                woff[nt++] = t * KB;
            }
        }
    }
    return nt;
}

/* The item's channels-last block to the NCDHW output: y = block + bias, or y += block. */
static void dc_fwd_store(const dc_geom *g, const dc_fwd_item *it, const float *obuf, const float *bias,
                         int accumulate, float *y)
{
    const int KB = it->kv * g->vl;
    const size_t plane = (size_t)g->out[1] * g->out[2], vol = plane * g->out[0];
    const size_t nvox = (size_t)(it->oy1 - it->oy0) * g->out[2];
    for (int kk = 0; kk < KB; kk++) {
        const int k = it->k0 + kk;
        float *yk = y + ((size_t)it->n * g->K + k) * vol + (size_t)it->oz * plane + (size_t)it->oy0 * g->out[2];
        const float *ob = obuf + kk;
        if (accumulate) {
            for (size_t o = 0; o < nvox; o++) yk[o] += ob[o * KB];
        } else {
            const float bk = bias ? bias[k] : 0.0f;
            for (size_t o = 0; o < nvox; o++) yk[o] = ob[o * KB] + bk;
        }
    }
}

static void dc_bww_item_init(const dc_geom *g, long i, dc_bww_item *it)
{
    const int kb = (int)(i % g->nkb), cb = (int)(i / g->nkb);
    it->c0 = cb * DC_BWC;
    it->c1 = it->c0 + DC_BWC < g->C ? it->c0 + DC_BWC : g->C;
    it->k0 = kb * g->kbmax;
    it->kv = (g->K - it->k0 < g->kbmax ? g->K - it->k0 : g->kbmax) / g->vl;
}

/* The tap groups of input channel c, sample n, output plane oz: per ty, the taps (tz, tx) inside the volume in z,
 * cut into groups of at most DC_R, each with the output rows whose y reads inside the volume.  Returns the count. */
static int dc_bww_groups(const dc_geom *g, int n, int c, int oz, dc_bww_group *grp)
{
    int ng = 0;
    const size_t cbase = ((size_t)n * g->C + c) * g->cstride;
    for (int ty = 0; ty < g->k[1]; ty++) {
        const int a = g->p[1] - ty * g->d[1]; /* iy = oy*s - a */
        const int lo = a <= 0 ? 0 : (a + g->s[1] - 1) / g->s[1];
        const int top = g->in[1] - 1 + a; /* oy*s <= top */
        if (top < 0) continue;
        const int hi = top / g->s[1] + 1 < g->out[1] ? top / g->s[1] + 1 : g->out[1];
        if (lo >= hi) continue;
        int tap[DC_MAXT], m = 0;
        size_t off[DC_MAXT];
        for (int tz = 0; tz < g->k[0]; tz++) {
            const int iz = oz * g->s[0] - g->p[0] + tz * g->d[0];
            if (iz < 0 || iz >= g->in[0]) continue;
            for (int tx = 0; tx < g->k[2]; tx++) {
                tap[m] = (tz * g->k[1] + ty) * g->k[2] + tx;
                off[m++] = cbase + ((size_t)iz * g->in[1] + (size_t)(lo * g->s[1] - a)) * g->wp + (size_t)tx * g->d[2];
            }
        }
        const int nq = (m + DC_R - 1) / DC_R;
        for (int q = 0; q < nq; q++) {
            dc_bww_group *gr = &grp[ng++];
            const int t0 = m * q / nq, t1 = m * (q + 1) / nq;
            gr->R = t1 - t0;
            gr->oy0 = lo;
            gr->oy1 = hi;
            for (int r = 0; r < gr->R; r++) {
                gr->tap[r] = tap[t0 + r];
                gr->xoff[r] = off[t0 + r];
            }
        }
    }
    return ng;
}

/* dw[k][c][t] += the item's block dacc[c - c0][t][k - k0]. */
static void dc_bww_store(const dc_geom *g, const dc_bww_item *it, const float *dacc, float *dw)
{
    const int KB = it->kv * g->vl, T = g->T;
    for (int kk = 0; kk < KB; kk++)
        for (int c = it->c0; c < it->c1; c++) {
            float *d = dw + ((size_t)(it->k0 + kk) * g->C + c) * T;
            const float *a = dacc + (size_t)(c - it->c0) * T * KB + kk;
            for (int t = 0; t < T; t++) d[t] += a[(size_t)t * KB];
        }
}

/* The padded input copy: row r of x (W floats; rpc rows per channel) becomes p zeros, the row, zeros (wp floats in
 * all), channels cstride floats apart. */
static void dc_pad_rows(const float *x, long rows, long rpc, int W, int p, int wp, size_t cstride, float *xp)
{
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        float *d = xp + (size_t)(r / rpc) * cstride + (size_t)(r % rpc) * wp;
        memset(d, 0, (size_t)p * sizeof *d);
        memcpy(d + p, x + (size_t)r * W, (size_t)W * sizeof *d);
        memset(d + p + W, 0, (size_t)(wp - p - W) * sizeof *d);
    }
}

static void dc_pad_input(const dc_geom *g, const float *x, float *xp)
{
    const long rpc = (long)g->in[0] * g->in[1];
    dc_pad_rows(x, (long)g->N * g->C * rpc, rpc, g->in[2], g->p[2], g->wp, g->cstride, xp);
}

/* The weights per block of lane channels, contiguous: wp[k0 C T + (c T + t) KB + kk] is the weight of lane channel
 * k0+kk, reduced channel c and tap t (KB the block's lanes).  Forward: w[k0+kk][c][t].  Backward-data (lanes = cin,
 * reduced = cout): w[c][k0+kk][T-1-t]. */
static void dc_pack_weights(const dc_geom *g, const float *w, float *wp)
{
    const int T = g->T, C = g->C, K = g->K;
#pragma omp parallel for collapse(2) schedule(static)
    for (int kb = 0; kb < g->nkb; kb++)
        for (int c = 0; c < C; c++) {
            const int k0 = kb * g->kbmax, KB = K - k0 < g->kbmax ? K - k0 : g->kbmax;
            float *d = wp + (size_t)k0 * C * T + (size_t)c * T * KB;
            for (int kk = 0; kk < KB; kk++) {
                const float *src = g->flip ? w + ((size_t)c * K + k0 + kk) * T : w + ((size_t)(k0 + kk) * C + c) * T;
                for (int t = 0; t < T; t++) d[(size_t)t * KB + kk] = src[g->flip ? T - 1 - t : t];
            }
        }
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define DC_HAVE_KERNELS 1

#include <immintrin.h>

#define DC_SFX avx512
#define DC_TARGET "avx512f,fma"
#define DC_VL 16
#define DC_KV 4
#define DC_VT __m512
#define DC_LOADU _mm512_loadu_ps
#define DC_STOREU _mm512_storeu_ps
#define DC_SET1 _mm512_set1_ps
#define DC_ZERO _mm512_setzero_ps
#define DC_FMA _mm512_fmadd_ps
#define DC_ADD _mm512_add_ps
#include "nn/direct_kernel.h"
#undef DC_SFX
#undef DC_TARGET
#undef DC_VL
#undef DC_KV
#undef DC_VT
#undef DC_LOADU
#undef DC_STOREU
#undef DC_SET1
#undef DC_ZERO
#undef DC_FMA
#undef DC_ADD

#define DC_SFX avx2
#define DC_TARGET "avx2,fma"
#define DC_VL 8
#define DC_KV 2
#define DC_VT __m256
#define DC_LOADU _mm256_loadu_ps
#define DC_STOREU _mm256_storeu_ps
#define DC_SET1 _mm256_set1_ps
#define DC_ZERO _mm256_setzero_ps
#define DC_FMA _mm256_fmadd_ps
#define DC_ADD _mm256_add_ps
#include "nn/direct_kernel.h"
#else
#define DC_HAVE_KERNELS 0
#endif

/* ---- entry points --------------------------------------------------------------------------------------------- */

int mn_direct_eligible(const mn_conv3d *l, const mn_shape *in, int pass)
{
    if (!l || !in || pass < 0 || pass >= MN_CONV_NPASS || !mn_shape_valid(in) || l->cin < 2 || in->c != l->cin)
        return 0;
    const int vl = dc_vl(mn_stem_isa());
    if (!vl || !DC_HAVE_KERNELS) return 0;
    mn_shape out;
    if (mn_conv3d_out_shape(l, in, &out) != MN_OK) return 0;
    for (int i = 0; i < 3; i++)
        if (l->k[i] < 1 || l->s[i] < 1 || l->p[i] < 0 || l->dil[i] < 1) return 0;
    if (l->k[0] * l->k[1] * l->k[2] > DC_MAXT) return 0;
    dc_geom g;
    dc_geom_init(&g, l, in, &out, pass);
    if (pass == MN_CONV_PASS_BWD_DATA) {
        for (int i = 0; i < 3; i++)
            if (l->s[i] != 1 || g.p[i] < 0) return 0;
    }
    if (g.K % vl || g.out[2] > MN_DIRECT_MAX_OX) return 0;
    /* Offsets into one channel of the padded input and into the weights are ints. */
    return (double)g.cstride < INT_MAX;
}

static size_t dc_pass_floats(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, int pass)
{
    if (!mn_direct_eligible(l, in, pass)) return 0;
    dc_geom g;
    dc_geom_init(&g, l, in, out, pass);
    if (pass == MN_CONV_PASS_BWD_WEIGHTS) return dc_in_floats(&g) + (size_t)g.N * g.out[0] * g.out[1] * g.out[2] * g.K;
    return dc_in_floats(&g) + dc_w_floats(&g);
}

size_t mn_direct_workspace_floats(const mn_conv3d *l, const mn_shape *in)
{
    mn_shape out;
    if (!l || !in || mn_conv3d_out_shape(l, in, &out) != MN_OK) return 0;
    size_t ws = 0;
    for (int pass = 0; pass < MN_CONV_NPASS; pass++) {
        const size_t f = dc_pass_floats(l, in, &out, pass);
        if (f > ws) ws = f;
    }
    return ws;
}

#define DC_REFUSE(l, what)                                                                                           \
    MN_FAIL(MN_ERR_ARG, "conv3d %d->%d: direct kernel %s called for a layer it cannot run", (l)->cin, (l)->cout,   \
            what)

/* Forward, or backward-data as the forward kernel on dy: src padded, weights packed for the pass, dst written
 * (with bias) or accumulated. */
static mn_err dc_run_fwd(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, int pass, const float *src,
                         const float *bias, int accumulate, float *dst, float *ws)
{
    if (!mn_direct_eligible(l, in, pass))
        DC_REFUSE(l, pass == MN_CONV_PASS_FWD ? "forward" : "backward-data");
    dc_geom g;
    dc_geom_init(&g, l, in, out, pass);
    float *sp = ws, *wp = ws + dc_in_floats(&g);
    dc_pad_input(&g, src, sp);
    dc_pack_weights(&g, l->w, wp);
#if DC_HAVE_KERNELS
    if (mn_stem_isa() == MN_STEM_ISA_AVX512)
        dc_fwd_avx512(&g, sp, wp, bias, accumulate, dst);
    else
        dc_fwd_avx2(&g, sp, wp, bias, accumulate, dst);
#else
    (void)bias;
    (void)accumulate;
    (void)dst;
#endif
    return MN_OK;
}

mn_err mn_direct_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                         float *ws)
{
    return dc_run_fwd(l, in, out, MN_CONV_PASS_FWD, x, l->b, 0, y, ws);
}

mn_err mn_direct_backward_data(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *dy,
                               float *dx, float *ws)
{
    return dc_run_fwd(l, in, out, MN_CONV_PASS_BWD_DATA, dy, NULL, 1, dx, ws);
}

mn_err mn_direct_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                  const float *dy, float *ws)
{
    if (!mn_direct_eligible(l, in, MN_CONV_PASS_BWD_WEIGHTS) || !l->dw) DC_REFUSE(l, "backward-weights");
    dc_geom g;
    dc_geom_init(&g, l, in, out, MN_CONV_PASS_BWD_WEIGHTS);
    float *xp = ws, *dyt = ws + dc_in_floats(&g);
    const size_t P = (size_t)g.out[0] * g.out[1] * g.out[2];
    dc_pad_input(&g, x, xp);
    for (int k0 = 0; k0 < g.K; k0 += g.kbmax) { /* dyt[block][n][o][lanes of the block] */
        const int KB = g.K - k0 < g.kbmax ? g.K - k0 : g.kbmax;
        for (int n = 0; n < g.N; n++)
            mn_transpose(dy + ((size_t)n * g.K + k0) * P, (size_t)KB, P, NULL, 0,
                         dyt + (size_t)k0 * g.N * P + (size_t)n * P * KB, (size_t)KB);
    }
#if DC_HAVE_KERNELS
    if (mn_stem_isa() == MN_STEM_ISA_AVX512)
        dc_bww_avx512(&g, xp, dyt, l->dw);
    else
        dc_bww_avx2(&g, xp, dyt, l->dw);
#endif
    return MN_OK;
}
