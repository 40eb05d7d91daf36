/* batchnorm3d.c: 3-D batch normalisation with torch.nn.BatchNorm3d semantics, on NCDHW float32.
 *
 * Layout: channel c of sample n is the contiguous run x[(n*C + c)*V .. +V) with V = D*H*W, so every statistic of
 * channel c is a reduction over N runs.  Work is split over channels (one OpenMP iteration = one channel), which
 * keeps each channel's sums in one thread: the summation order is fixed, so results do not depend on the thread
 * count or on scheduling.  Sums are accumulated in double (`omp simd` reductions, a fixed vector order).
 *
 * Training mode is built from the split form used by synchronised batch norm (stats -> apply, bwd_stats ->
 * bwd_apply).  The public split functions and mn_bn3d_forward/backward all run the same per-channel kernels
 * below; forward/backward fuse them per channel so that no scratch array of 2*C sums is needed.
 *
 * Variance is E[x^2] - mean^2 from double sums (what the split form can all-reduce in one message); with float
 * inputs the double sums keep ~8 correct digits even when |mean| is 1e4 times the standard deviation.  The affine
 * transform is y = (x - mean) * a + beta with a = gamma*invstd.  PyTorch's CPU kernel folds it into x*a + b with
 * b = beta - mean*a, which cancels catastrophically in float when |mean| >> std (an input offset of 100 costs
 * ~1e-5 absolute); subtracting first is as cheap and closer to the exact result.
 * Rejected: Welford merging (needs three values per channel and a custom MPI reduction).
 *
 * Fused variants (the _fused/_masked entry points) save whole passes over activations in the encoder: forward
 * writes max(bn(x) + res, 0) (batch norm, residual add and ReLU in one pass instead of three), backward reads the
 * ReLU's output as a mask on dy instead of a separate masking pass, and overwrites dx instead of adding into a
 * zeroed buffer (no zeroing pass).  Each computes the same float operations in the same order as the separate
 * passes, so results are bit-identical to them (the test compares exactly).
 */
#include "mednet/layers.h"
#include "nn/simd_clones.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static mn_err bn_backward(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, const float *mask,
                          float *dx, const float *save, int training, int overwrite);

/* Shape check shared by every entry point. */
static mn_err bn_check(const mn_bn3d *l, const mn_shape *in, const char *fn)
{
    char b[64];
    MN_CHECK(l != NULL && in != NULL, MN_ERR_ARG, "bn3d %s: NULL layer or shape", fn);
    MN_CHECK(l->c > 0, MN_ERR_ARG, "bn3d %s: layer has c = %d channels, expected > 0", fn, l->c);
    MN_CHECK(mn_shape_valid(in), MN_ERR_SHAPE, "bn3d(c=%d) %s: invalid input shape %s", l->c, fn,
             mn_shape_str(in, b));
    MN_CHECK(in->c == l->c, MN_ERR_SHAPE, "bn3d(c=%d) %s: input %s has %d channels, expected %d", l->c, fn,
             mn_shape_str(in, b), in->c, l->c);
    return MN_OK;
}

/* sum x and sum x^2 of channel c over all n and voxels. */
MN_SIMD_CLONES
static void stats_channel(const mn_shape *in, const float *x, int c, double *s1, double *s2)
{
    const size_t V = mn_shape_voxels(in);
    double a = 0, q = 0;
    for (int n = 0; n < in->n; n++) {
        const float *p = x + ((size_t)n * in->c + c) * V;
#pragma omp simd reduction(+ : a, q)
        for (size_t v = 0; v < V; v++) {
            double t = p[v];
            a += t;
            q += t * t;
        }
    }
    *s1 = a;
    *s2 = q;
}

/* y = (x - m) * a + b of channel c, plus res, then max(y, 0) if relu (the order and rounding of the separate
 * passes): the output of the forward passes and of mn_bn3d_recompute alike. */
