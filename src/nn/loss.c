/* loss.c: voxel-wise segmentation losses fused with their gradients: softmax cross-entropy (PyTorch's
 * F.cross_entropy with class weights and ignore_index), soft Dice through the softmax, and hard Dice for evaluation.
 *
 * Layout: logits (N, C, D, H, W), labels (N, D, H, W).  The class scores of voxel t = n*V + v (V = D*H*W) sit at
 * logits[(n*C + c)*V + v], a stride of V between classes; every loop walks voxels (contiguous across threads) and
 * gathers the C strided values of each.  The softmax is the stable form: m = max_c x_c, s = sum exp(x_c - m),
 * log p_c = x_c - m - log s.
 *
 * Passes.  The first pass validates (labels in [0, C) or ignore_label, all logits finite) and accumulates the
 * reductions the gradient needs (CE: the loss and the weight sum; Dice: per-class sums).  The gradient pass runs
 * only when the first pass succeeded, so on error dlogits is untouched.  The softmax is recomputed in the second
 * pass rather than stored: it would need a C*V scratch buffer.
 *
 * Determinism.  Reductions over voxels are split into static per-thread chunks, accumulated in double, and merged
 * in thread order (an `ordered` loop), never with atomics or critical sections in arrival order: the result is
 * bitwise reproducible for a given thread count.  Per-class sums of Dice live on each thread's stack, which caps C
 * at MN_LOSS_MAX_CLASSES there.
 */
#include "mednet/loss.h"

#include <math.h>
#include <omp.h>

/* Common argument checks; `fn` names the loss. */
static mn_err loss_check(const char *fn, const mn_shape *in, const float *logits, const int32_t *labels)
{
    char b[64];
    MN_CHECK(in != NULL && logits != NULL && labels != NULL, MN_ERR_ARG, "%s: NULL shape, logits or labels", fn);
    MN_CHECK(mn_shape_valid(in), MN_ERR_SHAPE, "%s: invalid logits shape %s", fn, mn_shape_str(in, b));
    return MN_OK;
}

/* Report the first invalid voxel found by a scan: a non-finite logit (MN_ERR_NUMERIC) takes precedence over a
 * label out of range (MN_ERR_ARG).  `nv` (N*V) means none. */
static mn_err report_bad(const char *fn, const mn_shape *in, const float *logits, const int32_t *labels,
                         int ignore_label, long bad_logit, long bad_label, long nv)
{
    const size_t V = mn_shape_voxels(in);
    const long hw = (long)in->h * in->w;
    if (bad_logit < nv) {
        long n = bad_logit / (long)V, v = bad_logit % (long)V;
        int c = 0;
        while (c < in->c - 1 && isfinite(logits[((size_t)n * in->c + c) * V + v])) c++;
        MN_FAIL(MN_ERR_NUMERIC, "%s: non-finite logit %g at (n=%ld, c=%d, z=%ld, y=%ld, x=%ld)", fn,
                (double)logits[((size_t)n * in->c + c) * V + v], n, c, v / hw, (v % hw) / in->w, v % in->w);
    }
    if (bad_label < nv) {
        long n = bad_label / (long)V, v = bad_label % (long)V;
        MN_FAIL(MN_ERR_ARG, "%s: label %d at voxel (n=%ld, z=%ld, y=%ld, x=%ld) is outside [0, %d) and is not the "
                "ignore label %d", fn, (int)labels[bad_label], n, v / hw, (v % hw) / in->w, v % in->w, in->c,
                ignore_label);
    }
    return MN_OK;
}

/* Max over the C strided logits of one voxel; *finite = 0 if any is NaN or infinite. */
static inline float vox_max(const float *xp, int C, size_t V, int *finite)
{
    float m = -INFINITY;
    int ok = 1;
    for (int c = 0; c < C; c++) {
        float a = xp[(size_t)c * V];
        ok &= isfinite(a) != 0;
        m = a > m ? a : m;
    }
    *finite = ok;
    return m;
}

