/* vol2col.c: the unfold/fold kernels behind the GEMM convolution (layout in vol2col.h).
 *
 * Each column row is one (channel, tap) pair and is produced as out0*out1 line segments of out2 voxels.  The
 * range of output indices whose input index falls inside the volume is computed once per tap and dimension
 * (tap_range), so the inner loops carry no bounds tests: zeros before, a copy (contiguous for stride 1, a strided
 * gather otherwise) in the middle, zeros after.  One source channel (at most a few hundred KiB here) stays in cache
 * while its kvol rows stream out.  col2vol walks the same segments and adds; it is parallel over (sample,
 * channel) so that accumulation is race-free without atomics.  The tap-box variants (mn_vol2col_tap) copy only
 * the in-volume part of one tap, and fold back the same way; the row gather/scatter helpers move whole
 * channels-last rows (cout floats) between a tap's box and the full output.
 */
#include "nn/vol2col.h"

#include <string.h>

/* Output indices o in [*lo, *hi) map to input indices o*s + off inside [0, in). */
static void tap_range(int out, int in, int s, int off, int *lo, int *hi)
{
    int l = off >= 0 ? 0 : (-off + s - 1) / s;
    int h = (in - 1 - off) < 0 ? 0 : (in - 1 - off) / s + 1;
    if (l > out) l = out;
    if (h > out) h = out;
    if (h < l) h = l;
    *lo = l;
    *hi = h;
}

/* One row of the column matrix: channel plane src, tap (a, b, e). */
static void unfold_row(const mn_vgeom *g, const float *src, int a, int b, int e, float *dst)
{
    const int O0 = g->out[0], O1 = g->out[1], O2 = g->out[2];
    const int I1 = g->in[1], I2 = g->in[2];
    const int off0 = a * g->dil[0] - g->p[0], off1 = b * g->dil[1] - g->p[1], off2 = e * g->dil[2] - g->p[2];
    const int s0 = g->s[0], s1 = g->s[1], s2 = g->s[2];
    int lo0, hi0, lo1, hi1, lo2, hi2;
    tap_range(O0, g->in[0], s0, off0, &lo0, &hi0);
    tap_range(O1, I1, s1, off1, &lo1, &hi1);
    tap_range(O2, I2, s2, off2, &lo2, &hi2);
    const size_t plane = (size_t)O1 * O2;
    if (lo0 > 0) memset(dst, 0, sizeof(float) * plane * (size_t)lo0);
    if (hi0 < O0) memset(dst + plane * (size_t)hi0, 0, sizeof(float) * plane * (size_t)(O0 - hi0));
    for (int oz = lo0; oz < hi0; oz++) {
        float *dplane = dst + plane * (size_t)oz;
        const float *splane = src + (size_t)(oz * s0 + off0) * I1 * I2;
        if (lo1 > 0) memset(dplane, 0, sizeof(float) * (size_t)O2 * (size_t)lo1);
        if (hi1 < O1) memset(dplane + (size_t)O2 * hi1, 0, sizeof(float) * (size_t)O2 * (size_t)(O1 - hi1));
        for (int oy = lo1; oy < hi1; oy++) {
            float *d = dplane + (size_t)oy * O2;
            const float *sl = splane + (size_t)(oy * s1 + off1) * I2;
            for (int ox = 0; ox < lo2; ox++) d[ox] = 0.0f;
            if (s2 == 1) {
                if (hi2 > lo2) memcpy(d + lo2, sl + lo2 + off2, sizeof(float) * (size_t)(hi2 - lo2));
            } else if (s2 == 2) {
                /* Literal stride: vectorised as loads + permutes (the stem); the general loop stays scalar. */
                const float *sl2 = sl + off2;
                for (int ox = lo2; ox < hi2; ox++) d[ox] = sl2[2 * ox];
            } else {
                for (int ox = lo2; ox < hi2; ox++) d[ox] = sl[ox * s2 + off2];
            }
            for (int ox = hi2; ox < O2; ox++) d[ox] = 0.0f;
        }
    }
}