static inline void out_channel(const mn_shape *in, const float *x, float *y, int c, float m, float a, float b,
                               const float *res, int relu)
{
    const size_t V = mn_shape_voxels(in);
    for (int n = 0; n < in->n; n++) {
        size_t off = ((size_t)n * in->c + c) * V;
        const float *p = x + off;
        float *q = y + off;
        if (res) {
            const float *r = res + off;
            if (relu) {
#pragma omp simd
                for (size_t v = 0; v < V; v++) {
                    float t = (p[v] - m) * a + b;
                    t = t + r[v];
                    q[v] = t < 0.0f ? 0.0f : t; /* as mn_relu_forward: NaN and -0 pass */
                }
            } else {
#pragma omp simd
                for (size_t v = 0; v < V; v++) {
                    float t = (p[v] - m) * a + b;
                    q[v] = t + r[v];
                }
            }
        } else if (relu) {
#pragma omp simd
            for (size_t v = 0; v < V; v++) {
                float t = (p[v] - m) * a + b;
                q[v] = t < 0.0f ? 0.0f : t; /* as mn_relu_forward: NaN and -0 pass */
            }
        } else {
#pragma omp simd
            for (size_t v = 0; v < V; v++) q[v] = (p[v] - m) * a + b;
        }
    }
}

/* Normalise channel c with the sums over `count` voxels; write save (mean, invstd and the scale y was computed
 * with) and update running stats (training).  Fused
 * epilogue: y = max(bn(x) + res, 0) when res != NULL / relu (the order and rounding of the separate passes). */
MN_SIMD_CLONES
static void apply_channel(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save, int c,
                          double s1, double s2, double count, const float *res, int relu)
{
    double mean = s1 / count;
    double var = s2 / count - mean * mean;
    if (var < 0) var = 0; /* rounding of E[x^2] - mean^2 for a constant channel */
    const double invstd = 1.0 / sqrt(var + (double)l->eps);
    save[c] = (float)mean;
    save[l->c + c] = (float)invstd;
    if (l->running_mean) {
        double m = l->momentum;
        l->running_mean[c] = (float)((1.0 - m) * l->running_mean[c] + m * mean);
        l->running_var[c] = (float)((1.0 - m) * l->running_var[c] + m * var * count / (count - 1.0));
    }
    const float a = (float)((l->gamma ? l->gamma[c] : 1.0) * invstd), b = l->beta ? l->beta[c] : 0.0f;
    const float m = (float)mean;
    save[2 * l->c + c] = a;
    out_channel(in, x, y, c, m, a, b, res, relu);
}

/* g where the ReLU output y is > 0, else +0: the gradient the ReLU passes back.  Written as a bit mask, not
 * `y > 0 ? g : 0`: GCC left the double-precision reductions below scalar with the select in them ("control flow in
 * loop"; bwd_stats_channel was 3.5% of a resnet18 step), and vectorises this.  Same value as the select for every
 * g, NaN and infinities included. */
static inline float relu_grad(float g, float y)
{
    uint32_t b;
    memcpy(&b, &g, sizeof b);
    b &= 0u - (uint32_t)(y > 0.0f);
    memcpy(&g, &b, sizeof g);
    return g;
}

/* sum dy and sum dy*xhat of channel c (xhat from save).  With `mask`, dy counts only where mask > 0 (the
 * backward of a ReLU whose output is mask, applied on the fly). */
MN_SIMD_CLONES
static void bwd_stats_channel(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                              const float *mask, const float *save, int c, double *sdy, double *sdyx)
{
    const size_t V = mn_shape_voxels(in);
    const float mean = save[c];
    double a = 0, q = 0;
    for (int n = 0; n < in->n; n++) {
        size_t off = ((size_t)n * in->c + c) * V;
        const float *p = x + off, *g = dy + off;
        if (mask) {
            const float *y = mask + off;
#pragma omp simd reduction(+ : a, q)
            for (size_t v = 0; v < V; v++) {
                const float gv = relu_grad(g[v], y[v]);
                a += gv;
                q += (double)gv * (double)(p[v] - mean);
            }
        } else {
#pragma omp simd reduction(+ : a, q)
            for (size_t v = 0; v < V; v++) {
                a += g[v];
                q += (double)g[v] * (double)(p[v] - mean);
            }
        }
    }
    *sdy = a;
    *sdyx = q * save[l->c + c];
}