/* sum_c exp(x_c - m) in double. */
static inline double vox_sumexp(const float *xp, int C, size_t V, float m)
{
    double s = 0;
    for (int c = 0; c < C; c++) s += expf(xp[(size_t)c * V] - m);
    return s;
}

/* Cross-entropy: value into *loss, scale * gradient ACCUMULATED into dlogits (NULL: value only), number of
 * non-ignored voxels into *nvalid (NULL allowed).  On error nothing is written. */
mn_err mn_ce_loss(const mn_shape *in, const float *logits, const int32_t *labels, int ignore_label,
                  const float *class_weights, float scale, double *loss, float *dlogits, long *nvalid)
{
    static const char *fn = "ce_loss";
    MN_CALL(loss_check(fn, in, logits, labels));
    MN_CHECK(loss != NULL, MN_ERR_ARG, "%s: NULL loss pointer", fn);
    const int C = in->c;
    if (class_weights)
        for (int c = 0; c < C; c++)
            MN_CHECK(isfinite(class_weights[c]), MN_ERR_ARG, "%s: class weight %d is %g, expected finite", fn, c,
                     (double)class_weights[c]);
    const size_t V = mn_shape_voxels(in);
    const long NV = (long)in->n * (long)V;

    /* Pass 1: validate, sum w[y] * (lse - x_y) and w[y] over non-ignored voxels. */
    double lsum = 0, wsum = 0;
    long nval = 0, bad_logit = NV, bad_label = NV;
#pragma omp parallel
    {
        double tl = 0, tw = 0;
        long tn = 0, tbf = NV, tbl = NV;
#pragma omp for schedule(static)
        for (long t = 0; t < NV; t++) {
            const float *xp = logits + (size_t)(t / (long)V) * C * V + (size_t)(t % (long)V);
            int finite;
            float m = vox_max(xp, C, V, &finite);
            if (!finite) {
                if (t < tbf) tbf = t;
                continue;
            }
            int32_t y = labels[t];
            if (y == ignore_label) continue;
            if (y < 0 || y >= C) {
                if (t < tbl) tbl = t;
                continue;
            }
            double w = class_weights ? class_weights[y] : 1.0;
            double lse = (double)m + log(vox_sumexp(xp, C, V, m));
            tl += w * (lse - (double)xp[(size_t)y * V]);
            tw += w;
            tn++;
        }
#pragma omp for ordered schedule(static, 1)
        for (int th = 0; th < omp_get_num_threads(); th++) {
#pragma omp ordered
            {
                lsum += tl;
                wsum += tw;
                nval += tn;
                if (tbf < bad_logit) bad_logit = tbf;
                if (tbl < bad_label) bad_label = tbl;
            }
        }
    }
    MN_CALL(report_bad(fn, in, logits, labels, ignore_label, bad_logit, bad_label, NV));
    if (nvalid) *nvalid = nval;
    /* All voxels ignored (or all weights zero): PyTorch gives 0/0; we define the loss as 0 with no gradient. */
    if (nval == 0 || wsum == 0) {
        *loss = 0;
        return MN_OK;
    }
    *loss = lsum / wsum;
    if (!dlogits) return MN_OK;

    /* Pass 2: dlogits_c += scale * w[y] / wsum * (p_c - [c == y]). */
    const double norm = (double)scale / wsum;
#pragma omp parallel for schedule(static)
    for (long t = 0; t < NV; t++) {
        int32_t y = labels[t];
        if (y == ignore_label) continue;
        const size_t off = (size_t)(t / (long)V) * C * V + (size_t)(t % (long)V);
        const float *xp = logits + off;
        float *dp = dlogits + off;
        int finite;
        float m = vox_max(xp, C, V, &finite);
        double inv = 1.0 / vox_sumexp(xp, C, V, m);
        double coef = norm * (class_weights ? class_weights[y] : 1.0);
        for (int c = 0; c < C; c++) {
            double p = expf(xp[(size_t)c * V] - m) * inv;
            dp[(size_t)c * V] += (float)(coef * (p - (c == y ? 1.0 : 0.0)));
        }
    }
    return MN_OK;
}