/* The adjoint of unfold_row: add one column row back into channel plane dst. */
static void fold_row(const mn_vgeom *g, const float *src, int a, int b, int e, float *dst)
{
    const int O1 = g->out[1], O2 = g->out[2];
    const int I1 = g->in[1], I2 = g->in[2];
    const int off0 = a * g->dil[0] - g->p[0], off1 = b * g->dil[1] - g->p[1], off2 = e * g->dil[2] - g->p[2];
    const int s0 = g->s[0], s1 = g->s[1], s2 = g->s[2];
    int lo0, hi0, lo1, hi1, lo2, hi2;
    tap_range(g->out[0], g->in[0], s0, off0, &lo0, &hi0);
    tap_range(O1, I1, s1, off1, &lo1, &hi1);
    tap_range(O2, I2, s2, off2, &lo2, &hi2);
    for (int oz = lo0; oz < hi0; oz++) {
        float *dplane = dst + (size_t)(oz * s0 + off0) * I1 * I2;
        for (int oy = lo1; oy < hi1; oy++) {
            const float *sl = src + ((size_t)oz * O1 + oy) * O2;
            float *dl = dplane + (size_t)(oy * s1 + off1) * I2;
            if (s2 == 1) {
                for (int ox = lo2; ox < hi2; ox++) dl[ox + off2] += sl[ox];
            } else {
                for (int ox = lo2; ox < hi2; ox++) dl[ox * s2 + off2] += sl[ox];
            }
        }
    }
}

void mn_vol2col(const mn_vgeom *g, int nb, const float *x, size_t x_nstride, float *col, size_t ldc,
                size_t col_nstride)
{
    const int kvol = g->k[0] * g->k[1] * g->k[2];
    const long rows = (long)g->c * kvol;
    const size_t in_vox = (size_t)g->in[0] * g->in[1] * g->in[2];
    const size_t work = (size_t)nb * (size_t)rows * mn_vgeom_cols(g);
#pragma omp parallel for collapse(2) schedule(static) if (work > 65536)
    for (int i = 0; i < nb; i++) {
        for (long r = 0; r < rows; r++) {
            const int ch = (int)(r / kvol), t = (int)(r % kvol);
            const int a = t / (g->k[1] * g->k[2]), b = (t / g->k[2]) % g->k[1], e = t % g->k[2];
            unfold_row(g, x + (size_t)i * x_nstride + (size_t)ch * in_vox, a, b, e,
                       col + (size_t)i * col_nstride + (size_t)r * ldc);
        }
    }
}

void mn_col2vol(const mn_vgeom *g, int nb, const float *col, size_t ldc, size_t col_nstride, float *x,
                size_t x_nstride)
{
    const int kvol = g->k[0] * g->k[1] * g->k[2];
    const size_t in_vox = (size_t)g->in[0] * g->in[1] * g->in[2];
    const size_t work = (size_t)nb * mn_vgeom_rows(g) * mn_vgeom_cols(g);
#pragma omp parallel for collapse(2) schedule(static) if (work > 65536)
    for (int i = 0; i < nb; i++) {
        for (int ch = 0; ch < g->c; ch++) {
            float *dst = x + (size_t)i * x_nstride + (size_t)ch * in_vox;
            const float *src = col + (size_t)i * col_nstride + (size_t)ch * kvol * ldc;
            for (int t = 0; t < kvol; t++) {
                const int a = t / (g->k[1] * g->k[2]), b = (t / g->k[2]) % g->k[1], e = t % g->k[2];
                fold_row(g, src + (size_t)t * ldc, a, b, e, dst);
            }
        }
    }
}

void mn_batch_pack(const float *src, int nb, int ch, size_t len, size_t cstride, float *dst)
{
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)nb * ch * len > 65536)
    for (int c = 0; c < ch; c++)
        for (int i = 0; i < nb; i++)
            memcpy(dst + ((size_t)c * nb + i) * len, src + ((size_t)i * ch + c) * cstride, sizeof(float) * len);
}

void mn_batch_unpack(const float *src, int nb, int ch, size_t P, const float *bias, int accumulate, float *dst)
{
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)nb * ch * P > 65536)
    for (int c = 0; c < ch; c++) {
        for (int i = 0; i < nb; i++) {
            const float *s = src + ((size_t)c * nb + i) * P;
            float *d = dst + ((size_t)i * ch + c) * P;
            if (accumulate) {
                for (size_t v = 0; v < P; v++) d[v] += s[v];
            } else {
                const float b = bias ? bias[c] : 0.0f;
                for (size_t v = 0; v < P; v++) d[v] = s[v] + b;
            }
        }
    }
}