/* dx += gamma*invstd*(dy - sdy/count - xhat*sdyx/count) (training), or gamma*invstd*dy (eval, count = 0);
 * dgamma += local sum dy*xhat, dbeta += local sum dy.  Fused variants: `mask` as in bwd_stats_channel, and
 * `overwrite` writes dx instead of adding (the value 0 + t, so the result equals zeroing first); dx may alias
 * mask (each element is read before it is written). */
MN_SIMD_CLONES
static void bwd_apply_channel(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                              const float *mask, float *dx, const float *save, int c, double sdy, double sdyx,
                              double count, int overwrite, int local)
{
    const size_t V = mn_shape_voxels(in);
    const float mean = save[c], invstd = save[l->c + c];
    const double g = l->gamma ? l->gamma[c] : 1.0;
    /* local: sdy and sdyx are this rank's own sums (no reduction), which are exactly the parameter gradients'
     * sums, so the pass that computes those is skipped */
    const int want_param = (l->dgamma != NULL || l->dbeta != NULL) && !local;
    float a = (float)(g * invstd), k1 = 0, k2 = 0;
    if (count > 0) {
        k1 = (float)(sdy / count);
        k2 = (float)(sdyx / count * invstd); /* folds the second invstd of xhat */
    }
    double ldy = 0, ldyx = 0;
    for (int n = 0; n < in->n; n++) {
        size_t off = ((size_t)n * in->c + c) * V;
        const float *p = x + off, *gy = dy + off, *y = mask ? mask + off : NULL;
        /* parameter sums first: dx may alias mask (the stem's buffer reuse) */
        if (want_param && y) {
#pragma omp simd reduction(+ : ldy, ldyx)
            for (size_t v = 0; v < V; v++) {
                const float gv = relu_grad(gy[v], y[v]);
                ldy += gv;
                ldyx += (double)gv * (double)(p[v] - mean);
            }
        } else if (want_param) {
#pragma omp simd reduction(+ : ldy, ldyx)
            for (size_t v = 0; v < V; v++) {
                ldy += gy[v];
                ldyx += (double)gy[v] * (double)(p[v] - mean);
            }
        }
        if (dx) {
            float *q = dx + off;
            if (y && overwrite) {
#pragma omp simd
                for (size_t v = 0; v < V; v++) {
                    const float gl = gy[v]; /* loaded unconditionally: a select, which vectorises */
                    const float gv = y[v] > 0.0f ? gl : 0.0f;
                    q[v] = 0.0f + a * (gv - k1 - (p[v] - mean) * k2); /* 0 + t: a zero is +0, as when added */
                }
            } else if (y) {
#pragma omp simd
                for (size_t v = 0; v < V; v++) {
                    const float gl = gy[v]; /* loaded unconditionally: a select, which vectorises */
                    const float gv = y[v] > 0.0f ? gl : 0.0f;
                    q[v] += a * (gv - k1 - (p[v] - mean) * k2);
                }
            } else if (overwrite) {
#pragma omp simd
                for (size_t v = 0; v < V; v++) q[v] = 0.0f + a * (gy[v] - k1 - (p[v] - mean) * k2);
            } else {
#pragma omp simd
                for (size_t v = 0; v < V; v++) q[v] += a * (gy[v] - k1 - (p[v] - mean) * k2);
            }
        }
    }
    if (local) {
        if (l->dgamma) l->dgamma[c] += (float)sdyx;
        if (l->dbeta) l->dbeta[c] += (float)sdy;
        return;
    }
    if (l->dgamma) l->dgamma[c] += (float)(ldyx * invstd);
    if (l->dbeta) l->dbeta[c] += (float)ldy;
}

