/* pool3d.c: max pooling, average pooling and global average pooling on NCDHW float32.
 *
 * Geometry follows torch.nn.MaxPool3d / AvgPool3d with ceil_mode=False and dilation 1:
 *   out = floor((in + 2p - k) / s) + 1,   padding at most half the kernel (PyTorch's rule, which guarantees that
 *   every window holds at least one real voxel).
 * Max pooling pads with -inf, keeps the FIRST maximum of a window in (z, y, x) scan order (strict >), and lets a
 * NaN win as PyTorch's CPU kernel does.  The argmax is the flat index z*H*W + y*W + x inside the input's (n, c)
 * slice, stored as int32 (slices are checked to fit).  Average pooling counts padded voxels (count_include_pad=True):
 * the divisor is the window clipped to the padded extent, which with ceil_mode=False is always kd*kh*kw.
 *
 * Every loop is split over the N*C independent slices, so backward scatters (max, avg) never race and no atomics
 * are needed.  Global average pooling reduces each slice in double.  Max-pool forward has a vectorised path (one
 * row of outputs at a time over a -inf padded copy of each input row; separable, with the row maxima of the current
 * z window cached, when they fit in MN_POOL_XS_MAX) and a loop-nest twin,
 * mn_maxpool3d_forward_ref, which it matches bit for bit (values and argmax); the tests check this.
 */
#include "mednet/layers.h"
#include "nn/simd_clones.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Stack buffers of the vectorised max-pool path: outputs per row (lanes) and the padded input row. */
#define MN_POOL_ROW_MAX 1024
#define MN_POOL_PROW_MAX 4096
/* Row maxima cached by the separable max-pool path: kd planes x H rows x lanes (floats and int32 indices). */
#define MN_POOL_XS_MAX 8192
#define MN_POOL_KD_MAX 8

/* Output shape of a pooling window geometry; `name` is the layer for messages. */
static mn_err pool_out_shape(const char *name, const int k[3], const int s[3], const int p[3], const mn_shape *in,
                             mn_shape *out)
{
    char b[64];
    MN_CHECK(in != NULL && out != NULL, MN_ERR_ARG, "%s: NULL shape", name);
    MN_CHECK(mn_shape_valid(in), MN_ERR_SHAPE, "%s: invalid input shape %s", name, mn_shape_str(in, b));
    int ext[3] = {in->d, in->h, in->w}, o[3];
    for (int i = 0; i < 3; i++) {
        MN_CHECK(k[i] >= 1 && s[i] >= 1 && p[i] >= 0, MN_ERR_ARG,
                 "%s(k=%d,%d,%d s=%d,%d,%d p=%d,%d,%d): kernel and stride must be >= 1 and padding >= 0", name, k[0],
                 k[1], k[2], s[0], s[1], s[2], p[0], p[1], p[2]);
        MN_CHECK(2 * p[i] <= k[i], MN_ERR_ARG, "%s(k=%d,%d,%d p=%d,%d,%d): padding must be at most half the kernel",
                 name, k[0], k[1], k[2], p[0], p[1], p[2]);
        MN_CHECK(ext[i] + 2 * p[i] >= k[i], MN_ERR_SHAPE,
                 "%s(k=%d,%d,%d s=%d,%d,%d p=%d,%d,%d): input %s is smaller than the kernel (output would be empty)",
                 name, k[0], k[1], k[2], s[0], s[1], s[2], p[0], p[1], p[2], mn_shape_str(in, b));
        o[i] = (ext[i] + 2 * p[i] - k[i]) / s[i] + 1;
    }
    MN_CHECK(mn_shape_voxels(in) <= (size_t)INT32_MAX, MN_ERR_SHAPE, "%s: input slice %s exceeds 2^31 voxels", name,
             mn_shape_str(in, b));
    *out = (mn_shape){in->n, in->c, o[0], o[1], o[2]};
    return MN_OK;
}

/* Clip a window [o*s - p, o*s - p + k) to [0, n). */
static inline void window(int o, int k, int s, int p, int n, int *lo, int *hi)
{
    int a = o * s - p, e = a + k;
    *lo = a < 0 ? 0 : a;
    *hi = e > n ? n : e;
}

mn_err mn_maxpool3d_out_shape(const mn_maxpool3d *l, const mn_shape *in, mn_shape *out)
{
    MN_CHECK(l != NULL, MN_ERR_ARG, "maxpool3d: NULL layer");
    return pool_out_shape("maxpool3d", l->k, l->s, l->p, in, out);
}

