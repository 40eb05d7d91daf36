/* convt3d.c: transposed 3-D convolution (PyTorch's ConvTranspose3d) as the adjoint of conv3d.
 *
 * A transposed convolution with (cin, cout, k, s, p, dil) is the backward-data pass of the convolution that maps
 * its output back to its input: that convolution has cout input channels, cin output channels and the same
 * weight tensor, read as a (cin x cout*kvol) matrix W.  With col the (cout*kvol x nb*Pin) column matrix of the
 * transposed convolution's OUTPUT grid (vol2col geometry: volume = output, columns = input voxels):
 *   forward           col = W^T * X, then y = col2vol(col) + b      (k = cin)
 *   backward-data     col = vol2col(dY), dX += W * col               (k = cout*kvol)
 *   backward-weights  dW += X * col^T                                (k = nb*Pin)
 * output_padding only enlarges the output grid; the extra planes receive no tap and get only the bias.
 * Batching of small inputs into one GEMM and the staging block follow conv3d.c (same target column count).
 * For the segmentation head (k2 s2: no overlap) col2vol is a pure scatter.
 */
#include "mednet/conv3d.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "nn/gemm.h"
#include "nn/vol2col.h"

/* Same target as conv3d.c: columns per GEMM when small inputs are packed. */
#define MN_CONVT_GEMM_COLS 8192

static void fmt3(char *buf, size_t n, const int v[3])
{
    if (v[0] == v[1] && v[1] == v[2])
        snprintf(buf, n, "%d", v[0]);
    else
        snprintf(buf, n, "%dx%dx%d", v[0], v[1], v[2]);
}

/* "convt3d 512->32 k2 s2 p0 dil1 op0" for error messages. */
static void convt_desc(const mn_convt3d *l, char *buf, size_t n)
{
    char ks[40], ss[40], ps[40], ds[40], os[40];
    fmt3(ks, sizeof ks, l->k);
    fmt3(ss, sizeof ss, l->s);
    fmt3(ps, sizeof ps, l->p);
    fmt3(ds, sizeof ds, l->dil);
    fmt3(os, sizeof os, l->op);
    snprintf(buf, n, "convt3d %d->%d k%s s%s p%s dil%s op%s", l->cin, l->cout, ks, ss, ps, ds, os);
}

/* Output extents; 0 if an extent would be empty or the parameters are out of range.  No messages. */
static int convt_out_ext(const mn_convt3d *l, const int ext[3], int out[3])
{
    for (int i = 0; i < 3; i++) {
        if (l->k[i] < 1 || l->s[i] < 1 || l->dil[i] < 1 || l->p[i] < 0 || l->op[i] < 0) return 0;
        long o = ((long)ext[i] - 1) * l->s[i] - 2L * l->p[i] + (long)l->dil[i] * (l->k[i] - 1) + l->op[i] + 1;
        if (o < 1 || o > 0x7fffffffL) return 0;
        out[i] = (int)o;
    }
    return 1;
}

static mn_err convt_check(const mn_convt3d *l, const mn_shape *in, mn_shape *out)
{
    MN_CHECK(l != NULL && in != NULL, MN_ERR_ARG, "convt3d: NULL layer or input shape");
    char d[256], sh[64];
    convt_desc(l, d, sizeof d);
    MN_CHECK(l->cin > 0 && l->cout > 0, MN_ERR_ARG, "%s: channel counts must be > 0", d);
    for (int i = 0; i < 3; i++) {
        MN_CHECK(l->k[i] >= 1 && l->s[i] >= 1 && l->dil[i] >= 1 && l->p[i] >= 0, MN_ERR_ARG,
                 "%s: kernel, stride and dilation must be >= 1 and padding >= 0 (dim %d: k=%d s=%d p=%d dil=%d)", d,
                 i, l->k[i], l->s[i], l->p[i], l->dil[i]);
        const int lim = l->s[i] > l->dil[i] ? l->s[i] : l->dil[i];
        MN_CHECK(l->op[i] >= 0 && l->op[i] < lim, MN_ERR_ARG,
                 "%s: output padding must be in [0, max(stride, dilation)) = [0, %d), got %d in dim %d", d, lim,
                 l->op[i], i);
    }
    MN_CHECK(mn_shape_valid(in), MN_ERR_SHAPE, "%s: invalid input shape %s", d, mn_shape_str(in, sh));
    MN_CHECK(in->c == l->cin, MN_ERR_SHAPE, "%s: input %s has %d channels, expected %d", d, mn_shape_str(in, sh),
             in->c, l->cin);
    const int ext[3] = {in->d, in->h, in->w};
    int o[3];
    MN_CHECK(convt_out_ext(l, ext, o), MN_ERR_SHAPE,
             "%s: input %s gives an empty output ((in-1)*s - 2p + dil*(k-1) + op + 1 < 1)", d, mn_shape_str(in, sh));
    *out = (mn_shape){in->n, l->cout, o[0], o[1], o[2]};
    /* GEMM dimensions are ints: batch*voxels and cout*kvol must fit. */
    MN_CHECK((double)in->n * mn_shape_voxels(in) <= INT_MAX && (double)in->n * mn_shape_voxels(out) <= INT_MAX &&
                 (double)l->cout * l->k[0] * l->k[1] * l->k[2] <= INT_MAX,
             MN_ERR_SHAPE, "%s: input %s is too large (batch x voxels or cout x kernel volume exceeds 2^31)", d,
             mn_shape_str(in, sh));
    return MN_OK;
}