void mn_bias_add(float *y, int nb, int ch, size_t P, const float *bias)
{
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)nb * ch * P > 65536)
    for (int i = 0; i < nb; i++) {
        for (int c = 0; c < ch; c++) {
            float *d = y + ((size_t)i * ch + c) * P;
            const float b = bias[c];
            for (size_t v = 0; v < P; v++) d[v] += b;
        }
    }
}

void mn_bias_grad(const float *dy, int nb, int ch, size_t P, float *db)
{
#pragma omp parallel for schedule(static) if ((size_t)nb * ch * P > 65536)
    for (int c = 0; c < ch; c++) {
        double acc = 0.0;
        for (int i = 0; i < nb; i++) {
            const float *s = dy + ((size_t)i * ch + c) * P;
            double part = 0.0;
#pragma omp simd reduction(+ : part)
            for (size_t v = 0; v < P; v++) part += s[v];
            acc += part;
        }
        db[c] += (float)acc;
    }
}

void mn_transpose(const float *src, size_t nr, size_t nc, const float *bias, int accumulate, float *dst, size_t ldd)
{
    enum { TB = 32 };
    const long nrb = (long)((nr + TB - 1) / TB);
#pragma omp parallel for schedule(static) if (nr * nc > 65536)
    for (long rb = 0; rb < nrb; rb++) {
        const size_t r0 = (size_t)rb * TB, r1 = r0 + TB < nr ? r0 + TB : nr;
        for (size_t c0 = 0; c0 < nc; c0 += TB) {
            const size_t c1 = c0 + TB < nc ? c0 + TB : nc;
            for (size_t c = c0; c < c1; c++) {
                float *d = dst + c * ldd;
                if (accumulate) {
                    for (size_t r = r0; r < r1; r++) d[r] += src[r * nc + c];
                } else {
                    const float b = bias ? bias[c] : 0.0f;
                    for (size_t r = r0; r < r1; r++) d[r] = src[r * nc + c] + b;
                }
            }
        }
    }
}

/* ---- tap-box layout ------------------------------------------------------------------------------------------ */

static void tap_abe(const mn_vgeom *g, int t, int *a, int *b, int *e)
{
    *a = t / (g->k[1] * g->k[2]);
    *b = (t / g->k[2]) % g->k[1];
    *e = t % g->k[2];
}

int mn_taps_plan(const mn_vgeom *g, mn_taps *tp)
{
    const int kvol = g->k[0] * g->k[1] * g->k[2];
    if (kvol > MN_TAPS_MAX) return 0;
    tp->n = kvol;
    tp->total = tp->maxnv = 0;
    for (int t = 0; t < kvol; t++) {
        int abe[3];
        tap_abe(g, t, &abe[0], &abe[1], &abe[2]);
        size_t nv = 1;
        for (int d = 0; d < 3; d++) {
            tap_range(g->out[d], g->in[d], g->s[d], abe[d] * g->dil[d] - g->p[d], &tp->lo[t][d], &tp->hi[t][d]);
            nv *= (size_t)(tp->hi[t][d] - tp->lo[t][d]);
        }
        tp->nv[t] = nv;
        tp->total += nv;
        if (nv > tp->maxnv) tp->maxnv = nv;
    }
    return 1;
}

/* Walk the box of tap t for one channel of one sample: the callback pattern is spelled out twice (copy out,
 * add back) to keep const-correctness and let the compiler vectorise each inner loop. */
#define TAP_BOX_LOOP(BODY_CONTIG, BODY_STRIDED)                                                                \
    int a, b, e;                                                                                               \
    tap_abe(g, t, &a, &b, &e);                                                                                 \
    const int off0 = a * g->dil[0] - g->p[0], off1 = b * g->dil[1] - g->p[1], off2 = e * g->dil[2] - g->p[2]; \
    const int *lo = tp->lo[t], *hi = tp->hi[t];                                                                \
    const int nx = hi[2] - lo[2], I1 = g->in[1], I2 = g->in[2], s2 = g->s[2];                                  \
    size_t j = 0;                                                                                              \
    for (int oz = lo[0]; oz < hi[0]; oz++) {                                                                   \
        for (int oy = lo[1]; oy < hi[1]; oy++, j += (size_t)nx) {                                              \
            const size_t vo = ((size_t)(oz * g->s[0] + off0) * I1 + (size_t)(oy * g->s[1] + off1)) * I2 +      \
                              (size_t)(lo[2] * s2 + off2);                                                     \
            if (s2 == 1) {                                                                                     \
                BODY_CONTIG;                                                                                   \
            } else {                                                                                           \
                BODY_STRIDED;                                                                                  \
            }                                                                                                  \
        }                                                                                                      \
    }