/* The direct loop nest: every window scanned in (z, y, x) order, strict > so the first maximum wins, a NaN always
 * takes over; PyTorch starts from -inf with the index of the window's first real voxel. */
mn_err mn_maxpool3d_forward_ref(const mn_maxpool3d *l, const mn_shape *in, const float *x, float *y, int32_t *argmax)
{
    mn_shape out = {0, 0, 0, 0, 0};
    MN_CALL(mn_maxpool3d_out_shape(l, in, &out));
    const int D = in->d, H = in->h, W = in->w, OD = out.d, OH = out.h, OW = out.w;
    const size_t V = mn_shape_voxels(in), OV = mn_shape_voxels(&out);
    const long NC = (long)in->n * in->c;
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < NC; nc++) {
        const float *xs = x + (size_t)nc * V;
        float *ys = y + (size_t)nc * OV;
        int32_t *as = argmax + (size_t)nc * OV;
        for (int oz = 0; oz < OD; oz++) {
            int z0, z1;
            window(oz, l->k[0], l->s[0], l->p[0], D, &z0, &z1);
            for (int oy = 0; oy < OH; oy++) {
                int y0, y1;
                window(oy, l->k[1], l->s[1], l->p[1], H, &y0, &y1);
                for (int ox = 0; ox < OW; ox++) {
                    int x0, x1;
                    window(ox, l->k[2], l->s[2], l->p[2], W, &x0, &x1);
                    float best = -INFINITY;
                    int32_t bi = (int32_t)(((size_t)z0 * H + y0) * W + x0);
                    for (int z = z0; z < z1; z++)
                        for (int yy = y0; yy < y1; yy++) {
                            size_t row = ((size_t)z * H + yy) * W;
                            for (int xx = x0; xx < x1; xx++) {
                                float v = xs[row + xx];
                                if (v > best || isnan(v)) {
                                    best = v;
                                    bi = (int32_t)(row + xx);
                                }
                            }
                        }
                    size_t o = ((size_t)oz * OH + oy) * OW + ox;
                    ys[o] = best;
                    as[o] = bi;
                }
            }
        }
    }
    return MN_OK;
}

/* One window tap for a row of nb outputs: candidate j is prow[j*sx + kx] (a -inf padded copy of input row `row`),
 * whose index in the slice is row + j*sx + kx - px.  Branch-free selects; a NaN always takes over. */
static inline __attribute__((always_inline)) void max_tap(const float *prow, int kx, int sx, int px, int32_t row,
                                                          int nb, float *best, int32_t *bi)
{
    /* nb is a multiple of 16: fixed-length inner loops compile to whole vectors with no scalar remainder. */
    for (int j0 = 0; j0 < nb; j0 += 16) {
#pragma omp simd
        for (int t = 0; t < 16; t++) {
            const int j = j0 + t;
            float v = prow[j * sx + kx];
            int take = (v > best[j]) | (v != v);
            best[j] = take ? v : best[j];
            bi[j] = take ? row + j * sx + kx - px : bi[j];
        }
    }
}

/* y (out shape) and argmax (one int32 per output element) are overwritten.
 * Fast path: one output row at a time, vectorised over ox.  Each input row of the window is first copied into a
 * -inf padded buffer, so every tap is a plain (strided) load with no bounds test, and the row of outputs is
 * rounded up to a multiple of 16 lanes (the extra lanes read padding and are dropped).  For each output the taps
 * are still visited in (z, y, x) order, so ties and NaNs resolve exactly as in mn_maxpool3d_forward_ref.  Rows
 * too long for the stack buffers take the reference path. */