/* vol2col geometry of the adjoint convolution: volume = our output grid, columns = our input voxels. */
static void convt_vgeom(const mn_convt3d *l, const mn_shape *in, const mn_shape *out, mn_vgeom *g)
{
    *g = (mn_vgeom){.c = l->cout, .in = {out->d, out->h, out->w}, .out = {in->d, in->h, in->w}};
    for (int i = 0; i < 3; i++) {
        g->k[i] = l->k[i];
        g->s[i] = l->s[i];
        g->p[i] = l->p[i];
        g->dil[i] = l->dil[i];
    }
}

static int convt_group(int n, size_t cols)
{
    size_t g = (MN_CONVT_GEMM_COLS + cols - 1) / cols;
    if (g < 1) g = 1;
    if (g > (size_t)n) g = (size_t)n;
    return (int)g;
}

mn_err mn_convt3d_out_shape(const mn_convt3d *l, const mn_shape *in, mn_shape *out)
{
    MN_CHECK(out != NULL, MN_ERR_ARG, "convt3d: NULL output shape");
    MN_CALL(convt_check(l, in, out));
    return MN_OK;
}

size_t mn_convt3d_workspace_floats(const mn_convt3d *l, const mn_shape *in)
{
    if (!l || !in || !mn_shape_valid(in) || l->cin <= 0 || l->cout <= 0) return 0;
    const int ext[3] = {in->d, in->h, in->w};
    int o[3];
    if (!convt_out_ext(l, ext, o)) return 0;
    const size_t Pin = mn_shape_voxels(in);
    const size_t rows = (size_t)l->cout * l->k[0] * l->k[1] * l->k[2];
    const int g = convt_group(in->n, Pin);
    return rows * g * Pin + (g > 1 ? (size_t)l->cin * g * Pin : 0);
}

mn_err mn_convt3d_forward(const mn_convt3d *l, const mn_shape *in, const float *x, float *y, float *ws)
{
    mn_shape out;
    MN_CALL(convt_check(l, in, &out));
    MN_CHECK(x != NULL && y != NULL && l->w != NULL, MN_ERR_ARG, "convt3d %d->%d forward: NULL x, y or weights",
             l->cin, l->cout);
    MN_CHECK(ws != NULL, MN_ERR_ARG, "convt3d %d->%d forward: NULL workspace (need %zu floats)", l->cin, l->cout,
             mn_convt3d_workspace_floats(l, in));
    const int N = in->n, Ci = l->cin, Co = l->cout;
    const size_t Pin = mn_shape_voxels(in), Pout = mn_shape_voxels(&out);
    mn_vgeom g;
    convt_vgeom(l, in, &out, &g);
    const int rows = (int)mn_vgeom_rows(&g);
    const int G = convt_group(N, Pin);
    float *col = ws, *stage = ws + (size_t)rows * G * Pin;
    for (int n0 = 0; n0 < N; n0 += G) {
        const int nb = N - n0 < G ? N - n0 : G;
        const size_t ld = (size_t)nb * Pin;
        const float *xg = x + (size_t)n0 * Ci * Pin;
        if (nb > 1) {
            mn_batch_pack(xg, nb, Ci, Pin, Pin, stage);
            xg = stage;
        }
        MN_CALL(mn_gemm(rows, (int)ld, Ci, 1.0f, l->w, 1, rows, xg, (ptrdiff_t)ld, 1, 0.0f, col, (ptrdiff_t)ld, 1));
        float *yg = y + (size_t)n0 * Co * Pout;
        memset(yg, 0, sizeof(float) * (size_t)nb * Co * Pout);
        mn_col2vol(&g, nb, col, ld, Pin, yg, (size_t)Co * Pout);
    }
    if (l->b) mn_bias_add(y, N, Co, Pout, l->b);
    return MN_OK;
}

