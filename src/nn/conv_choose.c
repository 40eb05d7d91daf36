/* conv_choose.c: which path each pass of a convolution takes (the layer's algo[], set once when the model is
 * created).  mn_conv3d_choose_algo applies the fixed rule mn_conv3d_rule_algo (MEDNET_CONV_ALGO unset or rule), or
 * times the GEMM path, Winograd and the direct kernels per pass once and records the fastest in the layer (auto);
 * gemm keeps the GEMM path, winograd and direct force Winograd (winograd.c) or the direct kernels (direct.c) where
 * they can run.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mednet/conv3d.h"
#include "mednet/mem.h"
#include "mednet/threads.h"
#include "nn/direct.h"
#include "nn/winograd.h"
#include "nn/winograd4.h"

int mn_wino_env_force(void)
{
    /* Unset means the fixed rule (mn_conv3d_rule_algo): a choice by timing can differ between two processes, and a
     * resumed run must reproduce an uninterrupted one bit for bit (DESIGN.md, checkpoints).  "auto" opts in. */
    const char *e = getenv("MEDNET_CONV_ALGO");
    if (!e || !*e || !strcmp(e, "rule")) return MN_CONV_ENV_RULE;
    if (!strcmp(e, "auto")) return MN_CONV_ENV_AUTO;
    if (!strcmp(e, "gemm")) return MN_CONV_ALGO_GEMM;
    if (!strcmp(e, "winograd")) return MN_CONV_ALGO_WINOGRAD;
    if (!strcmp(e, "direct")) return MN_CONV_ALGO_DIRECT;
    if (!strcmp(e, "winograd4")) return MN_CONV_ALGO_WINOGRAD4;
    return MN_CONV_ENV_BAD;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best of MN_WINO_TUNE_REPS timed runs (after one warm-up) of one pass with the layer's algo[pass] = algo. */
#define MN_WINO_TUNE_REPS 2
static mn_err time_pass(mn_conv3d *t, const mn_shape *in, int pass, int algo, const float *x, float *y,
                        const float *dy, float *dx, float *ws, double *best)
{
    for (int i = 0; i < MN_CONV_NPASS; i++) t->algo[i] = MN_CONV_ALGO_GEMM;
    t->algo[pass] = (unsigned char)algo;
    float *dw = t->dw;
    if (pass != MN_CONV_PASS_BWD_WEIGHTS) t->dw = NULL;
    *best = 1e30;
    mn_err err = MN_OK;
    for (int r = 0; r <= MN_WINO_TUNE_REPS && !err; r++) {
        const double t0 = now_s();
        if (pass == MN_CONV_PASS_FWD)
            err = mn_conv3d_forward(t, in, x, y, ws);
        else
            err = mn_conv3d_backward(t, in, x, dy, pass == MN_CONV_PASS_BWD_DATA ? dx : NULL, ws);
        const double dt = now_s() - t0;
        if (r > 0 && dt < *best) *best = dt;
    }
    t->dw = dw;
    return err;
}

mn_err mn_conv3d_choose_algo(mn_conv3d *l, const mn_shape *in, float *ws, size_t ws_floats)
{
    mn_shape out;
    MN_CALL(mn_conv3d_out_shape(l, in, &out));
    for (int i = 0; i < MN_CONV_NPASS; i++) l->algo[i] = MN_CONV_ALGO_GEMM;
    const int force = mn_wino_env_force();
    MN_CHECK(force != MN_CONV_ENV_BAD, MN_ERR_ARG,
             "MEDNET_CONV_ALGO='%s': expected rule (the default when unset), gemm, winograd, winograd4, direct or "
             "auto",
             getenv("MEDNET_CONV_ALGO"));
    if (force == MN_CONV_ALGO_GEMM) return MN_OK;
    const int can_w = mn_wino_eligible(l, in), can_w4 = mn_wino4_eligible(l, in);
    int can_d[MN_CONV_NPASS], any_d = 0;
    for (int i = 0; i < MN_CONV_NPASS; i++) any_d |= can_d[i] = mn_direct_eligible(l, in, i);
    if (!can_w && !can_w4 && !any_d) return MN_OK;
    if (force != MN_CONV_ENV_AUTO) {
        for (int i = 0; i < MN_CONV_NPASS; i++) {
            mn_conv_algo a = MN_CONV_ALGO_GEMM;
            if (force == MN_CONV_ENV_RULE)
                a = mn_conv3d_rule_algo(l, in, i);
            else if (force == MN_CONV_ALGO_WINOGRAD && can_w)
                a = MN_CONV_ALGO_WINOGRAD;
            else if (force == MN_CONV_ALGO_DIRECT && can_d[i])
                a = MN_CONV_ALGO_DIRECT;
            else if (force == MN_CONV_ALGO_WINOGRAD4 && can_w4)
                a = MN_CONV_ALGO_WINOGRAD4;
            l->algo[i] = (unsigned char)a;
        }
        return MN_OK;
    }
    const size_t need = mn_conv3d_workspace_floats(l, in);
    MN_CHECK(ws != NULL && ws_floats >= need, MN_ERR_ARG,
             "conv3d %d->%d: choosing the algorithm needs a workspace of %zu floats, got %zu", l->cin, l->cout, need,
             ws ? ws_floats : (size_t)0);
    /* Private operands: the layer's parameters and gradients are left alone. */
    const size_t nx = mn_shape_numel(in), ny = mn_shape_numel(&out);
    const size_t nw = (size_t)l->cout * l->cin * l->k[0] * l->k[1] * l->k[2];
    float *buf = NULL;
    MN_CALL(mn_calloc((2 * nx + 2 * ny + 2 * nw + (size_t)l->cout) * sizeof(float), "convolution timing operands",
                      (void **)&buf));
    float *x = buf, *dx = x + nx, *y = dx + nx, *dy = y + ny, *w = dy + ny, *dw = w + nw, *b = dw + nw;
    uint32_t s = 12345u;
    for (size_t i = 0; i < nx; i++, s = s * 1664525u + 1013904223u) x[i] = (float)(s >> 8) * 0x1p-24f - 0.5f;
    for (size_t i = 0; i < ny; i++, s = s * 1664525u + 1013904223u) dy[i] = (float)(s >> 8) * 0x1p-24f - 0.5f;
    for (size_t i = 0; i < nw; i++, s = s * 1664525u + 1013904223u) w[i] = ((float)(s >> 8) * 0x1p-24f - 0.5f) * 0.1f;
    mn_conv3d t = *l;
    t.w = w;
    t.dw = dw;
    t.b = l->b ? b : NULL;
    t.db = NULL;
    mn_err err = MN_OK;
    for (int pass = 0; pass < MN_CONV_NPASS && !err; pass++) {
        if (pass == MN_CONV_PASS_BWD_WEIGHTS && !l->dw) continue;
        double best = 0.0, tw = 1e30, td = 1e30, tw4 = 1e30;
        err = time_pass(&t, in, pass, MN_CONV_ALGO_GEMM, x, y, dy, dx, ws, &best);
        if (!err && can_w) err = time_pass(&t, in, pass, MN_CONV_ALGO_WINOGRAD, x, y, dy, dx, ws, &tw);
        if (!err && can_d[pass]) err = time_pass(&t, in, pass, MN_CONV_ALGO_DIRECT, x, y, dy, dx, ws, &td);
        if (!err && can_w4) err = time_pass(&t, in, pass, MN_CONV_ALGO_WINOGRAD4, x, y, dy, dx, ws, &tw4);
        if (!err && tw < best) {
            l->algo[pass] = MN_CONV_ALGO_WINOGRAD;
            best = tw;
        }
        if (!err && td < best) {
            l->algo[pass] = MN_CONV_ALGO_DIRECT;
            best = td;
        }
        if (!err && tw4 < best) l->algo[pass] = MN_CONV_ALGO_WINOGRAD4;
    }
    mn_free(&buf);
    return err;
}