/* Cloned for AVX2/AVX-512 (simd_clones.h): the 16-wide max/argmax loops below. */
MN_SIMD_CLONES
mn_err mn_maxpool3d_forward(const mn_maxpool3d *l, const mn_shape *in, const float *x, float *y, int32_t *argmax)
{
    mn_shape out = {0, 0, 0, 0, 0};
    MN_CALL(mn_maxpool3d_out_shape(l, in, &out));
    const int D = in->d, H = in->h, W = in->w, OD = out.d, OH = out.h, OW = out.w;
    const int sx = l->s[2], px = l->p[2], kw = l->k[2];
    const int nb = (OW + 15) / 16 * 16;                 /* lanes per output row */
    const int plen = (nb - 1) * sx + kw;                 /* padded row length read by the taps */
    if (nb > MN_POOL_ROW_MAX || plen > MN_POOL_PROW_MAX || px + W > plen)
        return mn_maxpool3d_forward_ref(l, in, x, y, argmax);
    const size_t V = mn_shape_voxels(in), OV = mn_shape_voxels(&out);
    const long NC = (long)in->n * in->c;
    const int kd = l->k[0];
    if (kd <= MN_POOL_KD_MAX && (size_t)kd * H * nb <= MN_POOL_XS_MAX) {
        /* Separable: the x-window maximum of every input row (first maximum, last NaN, as max_tap) is computed once
         * per input plane and cached for the kd planes of the current z window (slot z % kd), then output rows
         * combine the cached row maxima over the (z, y) window in scan order with the same rule.  Equivalent to
         * the full scan: the scan's last take is the last NaN if any, else the first occurrence of the window
         * maximum, and both are found row by row.  Each input row's strided x pass is done about once per output
         * plane that reads it instead of once per output row (k_h/s_h times fewer; the stem's pool at 2x64x56^3:
         * 15.7 -> 10.9 ms on 2 threads). */
#pragma omp parallel
        {
            float prow[MN_POOL_PROW_MAX], best[MN_POOL_ROW_MAX], xb[MN_POOL_XS_MAX];
            int32_t bi[MN_POOL_ROW_MAX], xi[MN_POOL_XS_MAX];
            for (int i = 0; i < plen; i++) prow[i] = -INFINITY;
#pragma omp for schedule(static)
            for (long nc = 0; nc < NC; nc++) {
                const float *xs = x + (size_t)nc * V;
                float *ys = y + (size_t)nc * OV;
                int32_t *as = argmax + (size_t)nc * OV;
                int have[MN_POOL_KD_MAX];
                for (int i = 0; i < kd; i++) have[i] = -1;
                for (int oz = 0; oz < OD; oz++) {
                    int z0, z1;
                    window(oz, l->k[0], l->s[0], l->p[0], D, &z0, &z1);
                    for (int z = z0; z < z1; z++) {
                        const int slot = z % kd;
                        if (have[slot] == z) continue;
                        have[slot] = z;
                        for (int yy = 0; yy < H; yy++) {
                            const size_t row = ((size_t)z * H + yy) * W;
                            float *q = xb + ((size_t)slot * H + yy) * nb;
                            int32_t *qi = xi + ((size_t)slot * H + yy) * nb;
                            for (int j = 0; j < nb; j++) {
                                q[j] = -INFINITY;
                                qi[j] = (int32_t)row;
                            }
                            memcpy(prow + px, xs + row, (size_t)W * sizeof(float));
                            for (int kx = 0; kx < kw; kx++) {
                                if (sx == 2)
                                    max_tap(prow, kx, 2, px, (int32_t)row, nb, q, qi);
                                else if (sx == 1)
                                    max_tap(prow, kx, 1, px, (int32_t)row, nb, q, qi);
                                else
                                    max_tap(prow, kx, sx, px, (int32_t)row, nb, q, qi);
                            }
                        }
                    }
                    for (int oy = 0; oy < OH; oy++) {
                        int y0, y1;
                        window(oy, l->k[1], l->s[1], l->p[1], H, &y0, &y1);
                        for (int j = 0; j < nb; j++) {
                            int x0 = j * sx - px;
                            best[j] = -INFINITY;
                            bi[j] = (int32_t)(((size_t)z0 * H + y0) * W + (x0 < 0 ? 0 : x0));
                        }
                        for (int z = z0; z < z1; z++)
                            for (int yy = y0; yy < y1; yy++) {
                                const float *q = xb + ((size_t)(z % kd) * H + yy) * nb;
                                const int32_t *qi = xi + ((size_t)(z % kd) * H + yy) * nb;
                                for (int j0 = 0; j0 < nb; j0 += 16) {
#pragma omp simd
                                    for (int t = 0; t < 16; t++) {
                                        const int j = j0 + t;
                                        float v = q[j];
                                        int take = (v > best[j]) | (v != v);
                                        best[j] = take ? v : best[j];
                                        bi[j] = take ? qi[j] : bi[j];
                                    }
                                }
                            }
                        const size_t o = ((size_t)oz * OH + oy) * OW;
                        memcpy(ys + o, best, (size_t)OW * sizeof(float));
                        memcpy(as + o, bi, (size_t)OW * sizeof(int32_t));
                    }
                }
            }
        }
        return MN_OK;
    }
#pragma omp parallel
    {
        float prow[MN_POOL_PROW_MAX], best[MN_POOL_ROW_MAX];
        int32_t bi[MN_POOL_ROW_MAX];
        for (int i = 0; i < plen; i++) prow[i] = -INFINITY; /* the pads stay -inf: rows only fill [px, px+W) */
#pragma omp for schedule(static)
        for (long nc = 0; nc < NC; nc++) {
            const float *xs = x + (size_t)nc * V;
            float *ys = y + (size_t)nc * OV;
            int32_t *as = argmax + (size_t)nc * OV;
            for (int oz = 0; oz < OD; oz++) {
                int z0, z1;
                window(oz, l->k[0], l->s[0], l->p[0], D, &z0, &z1);
                for (int oy = 0; oy < OH; oy++) {
                    int y0, y1;
                    window(oy, l->k[1], l->s[1], l->p[1], H, &y0, &y1);
                    for (int j = 0; j < nb; j++) {
                        int x0 = j * sx - px;
                        best[j] = -INFINITY;
                        bi[j] = (int32_t)(((size_t)z0 * H + y0) * W + (x0 < 0 ? 0 : x0));
                    }
                    for (int z = z0; z < z1; z++)
                        for (int yy = y0; yy < y1; yy++) {
                            const size_t row = ((size_t)z * H + yy) * W;
                            memcpy(prow + px, xs + row, (size_t)W * sizeof(float));
                            /* Literal strides let the compiler use loads + permutes instead of gathers. */
                            for (int kx = 0; kx < kw; kx++) {
                                if (sx == 2)
                                    max_tap(prow, kx, 2, px, (int32_t)row, nb, best, bi);
                                else if (sx == 1)
                                    max_tap(prow, kx, 1, px, (int32_t)row, nb, best, bi);
                                else
                                    max_tap(prow, kx, sx, px, (int32_t)row, nb, best, bi);
                            }
                        }
                    const size_t o = ((size_t)oz * OH + oy) * OW;
                    memcpy(ys + o, best, (size_t)OW * sizeof(float));
                    memcpy(as + o, bi, (size_t)OW * sizeof(int32_t));
                }
            }
        }
    }
    return MN_OK;
}