mn_err mn_convt3d_backward(const mn_convt3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                           float *ws)
{
    mn_shape out;
    MN_CALL(convt_check(l, in, &out));
    MN_CHECK(dy != NULL && l->w != NULL, MN_ERR_ARG, "convt3d %d->%d backward: NULL dy or weights", l->cin,
             l->cout);
    MN_CHECK(x != NULL || l->dw == NULL, MN_ERR_ARG, "convt3d %d->%d backward: dw wanted but x is NULL", l->cin,
             l->cout);
    const int N = in->n, Ci = l->cin, Co = l->cout;
    const size_t Pin = mn_shape_voxels(in), Pout = mn_shape_voxels(&out);
    if (l->db) mn_bias_grad(dy, N, Co, Pout, l->db);
    if (!dx && !l->dw) return MN_OK;
    MN_CHECK(ws != NULL, MN_ERR_ARG, "convt3d %d->%d backward: NULL workspace (need %zu floats)", Ci, Co,
             mn_convt3d_workspace_floats(l, in));
    mn_vgeom g;
    convt_vgeom(l, in, &out, &g);
    const int rows = (int)mn_vgeom_rows(&g);
    const int G = convt_group(N, Pin);
    float *col = ws, *stage = ws + (size_t)rows * G * Pin;
    for (int n0 = 0; n0 < N; n0 += G) {
        const int nb = N - n0 < G ? N - n0 : G;
        const size_t ld = (size_t)nb * Pin;
        mn_vol2col(&g, nb, dy + (size_t)n0 * Co * Pout, (size_t)Co * Pout, col, ld, Pin);
        if (l->dw) {
            const float *xg = x + (size_t)n0 * Ci * Pin;
            if (nb > 1) {
                mn_batch_pack(xg, nb, Ci, Pin, Pin, stage);
                xg = stage;
            }
            MN_CALL(mn_gemm(Ci, rows, (int)ld, 1.0f, xg, (ptrdiff_t)ld, 1, col, 1, (ptrdiff_t)ld, 1.0f, l->dw, rows,
                            1));
        }
        if (dx) {
            float *dxg = dx + (size_t)n0 * Ci * Pin;
            if (nb == 1) {
                MN_CALL(mn_gemm(Ci, (int)Pin, rows, 1.0f, l->w, rows, 1, col, (ptrdiff_t)Pin, 1, 1.0f, dxg,
                                (ptrdiff_t)Pin, 1));
            } else {
                MN_CALL(mn_gemm(Ci, (int)ld, rows, 1.0f, l->w, rows, 1, col, (ptrdiff_t)ld, 1, 0.0f, stage,
                                (ptrdiff_t)ld, 1));
                mn_batch_unpack(stage, nb, Ci, Pin, NULL, 1, dxg);
            }
        }
    }
    return MN_OK;
}

/* ---- direct loop nests -------------------------------------------------------------------------------------- */

/* Input index i with i*s - p + t*dil == o, or -1. */
static inline int convt_src(int o, int t, int s, int p, int dil, int I)
{
    const int num = o + p - t * dil;
    if (num < 0 || num % s) return -1;
    return num / s < I ? num / s : -1;
}

mn_err mn_convt3d_forward_ref(const mn_convt3d *l, const mn_shape *in, const float *x, float *y)
{
    mn_shape out;
    MN_CALL(convt_check(l, in, &out));
    MN_CHECK(x != NULL && y != NULL && l->w != NULL, MN_ERR_ARG, "convt3d_ref: NULL x, y or weights");
    const int Ci = l->cin, Co = l->cout;
    const int I0 = in->d, I1 = in->h, I2 = in->w, O0 = out.d, O1 = out.h, O2 = out.w;
    const int k0 = l->k[0], k1 = l->k[1], k2 = l->k[2];
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int n = 0; n < in->n; n++)
        for (int co = 0; co < Co; co++)
            for (int oz = 0; oz < O0; oz++)
                for (int oy = 0; oy < O1; oy++)
                    for (int ox = 0; ox < O2; ox++) {
                        double acc = l->b ? l->b[co] : 0.0;
                        for (int a = 0; a < k0; a++) {
                            const int iz = convt_src(oz, a, l->s[0], l->p[0], l->dil[0], I0);
                            if (iz < 0) continue;
                            for (int b = 0; b < k1; b++) {
                                const int iy = convt_src(oy, b, l->s[1], l->p[1], l->dil[1], I1);
                                if (iy < 0) continue;
                                for (int e = 0; e < k2; e++) {
                                    const int ix = convt_src(ox, e, l->s[2], l->p[2], l->dil[2], I2);
                                    if (ix < 0) continue;
                                    for (int ci = 0; ci < Ci; ci++)
                                        acc += (double)l->w[(((size_t)ci * Co + co) * k0 + a) * k1 * k2 + b * k2 + e] *
                                               x[((((size_t)n * Ci + ci) * I0 + iz) * I1 + iy) * I2 + ix];
                                }
                            }
                        }
                        y[((((size_t)n * Co + co) * O0 + oz) * O1 + oy) * O2 + ox] = (float)acc;
                    }
    return MN_OK;
}