/* Soft Dice (see loss.h): value into *loss, scale * gradient through the softmax ACCUMULATED into dlogits (NULL:
 * value only).  smooth >= 0; a class whose denominator is 0 (smooth = 0 and no valid voxel) counts as dice 1 with
 * no gradient.  On error nothing is written. */
mn_err mn_dice_loss(const mn_shape *in, const float *logits, const int32_t *labels, int ignore_label, int first_class,
                    float smooth, float scale, double *loss, float *dlogits)
{
    static const char *fn = "dice_loss";
    MN_CALL(loss_check(fn, in, logits, labels));
    MN_CHECK(loss != NULL, MN_ERR_ARG, "%s: NULL loss pointer", fn);
    const int C = in->c;
    MN_CHECK(C <= MN_LOSS_MAX_CLASSES, MN_ERR_ARG, "%s: %d classes, at most MN_LOSS_MAX_CLASSES = %d supported", fn,
             C, MN_LOSS_MAX_CLASSES);
    MN_CHECK(first_class >= 0 && first_class < C, MN_ERR_ARG, "%s: first_class = %d, expected in [0, %d)", fn,
             first_class, C);
    MN_CHECK(isfinite(smooth) && smooth >= 0, MN_ERR_ARG, "%s: smooth = %g, expected finite and >= 0", fn,
             (double)smooth);
    const size_t V = mn_shape_voxels(in);
    const long NV = (long)in->n * (long)V;

    /* Pass 1: per class, I = sum p g, P = sum p, G = sum g over valid voxels (stored as [I | P | G]). */
    double tot[3 * MN_LOSS_MAX_CLASSES];
    for (int k = 0; k < 3 * C; k++) tot[k] = 0;
    long bad_logit = NV, bad_label = NV;
#pragma omp parallel
    {
        double acc[3 * MN_LOSS_MAX_CLASSES];
        for (int k = 0; k < 3 * C; k++) acc[k] = 0;
        long tbf = NV, tbl = NV;
#pragma omp for schedule(static)
        for (long t = 0; t < NV; t++) {
            const float *xp = logits + (size_t)(t / (long)V) * C * V + (size_t)(t % (long)V);
            int finite;
            float m = vox_max(xp, C, V, &finite);
            if (!finite) {
                if (t < tbf) tbf = t;
                continue;
            }
            int32_t y = labels[t];
            if (y == ignore_label) continue;
            if (y < 0 || y >= C) {
                if (t < tbl) tbl = t;
                continue;
            }
            double inv = 1.0 / vox_sumexp(xp, C, V, m);
            for (int c = first_class; c < C; c++) acc[C + c] += expf(xp[(size_t)c * V] - m) * inv;
            if (y >= first_class) {
                acc[y] += expf(xp[(size_t)y * V] - m) * inv;
                acc[2 * C + y] += 1.0;
            }
        }
#pragma omp for ordered schedule(static, 1)
        for (int th = 0; th < omp_get_num_threads(); th++) {
#pragma omp ordered
            {
                for (int k = 0; k < 3 * C; k++) tot[k] += acc[k];
                if (tbf < bad_logit) bad_logit = tbf;
                if (tbl < bad_label) bad_label = tbl;
            }
        }
    }
    MN_CALL(report_bad(fn, in, logits, labels, ignore_label, bad_logit, bad_label, NV));

    /* Per class: dice = num/den; dL/dp_c = A_c g_c + B_c with A_c = -2/(K den), B_c = num/(K den^2). */
    const int K = C - first_class;
    double A[MN_LOSS_MAX_CLASSES], B[MN_LOSS_MAX_CLASSES], mean_dice = 0;
    for (int c = 0; c < C; c++) A[c] = B[c] = 0;
    for (int c = first_class; c < C; c++) {
        double num = 2.0 * tot[c] + smooth, den = tot[C + c] + tot[2 * C + c] + smooth;
        if (den > 0) {
            mean_dice += num / den;
            A[c] = -2.0 / (K * den);
            B[c] = num / (K * den * den);
        } else {
            mean_dice += 1.0;
        }
    }
    *loss = 1.0 - mean_dice / K;
    if (!dlogits) return MN_OK;

    /* Pass 2: through the softmax, dx_j = p_j (a_j - sum_c p_c a_c) with a_c = dL/dp_c. */
#pragma omp parallel for schedule(static)
    for (long t = 0; t < NV; t++) {
        int32_t y = labels[t];
        if (y == ignore_label) continue;
        const size_t off = (size_t)(t / (long)V) * C * V + (size_t)(t % (long)V);
        const float *xp = logits + off;
        float *dp = dlogits + off;
        int finite;
        float m = vox_max(xp, C, V, &finite);
        double inv = 1.0 / vox_sumexp(xp, C, V, m);
        double dot = 0;
        for (int c = first_class; c < C; c++)
            dot += expf(xp[(size_t)c * V] - m) * inv * (B[c] + (c == y ? A[c] : 0.0));
        for (int c = 0; c < C; c++) {
            double p = expf(xp[(size_t)c * V] - m) * inv;
            double a = B[c] + (c == y ? A[c] : 0.0);
            dp[(size_t)c * V] += (float)(scale * p * (a - dot));
        }
    }
    return MN_OK;
}

