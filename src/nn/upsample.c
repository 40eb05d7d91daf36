/* upsample.c: trilinear resizing (F.interpolate(mode='trilinear', align_corners=False, size=...)) and its adjoint,
 * and nearest resizing of int32 label volumes (F.interpolate(mode='nearest')).
 *
 * Index rules, computed in float exactly as PyTorch's CPU kernels (opmath float for float tensors):
 *   linear:  scale = in/out;  src = max(scale*(dst + 0.5) - 0.5, 0);  i0 = (int)src;  i1 = i0 + (i0 < in-1);
 *            l1 = src - i0, l0 = 1 - l1;  an axis with in == out is copied (i0 = i1 = dst, l0 = 1).
 *   nearest: scale = in/out;  src = min(floor(dst*scale), in-1), with PyTorch's shortcuts in == out and out == 2*in.
 * The output size is given, never a scale factor, so the scale is in/out (F.interpolate(size=...) semantics; with
 * scale_factor=2 and out = 2*in the two agree).  The interpolation is evaluated in PyTorch's nested order
 * (depth of (height of (width))).  Width-axis weights are tabulated per call on each thread's stack (up to
 * MN_UP_TAB columns, else recomputed on the fly), depth and height weights once per row, so nothing is allocated
 * and any output size works.
 *
 * Forward splits over (slice, output depth); backward, a scatter, splits over the N*C slices so that no two
 * threads write the same dx element.
 */
#include "mednet/layers.h"

#include <math.h>

/* Source indices and weights of output index `dst` along one axis. */
static inline void lin_axis(int dst, int in, int out, float scale, int *i0, int *i1, float *l0, float *l1)
{
    if (in == out) {
        *i0 = *i1 = dst;
        *l0 = 1.0f;
        *l1 = 0.0f;
        return;
    }
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int i = (int)src;
    float lam = src - (float)i;
    if (lam > 1.0f) lam = 1.0f;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *l1 = lam;
    *l0 = 1.0f - lam;
}

static mn_err resize_check(const mn_shape *in, const mn_shape *out, int need_c, const char *fn)
{
    char a[64], b[64];
    MN_CHECK(in != NULL && out != NULL, MN_ERR_ARG, "%s: NULL shape", fn);
    int vin = in->n > 0 && in->d > 0 && in->h > 0 && in->w > 0 && (!need_c || in->c > 0);
    int vout = out->n > 0 && out->d > 0 && out->h > 0 && out->w > 0 && (!need_c || out->c > 0);
    MN_CHECK(vin && vout, MN_ERR_SHAPE, "%s: invalid shapes in %s, out %s", fn, mn_shape_str(in, a),
             mn_shape_str(out, b));
    MN_CHECK(in->n == out->n && (!need_c || in->c == out->c), MN_ERR_SHAPE,
             "%s: input %s and output %s must have the same batch%s", fn, mn_shape_str(in, a), mn_shape_str(out, b),
             need_c ? " and channels" : "");
    return MN_OK;
}

/* Width-axis indices and weights of every output column, tabulated once per call and thread (stack, at most
 * MN_UP_TAB columns; wider outputs compute them on the fly). */
#define MN_UP_TAB 2048
typedef struct up_tab {
    int x0[MN_UP_TAB], x1[MN_UP_TAB];
    float c0[MN_UP_TAB], c1[MN_UP_TAB];
} up_tab;

static inline void up_tab_fill(up_tab *t, int W, int OW, float sw)
{
    for (int ox = 0; ox < OW && ox < MN_UP_TAB; ox++) lin_axis(ox, W, OW, sw, &t->x0[ox], &t->x1[ox], &t->c0[ox], &t->c1[ox]);
}

static inline void up_tab_get(const up_tab *t, int ox, int W, int OW, float sw, int *x0, int *x1, float *c0, float *c1)
{
    if (OW <= MN_UP_TAB) {
        *x0 = t->x0[ox];
        *x1 = t->x1[ox];
        *c0 = t->c0[ox];
        *c1 = t->c1[ox];
    } else {
        lin_axis(ox, W, OW, sw, x0, x1, c0, c1);
    }
}