mn_err mn_convt3d_backward_ref(const mn_convt3d *l, const mn_shape *in, const float *x, const float *dy, float *dx)
{
    mn_shape out;
    MN_CALL(convt_check(l, in, &out));
    MN_CHECK(dy != NULL && l->w != NULL, MN_ERR_ARG, "convt3d_ref: NULL dy or weights");
    MN_CHECK(x != NULL || l->dw == NULL, MN_ERR_ARG, "convt3d_ref: dw wanted but x is NULL");
    const int N = in->n, Ci = l->cin, Co = l->cout;
    const int I0 = in->d, I1 = in->h, I2 = in->w, O0 = out.d, O1 = out.h, O2 = out.w;
    const int k0 = l->k[0], k1 = l->k[1], k2 = l->k[2];
    const size_t Pout = mn_shape_voxels(&out);
    if (l->db)
        for (int co = 0; co < Co; co++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                for (size_t v = 0; v < Pout; v++) acc += dy[((size_t)n * Co + co) * Pout + v];
            l->db[co] += (float)acc;
        }
    /* dx[n,ci,i] = sum_{co,tap} w[ci,co,tap] dy[n,co,i*s-p+tap*dil];  dw[ci,co,tap] = sum_{n,i} x[n,ci,i] dy[...]. */
    if (l->dw) {
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int ci = 0; ci < Ci; ci++)
            for (int co = 0; co < Co; co++)
                for (int a = 0; a < k0; a++)
                    for (int b = 0; b < k1; b++)
                        for (int e = 0; e < k2; e++) {
                            double acc = 0.0;
                            for (int n = 0; n < N; n++)
                                for (int iz = 0; iz < I0; iz++) {
                                    const int oz = iz * l->s[0] - l->p[0] + a * l->dil[0];
                                    if (oz < 0 || oz >= O0) continue;
                                    for (int iy = 0; iy < I1; iy++) {
                                        const int oy = iy * l->s[1] - l->p[1] + b * l->dil[1];
                                        if (oy < 0 || oy >= O1) continue;
                                        for (int ix = 0; ix < I2; ix++) {
                                            const int ox = ix * l->s[2] - l->p[2] + e * l->dil[2];
                                            if (ox < 0 || ox >= O2) continue;
                                            acc += (double)x[((((size_t)n * Ci + ci) * I0 + iz) * I1 + iy) * I2 + ix] *
                                                   dy[((((size_t)n * Co + co) * O0 + oz) * O1 + oy) * O2 + ox];
                                        }
                                    }
                                }
                            l->dw[(((size_t)ci * Co + co) * k0 + a) * k1 * k2 + b * k2 + e] += (float)acc;
                        }
    }
    if (dx) {
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int n = 0; n < N; n++)
            for (int ci = 0; ci < Ci; ci++)
                for (int iz = 0; iz < I0; iz++)
                    for (int iy = 0; iy < I1; iy++)
                        for (int ix = 0; ix < I2; ix++) {
                            double acc = 0.0;
                            for (int co = 0; co < Co; co++)
                                for (int a = 0; a < k0; a++) {
                                    const int oz = iz * l->s[0] - l->p[0] + a * l->dil[0];
                                    if (oz < 0 || oz >= O0) continue;
                                    for (int b = 0; b < k1; b++) {
                                        const int oy = iy * l->s[1] - l->p[1] + b * l->dil[1];
                                        if (oy < 0 || oy >= O1) continue;
                                        for (int e = 0; e < k2; e++) {
                                            const int ox = ix * l->s[2] - l->p[2] + e * l->dil[2];
                                            if (ox < 0 || ox >= O2) continue;
                                            acc += (double)l->w[(((size_t)ci * Co + co) * k0 + a) * k1 * k2 + b * k2 + e] *
                                                   dy[((((size_t)n * Co + co) * O0 + oz) * O1 + oy) * O2 + ox];
                                        }
                                    }
                                }
                            dx[((((size_t)n * Ci + ci) * I0 + iz) * I1 + iy) * I2 + ix] += (float)acc;
                        }
    }
    return MN_OK;
}