/* Statistics of this rank's data.  sums (2*c doubles) is overwritten: [0,c) sum x, [c,2c) sum x^2.
 * Not collective; the caller all-reduces sums before mn_bn3d_apply when synchronising across ranks. */
mn_err mn_bn3d_stats(const mn_bn3d *l, const mn_shape *in, const float *x, double *sums)
{
    MN_CALL(bn_check(l, in, "stats"));
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) stats_channel(in, x, c, &sums[c], &sums[C + c]);
    return MN_OK;
}

/* Normalise x into y (y may alias x) with the global sums over `count` (> 1) voxels per channel; writes save
 * (mean, invstd) and, when running_mean != NULL, updates the running statistics with the unbiased variance. */
mn_err mn_bn3d_apply(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save, const double *sums,
                     double count)
{
    MN_CALL(bn_check(l, in, "apply"));
    MN_CHECK(count > 1, MN_ERR_SHAPE,
             "bn3d(c=%d) apply: expected more than 1 value per channel in training, got count = %.0f", l->c, count);
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) apply_channel(l, in, x, y, save, c, sums[c], sums[C + c], count, NULL, 0);
    return MN_OK;
}

mn_err mn_bn3d_apply_fused(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save,
                           const double *sums, double count, const float *res, int relu)
{
    MN_CALL(bn_check(l, in, "apply_fused"));
    MN_CHECK(count > 1, MN_ERR_SHAPE,
             "bn3d(c=%d) apply: expected more than 1 value per channel in training, got count = %.0f", l->c, count);
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) apply_channel(l, in, x, y, save, c, sums[c], sums[C + c], count, res, relu);
    return MN_OK;
}

/* y = bn(x) + res, then max(y, 0) if relu, again from what forward saved: the forward's own values, bit for bit (a
 * model keeps the batch norm's input and recomputes its output in the backward pass instead of storing both). */
MN_SIMD_CLONES
static void recompute_channel(const mn_bn3d *l, const mn_shape *in, const float *x, const float *save,
                              const float *res, int relu, float *y, int c)
{
    out_channel(in, x, y, c, save[c], save[2 * l->c + c], l->beta ? l->beta[c] : 0.0f, res, relu);
}

mn_err mn_bn3d_recompute(const mn_bn3d *l, const mn_shape *in, const float *x, const float *save, const float *res,
                         int relu, float *y)
{
    MN_CALL(bn_check(l, in, "recompute"));
    MN_CHECK(x != NULL && save != NULL && y != NULL, MN_ERR_ARG, "bn3d(c=%d) recompute: NULL x, save or y", l->c);
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) recompute_channel(l, in, x, save, res, relu, y, c);
    return MN_OK;
}

/* Backward statistics of this rank's data (overwrites sums: [0,c) sum dy, [c,2c) sum dy*xhat). */
mn_err mn_bn3d_bwd_stats(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, const float *save,
                         double *sums)
{
    MN_CALL(bn_check(l, in, "bwd_stats"));
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) bwd_stats_channel(l, in, x, dy, NULL, save, c, &sums[c], &sums[C + c]);
    return MN_OK;
}

mn_err mn_bn3d_bwd_stats_masked(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                                const float *mask, const float *save, double *sums)
{
    MN_CALL(bn_check(l, in, "bwd_stats_masked"));
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) bwd_stats_channel(l, in, x, dy, mask, save, c, &sums[c], &sums[C + c]);
    return MN_OK;
}

/* dx (may be NULL) += with the GLOBAL sums over `count` voxels; dgamma/dbeta += sums over the LOCAL data only, so
 * that all-reducing the parameter gradients afterwards adds each rank's share exactly once. */
mn_err mn_bn3d_bwd_apply(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                         const float *save, const double *sums, double count)
{
    MN_CALL(bn_check(l, in, "bwd_apply"));
    MN_CHECK(count > 1, MN_ERR_SHAPE, "bn3d(c=%d) bwd_apply: expected count > 1, got %.0f", l->c, count);
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) bwd_apply_channel(l, in, x, dy, NULL, dx, save, c, sums[c], sums[C + c], count, 0, 0);
    return MN_OK;
}