/* dx[argmax] += dy, slice by slice.  Accumulates. */
mn_err mn_maxpool3d_backward(const mn_maxpool3d *l, const mn_shape *in, const float *dy, const int32_t *argmax,
                             float *dx)
{
    mn_shape out = {0, 0, 0, 0, 0};
    MN_CALL(mn_maxpool3d_out_shape(l, in, &out));
    if (dx == NULL) return MN_OK;
    const size_t V = mn_shape_voxels(in), OV = mn_shape_voxels(&out);
    const long NC = (long)in->n * in->c;
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < NC; nc++) {
        const float *g = dy + (size_t)nc * OV;
        const int32_t *a = argmax + (size_t)nc * OV;
        float *d = dx + (size_t)nc * V;
        for (size_t o = 0; o < OV; o++) d[a[o]] += g[o];
    }
    return MN_OK;
}

mn_err mn_avgpool3d_out_shape(const mn_avgpool3d *l, const mn_shape *in, mn_shape *out)
{
    MN_CHECK(l != NULL, MN_ERR_ARG, "avgpool3d: NULL layer");
    return pool_out_shape("avgpool3d", l->k, l->s, l->p, in, out);
}

/* Divisor of a window with count_include_pad: its extent clipped to the padded input (PyTorch's pool_size). */
static inline int pad_extent(int o, int k, int s, int p, int n)
{
    int a = o * s - p, e = a + k;
    if (e > n + p) e = n + p;
    return e - a;
}