/* Hard Dice per class of argmax(logits) (first maximum wins) against labels; dice (C doubles) is overwritten,
 * NaN where a class is absent from both prediction and labels.  Ignored voxels are skipped. */
mn_err mn_dice_hard(const mn_shape *in, const float *logits, const int32_t *labels, int ignore_label, double *dice)
{
    static const char *fn = "dice_hard";
    MN_CALL(loss_check(fn, in, logits, labels));
    MN_CHECK(dice != NULL, MN_ERR_ARG, "%s: NULL dice array", fn);
    const int C = in->c;
    MN_CHECK(C <= MN_LOSS_MAX_CLASSES, MN_ERR_ARG, "%s: %d classes, at most MN_LOSS_MAX_CLASSES = %d supported", fn,
             C, MN_LOSS_MAX_CLASSES);
    const size_t V = mn_shape_voxels(in);
    const long NV = (long)in->n * (long)V;

    /* Counts [tp | predicted | labelled] per class: integers, so the merge order does not matter. */
    long tot[3 * MN_LOSS_MAX_CLASSES];
    for (int k = 0; k < 3 * C; k++) tot[k] = 0;
    long bad_logit = NV, bad_label = NV;
#pragma omp parallel
    {
        long acc[3 * MN_LOSS_MAX_CLASSES];
        for (int k = 0; k < 3 * C; k++) acc[k] = 0;
        long tbf = NV, tbl = NV;
#pragma omp for schedule(static)
        for (long t = 0; t < NV; t++) {
            const float *xp = logits + (size_t)(t / (long)V) * C * V + (size_t)(t % (long)V);
            float m = -INFINITY;
            int arg = 0, finite = 1;
            for (int c = 0; c < C; c++) {
                float a = xp[(size_t)c * V];
                finite &= isfinite(a) != 0;
                if (a > m) {
                    m = a;
                    arg = c;
                }
            }
            if (!finite) {
                if (t < tbf) tbf = t;
                continue;
            }
            int32_t y = labels[t];
            if (y == ignore_label) continue;
            if (y < 0 || y >= C) {
                if (t < tbl) tbl = t;
                continue;
            }
            acc[C + arg]++;
            acc[2 * C + y]++;
            if (arg == y) acc[y]++;
        }
#pragma omp for ordered schedule(static, 1)
        for (int th = 0; th < omp_get_num_threads(); th++) {
#pragma omp ordered
            {
                for (int k = 0; k < 3 * C; k++) tot[k] += acc[k];
                if (tbf < bad_logit) bad_logit = tbf;
                if (tbl < bad_label) bad_label = tbl;
            }
        }
    }
    MN_CALL(report_bad(fn, in, logits, labels, ignore_label, bad_logit, bad_label, NV));
    for (int c = 0; c < C; c++) {
        long den = tot[C + c] + tot[2 * C + c];
        dice[c] = den == 0 ? NAN : 2.0 * (double)tot[c] / (double)den;
    }
    return MN_OK;
}