/* y (out shape) is overwritten with the trilinear resize of x (in shape). */
mn_err mn_upsample3d_forward(const mn_shape *in, const float *x, const mn_shape *out, float *y)
{
    MN_CALL(resize_check(in, out, 1, "upsample3d forward"));
    const int D = in->d, H = in->h, W = in->w, OD = out->d, OH = out->h, OW = out->w;
    const float sd = (float)D / (float)OD, sh = (float)H / (float)OH, sw = (float)W / (float)OW;
    const size_t V = mn_shape_voxels(in), OV = mn_shape_voxels(out);
    const long NC = (long)in->n * in->c;
#pragma omp parallel
    {
        up_tab t;
        up_tab_fill(&t, W, OW, sw);
#pragma omp for collapse(2) schedule(static)
        for (long nc = 0; nc < NC; nc++)
            for (int oz = 0; oz < OD; oz++) {
                const float *xs = x + (size_t)nc * V;
                float *ys = y + (size_t)nc * OV + (size_t)oz * OH * OW;
                int z0, z1;
                float a0, a1;
                lin_axis(oz, D, OD, sd, &z0, &z1, &a0, &a1);
                for (int oy = 0; oy < OH; oy++) {
                    int y0, y1;
                    float b0, b1;
                    lin_axis(oy, H, OH, sh, &y0, &y1, &b0, &b1);
                    const float *r00 = xs + ((size_t)z0 * H + y0) * W, *r01 = xs + ((size_t)z0 * H + y1) * W;
                    const float *r10 = xs + ((size_t)z1 * H + y0) * W, *r11 = xs + ((size_t)z1 * H + y1) * W;
                    for (int ox = 0; ox < OW; ox++) {
                        int x0, x1;
                        float c0, c1;
                        up_tab_get(&t, ox, W, OW, sw, &x0, &x1, &c0, &c1);
                        float t0 = b0 * (c0 * r00[x0] + c1 * r00[x1]) + b1 * (c0 * r01[x0] + c1 * r01[x1]);
                        float t1 = b0 * (c0 * r10[x0] + c1 * r10[x1]) + b1 * (c0 * r11[x0] + c1 * r11[x1]);
                        ys[(size_t)oy * OW + ox] = a0 * t0 + a1 * t1;
                    }
                }
            }
    }
    return MN_OK;
}

/* dx (in shape) += the adjoint of the forward resize applied to dy (out shape).  Accumulates. */
mn_err mn_upsample3d_backward(const mn_shape *in, const mn_shape *out, const float *dy, float *dx)
{
    MN_CALL(resize_check(in, out, 1, "upsample3d backward"));
    if (dx == NULL) return MN_OK;
    const int D = in->d, H = in->h, W = in->w, OD = out->d, OH = out->h, OW = out->w;
    const float sd = (float)D / (float)OD, sh = (float)H / (float)OH, sw = (float)W / (float)OW;
    const size_t V = mn_shape_voxels(in), OV = mn_shape_voxels(out);
    const long NC = (long)in->n * in->c;
#pragma omp parallel
    {
        up_tab t;
        up_tab_fill(&t, W, OW, sw);
#pragma omp for schedule(static)
        for (long nc = 0; nc < NC; nc++) {
            float *d = dx + (size_t)nc * V;
            const float *g = dy + (size_t)nc * OV;
            for (int oz = 0; oz < OD; oz++) {
                int z0, z1;
                float a0, a1;
                lin_axis(oz, D, OD, sd, &z0, &z1, &a0, &a1);
                for (int oy = 0; oy < OH; oy++) {
                    int y0, y1;
                    float b0, b1;
                    lin_axis(oy, H, OH, sh, &y0, &y1, &b0, &b1);
                    float *r00 = d + ((size_t)z0 * H + y0) * W, *r01 = d + ((size_t)z0 * H + y1) * W;
                    float *r10 = d + ((size_t)z1 * H + y0) * W, *r11 = d + ((size_t)z1 * H + y1) * W;
                    const float w00 = a0 * b0, w01 = a0 * b1, w10 = a1 * b0, w11 = a1 * b1;
                    const float *gr = g + ((size_t)oz * OH + oy) * OW;
                    for (int ox = 0; ox < OW; ox++) {
                        int x0, x1;
                        float c0, c1;
                        up_tab_get(&t, ox, W, OW, sw, &x0, &x1, &c0, &c1);
                        const float v = gr[ox], v0 = c0 * v, v1 = c1 * v;
                        r00[x0] += w00 * v0;
                        r00[x1] += w00 * v1;
                        r01[x0] += w01 * v0;
                        r01[x1] += w01 * v1;
                        r10[x0] += w10 * v0;
                        r10[x1] += w10 * v1;
                        r11[x0] += w11 * v0;
                        r11[x1] += w11 * v1;
                    }
                }
            }
        }
    }
    return MN_OK;
}

/* PyTorch's nearest_idx: identity, halving shortcut, else min(floor(dst * (float)in/out), in - 1). */
static inline int nearest_axis(int dst, int in, int out, float scale)
{
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

/* y (n, out d, h, w) int32 is overwritten with x (n, in d, h, w) resized by the nearest rule; c is ignored. */
mn_err mn_labels_resize_nearest(const mn_shape *in, const int32_t *x, const mn_shape *out, int32_t *y)
{
    MN_CALL(resize_check(in, out, 0, "labels_resize_nearest"));
    const int D = in->d, H = in->h, W = in->w, OD = out->d, OH = out->h, OW = out->w;
    const float sd = (float)D / (float)OD, sh = (float)H / (float)OH, sw = (float)W / (float)OW;
    const size_t V = (size_t)D * H * W, OV = (size_t)OD * OH * OW;
    const int N = in->n;
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (int oz = 0; oz < OD; oz++) {
            const int32_t *xs = x + (size_t)n * V + (size_t)nearest_axis(oz, D, OD, sd) * H * W;
            int32_t *ys = y + (size_t)n * OV + (size_t)oz * OH * OW;
            for (int oy = 0; oy < OH; oy++) {
                const int32_t *xr = xs + (size_t)nearest_axis(oy, H, OH, sh) * W;
                for (int ox = 0; ox < OW; ox++) ys[(size_t)oy * OW + ox] = xr[nearest_axis(ox, W, OW, sw)];
            }
        }
    return MN_OK;
}