mn_err mn_bn3d_bwd_apply_fused(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                               const float *mask, float *dx, const float *save, const double *sums, double count)
{
    MN_CALL(bn_check(l, in, "bwd_apply_fused"));
    MN_CHECK(count > 1, MN_ERR_SHAPE, "bn3d(c=%d) bwd_apply: expected count > 1, got %.0f", l->c, count);
    const int C = in->c;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) bwd_apply_channel(l, in, x, dy, mask, dx, save, c, sums[c], sums[C + c], count, 1, 0);
    return MN_OK;
}

/* Training: the split form with count = N*D*H*W and no reduction, fused per channel.  Eval: running statistics
 * (batch statistics when the layer tracks none, as PyTorch with track_running_stats=False). */
mn_err mn_bn3d_forward(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save, int training)
{
    return mn_bn3d_forward_fused(l, in, x, y, save, training, NULL, 0);
}

mn_err mn_bn3d_forward_fused(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save,
                             int training, const float *res, int relu)
{
    MN_CALL(bn_check(l, in, "forward"));
    MN_CHECK((l->running_mean == NULL) == (l->running_var == NULL), MN_ERR_ARG,
             "bn3d(c=%d) forward: running_mean and running_var must be both set or both NULL", l->c);
    const int C = in->c;
    const double count = (double)in->n * (double)mn_shape_voxels(in);
    if (training || l->running_mean == NULL) {
        MN_CHECK(count > 1, MN_ERR_SHAPE,
                 "bn3d(c=%d) forward: expected more than 1 value per channel in training, got input of %d x %zu",
                 l->c, in->n, mn_shape_voxels(in));
#pragma omp parallel for schedule(static)
        for (int c = 0; c < C; c++) {
            double s1, s2;
            stats_channel(in, x, c, &s1, &s2);
            apply_channel(l, in, x, y, save, c, s1, s2, count, res, relu);
        }
        return MN_OK;
    }
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double mean = l->running_mean[c];
        double invstd = 1.0 / sqrt((double)l->running_var[c] + (double)l->eps);
        save[c] = (float)mean;
        save[C + c] = (float)invstd;
        const float a = (float)((l->gamma ? l->gamma[c] : 1.0) * invstd), b = l->beta ? l->beta[c] : 0.0f;
        save[2 * C + c] = a;
        out_channel(in, x, y, c, (float)mean, a, b, res, relu);
    }
    return MN_OK;
}

/* Training: gradient through the batch statistics (bwd_stats -> bwd_apply with count = N*D*H*W).  Eval (with
 * tracked running stats): the statistics are constants, dx += dy*gamma*invstd.  `save` is what forward wrote. */
mn_err mn_bn3d_backward(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                        const float *save, int training)
{
    return bn_backward(l, in, x, dy, NULL, dx, save, training, 0);
}

mn_err mn_bn3d_backward_fused(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                              const float *mask, float *dx, const float *save, int training)
{
    return bn_backward(l, in, x, dy, mask, dx, save, training, 1);
}

static mn_err bn_backward(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, const float *mask,
                          float *dx, const float *save, int training, int overwrite)
{
    MN_CALL(bn_check(l, in, "backward"));
    const int C = in->c;
    const double count = (double)in->n * (double)mn_shape_voxels(in);
    const int batch_stats = training || l->running_mean == NULL;
    MN_CHECK(!batch_stats || count > 1, MN_ERR_SHAPE,
             "bn3d(c=%d) backward: expected more than 1 value per channel in training", l->c);
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        if (batch_stats) {
            double sdy, sdyx;
            bwd_stats_channel(l, in, x, dy, mask, save, c, &sdy, &sdyx);
            bwd_apply_channel(l, in, x, dy, mask, dx, save, c, sdy, sdyx, count, overwrite, 1);
        } else {
            bwd_apply_channel(l, in, x, dy, mask, dx, save, c, 0, 0, 0, overwrite, 0);
        }
    }
    return MN_OK;
}