/* blk[j] = vol[voxel read by output j of the box] for one channel of one sample. */
static void tap_copy_out(const mn_vgeom *g, const mn_taps *tp, int t, const float *vol, float *blk)
{
    TAP_BOX_LOOP(memcpy(blk + j, vol + vo, sizeof(float) * (size_t)nx),
                 for (int x = 0; x < nx; x++) blk[j + x] = vol[vo + (size_t)x * s2])
}

/* The adjoint: vol[voxel] += blk[j]. */
static void tap_add_back(const mn_vgeom *g, const mn_taps *tp, int t, const float *blk, float *vol)
{
    TAP_BOX_LOOP(for (int x = 0; x < nx; x++) vol[vo + x] += blk[j + x],
                 for (int x = 0; x < nx; x++) vol[vo + (size_t)x * s2] += blk[j + x])
}

void mn_vol2col_tap(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *x, size_t x_nstride,
                    float *blk)
{
    const size_t in_vox = (size_t)g->in[0] * g->in[1] * g->in[2], nv = tp->nv[t];
    const int C = g->c;
    if (!nv) return;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)nb * C * nv > 65536)
    for (int ch = 0; ch < C; ch++)
        for (int i = 0; i < nb; i++)
            tap_copy_out(g, tp, t, x + (size_t)i * x_nstride + (size_t)ch * in_vox, blk + ((size_t)ch * nb + i) * nv);
}

void mn_col2vol_tap(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *blk, float *x,
                    size_t x_nstride)
{
    const size_t in_vox = (size_t)g->in[0] * g->in[1] * g->in[2], nv = tp->nv[t];
    const int C = g->c;
    if (!nv) return;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)nb * C * nv > 65536)
    for (int i = 0; i < nb; i++)
        for (int ch = 0; ch < C; ch++)
            tap_add_back(g, tp, t, blk + ((size_t)ch * nb + i) * nv, x + (size_t)i * x_nstride + (size_t)ch * in_vox);
}

/* Channels-last row index of block row j (sample i, box voxel zy*nx + x) of tap t: shared by gather and scatter. */
#define TAP_ROWS_LOOP(BODY)                                                                                    \
    const int *lo = tp->lo[t], *hi = tp->hi[t];                                                                \
    const int ny = hi[1] - lo[1], nx = hi[2] - lo[2], nzy = (hi[0] - lo[0]) * ny;                              \
    const size_t P = mn_vgeom_cols(g), nv = tp->nv[t];                                                         \
    _Pragma("omp parallel for collapse(2) schedule(static) if (nv * (size_t)nb * (size_t)k > 65536)")          \
    for (int i = 0; i < nb; i++) {                                                                             \
        for (int zy = 0; zy < nzy; zy++) {                                                                     \
            const int oz = lo[0] + zy / ny, oy = lo[1] + zy % ny;                                              \
            for (int x = 0; x < nx; x++) {                                                                     \
                const size_t r = (size_t)i * P + ((size_t)oz * g->out[1] + oy) * g->out[2] + (size_t)(lo[2] + x); \
                const size_t jb = (size_t)i * nv + (size_t)zy * nx + x;                                        \
                BODY;                                                                                          \
            }                                                                                                  \
        }                                                                                                      \
    }

void mn_taps_gather_rows(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *src, int k, float *dst)
{
    TAP_ROWS_LOOP(memcpy(dst + jb * k, src + r * k, sizeof(float) * (size_t)k))
}

void mn_taps_scatter_add_rows(const mn_vgeom *g, const mn_taps *tp, int t, int nb, const float *src, int k,
                              float *dst)
{
    TAP_ROWS_LOOP(for (int c = 0; c < k; c++) dst[r * k + c] += src[jb * k + c])
}

/* Loop order matters (measured 6x): the row w[k] (C*kvol floats) stays in L2 while kvol contiguous rows of w2 are
 * written; the other order scatters every element into kvol distant pages. */
void mn_weights_tap_major(const float *w, int K, int C, int kvol, float *w2)
{
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++)
        for (int t = 0; t < kvol; t++) {
            const float *src = w + (size_t)k * C * kvol + t;
            float *dst = w2 + ((size_t)t * K + k) * C;
            for (int c = 0; c < C; c++) dst[c] = src[(size_t)c * kvol];
        }
}