mn_conv_algo mn_conv3d_rule_algo(const mn_conv3d *l, const mn_shape *in, int pass)
{
    return mn_conv3d_rule_algo_threads(l, in, pass, mn_threads_count());
}

mn_conv_algo mn_conv3d_rule_algo_threads(const mn_conv3d *l, const mn_shape *in, int pass, int threads)
{
    if (pass < 0 || pass >= MN_CONV_NPASS) return MN_CONV_ALGO_GEMM;
    int maxdil = 1;
    for (int i = 0; i < 3; i++)
        if (l->dil[i] > maxdil) maxdil = l->dil[i];
    mn_shape o;
    if (maxdil <= MN_WINO4_RULE_MAX_DILATION && l->cin >= MN_WINO4_RULE_MIN_CHANNELS &&
        l->cout >= MN_WINO4_RULE_MIN_CHANNELS && mn_wino4_tiles(l, in) >= MN_WINO4_RULE_MIN_TILES &&
        mn_conv3d_out_shape(l, in, &o) == MN_OK) {
        int minext = o.d < o.h ? o.d : o.h;
        if (o.w < minext) minext = o.w;
        if (minext >= MN_WINO4_RULE_MIN_EXTENT) return MN_CONV_ALGO_WINOGRAD4;
    }
    if (l->k[0] * l->k[1] * l->k[2] > 1 && mn_direct_eligible(l, in, pass) &&
        mn_conv3d_out_shape(l, in, &o) == MN_OK) {
        int minext = o.d < o.h ? o.d : o.h;
        if (o.w < minext) minext = o.w;
        if (minext >= MN_DIRECT_RULE_MIN_EXTENT &&
            (maxdil <= MN_DIRECT_RULE_MAX_DILATION || minext >= MN_DIRECT_RULE_DILATED_MIN_EXTENT))
            return MN_CONV_ALGO_DIRECT;
    }
    if (!mn_wino_eligible(l, in)) return MN_CONV_ALGO_GEMM;
    /* Measured (bench_conv3d --sweep, README "Convolution algorithm"): see MN_WINO_RULE_* in conv3d.h. */
    int dil1 = 1, dil2 = 1;
    for (int i = 0; i < 3; i++) {
        dil1 &= l->dil[i] == 1;
        dil2 &= l->dil[i] == 2;
    }
    if (!dil1 && !dil2) return MN_CONV_ALGO_GEMM;
    const int minch = pass == MN_CONV_PASS_FWD ? MN_WINO_RULE_MIN_CHANNELS_FWD : MN_WINO_RULE_MIN_CHANNELS;
    mn_shape out;
    if (mn_conv3d_out_shape(l, in, &out) != MN_OK) return MN_CONV_ALGO_GEMM;
    int minext = out.d < out.h ? out.d : out.h;
    if (out.w < minext) minext = out.w;
    if (l->cin < minch || l->cout < minch) return MN_CONV_ALGO_GEMM;
    if (minext < MN_WINO_RULE_MIN_EXTENT) return MN_CONV_ALGO_GEMM;
    if (dil1 && threads >= 2 && pass != MN_CONV_PASS_FWD && minext >= MN_WINO_RULE_MT_GEMM_BWD_EXTENT)
        return MN_CONV_ALGO_GEMM;
    return MN_CONV_ALGO_WINOGRAD;
}