/* y (out shape) is overwritten with window sums over real voxels divided by the padded window size. */
mn_err mn_avgpool3d_forward(const mn_avgpool3d *l, const mn_shape *in, const float *x, float *y)
{
    mn_shape out = {0, 0, 0, 0, 0};
    MN_CALL(mn_avgpool3d_out_shape(l, in, &out));
    const int D = in->d, H = in->h, W = in->w, OD = out.d, OH = out.h, OW = out.w;
    const size_t V = mn_shape_voxels(in), OV = mn_shape_voxels(&out);
    const long NC = (long)in->n * in->c;
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < NC; nc++) {
        const float *xs = x + (size_t)nc * V;
        float *ys = y + (size_t)nc * OV;
        for (int oz = 0; oz < OD; oz++) {
            int z0, z1, pz = pad_extent(oz, l->k[0], l->s[0], l->p[0], D);
            window(oz, l->k[0], l->s[0], l->p[0], D, &z0, &z1);
            for (int oy = 0; oy < OH; oy++) {
                int y0, y1, py = pad_extent(oy, l->k[1], l->s[1], l->p[1], H);
                window(oy, l->k[1], l->s[1], l->p[1], H, &y0, &y1);
                for (int ox = 0; ox < OW; ox++) {
                    int x0, x1, px = pad_extent(ox, l->k[2], l->s[2], l->p[2], W);
                    window(ox, l->k[2], l->s[2], l->p[2], W, &x0, &x1);
                    double sum = 0;
                    for (int z = z0; z < z1; z++)
                        for (int yy = y0; yy < y1; yy++) {
                            size_t row = ((size_t)z * H + yy) * W;
                            for (int xx = x0; xx < x1; xx++) sum += xs[row + xx];
                        }
                    ys[((size_t)oz * OH + oy) * OW + ox] = (float)(sum / ((double)pz * py * px));
                }
            }
        }
    }
    return MN_OK;
}

/* dx += dy / divisor over each window's real voxels.  Accumulates. */
mn_err mn_avgpool3d_backward(const mn_avgpool3d *l, const mn_shape *in, const float *dy, float *dx)
{
    mn_shape out = {0, 0, 0, 0, 0};
    MN_CALL(mn_avgpool3d_out_shape(l, in, &out));
    if (dx == NULL) return MN_OK;
    const int D = in->d, H = in->h, W = in->w, OD = out.d, OH = out.h, OW = out.w;
    const size_t V = mn_shape_voxels(in), OV = mn_shape_voxels(&out);
    const long NC = (long)in->n * in->c;
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < NC; nc++) {
        const float *g = dy + (size_t)nc * OV;
        float *d = dx + (size_t)nc * V;
        for (int oz = 0; oz < OD; oz++) {
            int z0, z1, pz = pad_extent(oz, l->k[0], l->s[0], l->p[0], D);
            window(oz, l->k[0], l->s[0], l->p[0], D, &z0, &z1);
            for (int oy = 0; oy < OH; oy++) {
                int y0, y1, py = pad_extent(oy, l->k[1], l->s[1], l->p[1], H);
                window(oy, l->k[1], l->s[1], l->p[1], H, &y0, &y1);
                for (int ox = 0; ox < OW; ox++) {
                    int x0, x1, px = pad_extent(ox, l->k[2], l->s[2], l->p[2], W);
                    window(ox, l->k[2], l->s[2], l->p[2], W, &x0, &x1);
                    float v = g[((size_t)oz * OH + oy) * OW + ox] / (float)(pz * py * px);
                    for (int z = z0; z < z1; z++)
                        for (int yy = y0; yy < y1; yy++) {
                            size_t row = ((size_t)z * H + yy) * W;
                            for (int xx = x0; xx < x1; xx++) d[row + xx] += v;
                        }
                }
            }
        }
    }
    return MN_OK;
}

/* y (n, c) is overwritten with the mean of each (n, c) slice. */
mn_err mn_gap3d_forward(const mn_shape *in, const float *x, float *y)
{
    char b[64];
    MN_CHECK(in != NULL && mn_shape_valid(in), MN_ERR_SHAPE, "gap3d forward: invalid input shape %s",
             in ? mn_shape_str(in, b) : "NULL");
    const size_t V = mn_shape_voxels(in);
    const long NC = (long)in->n * in->c;
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < NC; nc++) {
        const float *xs = x + (size_t)nc * V;
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (size_t v = 0; v < V; v++) sum += xs[v];
        y[nc] = (float)(sum / (double)V);
    }
    return MN_OK;
}

/* dx += dy[n, c] / (D*H*W) over each slice.  Accumulates. */
mn_err mn_gap3d_backward(const mn_shape *in, const float *dy, float *dx)
{
    char b[64];
    MN_CHECK(in != NULL && mn_shape_valid(in), MN_ERR_SHAPE, "gap3d backward: invalid input shape %s",
             in ? mn_shape_str(in, b) : "NULL");
    if (dx == NULL) return MN_OK;
    const size_t V = mn_shape_voxels(in);
    const long NC = (long)in->n * in->c;
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < NC; nc++) {
        float *d = dx + (size_t)nc * V;
        const float g = dy[nc] / (float)V;
#pragma omp simd
        for (size_t v = 0; v < V; v++) d[v] += g;
    }
    return MN_OK;
}
