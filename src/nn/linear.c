/* linear.c: fully connected layer, torch.nn.Linear: y (n, out) = x (n, in) w^T + b, w stored (out, in).
 *
 * These layers are tiny (the classification head: a few hundred inputs, a handful of outputs, a small batch), so
 * plain loops with double accumulators beat the cost of a BLIS call and keep each dot product in a fixed order
 * (deterministic regardless of threads).  Forward splits over (sample, output) pairs; backward splits dx over
 * samples and dw/db over outputs, so no two threads write the same element.
 */
#include "mednet/layers.h"

static mn_err linear_check(const mn_linear *l, int n, const char *fn)
{
    MN_CHECK(l != NULL, MN_ERR_ARG, "linear %s: NULL layer", fn);
    MN_CHECK(l->in > 0 && l->out > 0 && l->w != NULL, MN_ERR_ARG,
             "linear(in=%d,out=%d) %s: in and out must be > 0 and w set", l->in, l->out, fn);
    MN_CHECK(n > 0, MN_ERR_SHAPE, "linear(in=%d,out=%d) %s: batch n = %d, expected > 0", l->in, l->out, fn, n);
    return MN_OK;
}

/* y (n, out) is overwritten.  x is (n, in). */
mn_err mn_linear_forward(const mn_linear *l, int n, const float *x, float *y)
{
    MN_CALL(linear_check(l, n, "forward"));
    const int I = l->in, O = l->out;
    const long NO = (long)n * O;
#pragma omp parallel for schedule(static) if (NO * I > 65536)
    for (long t = 0; t < NO; t++) {
        const long s = t / O, o = t % O;
        const float *xr = x + s * I, *wr = l->w + o * I;
        double acc = l->b ? l->b[o] : 0.0;
        for (int i = 0; i < I; i++) acc += (double)xr[i] * (double)wr[i];
        y[t] = (float)acc;
    }
    return MN_OK;
}

/* dx (n, in) += dy w (when dx != NULL); dw (out, in) += dy^T x and db (out) += sum_n dy (when set).  Accumulates. */
mn_err mn_linear_backward(const mn_linear *l, int n, const float *x, const float *dy, float *dx)
{
    MN_CALL(linear_check(l, n, "backward"));
    const int I = l->in, O = l->out;
    const long work = (long)n * O * I;
    if (dx) {
#pragma omp parallel for schedule(static) if (work > 65536)
        for (int s = 0; s < n; s++)
            for (int i = 0; i < I; i++) {
                double acc = 0;
                for (int o = 0; o < O; o++) acc += (double)dy[(long)s * O + o] * (double)l->w[(long)o * I + i];
                dx[(long)s * I + i] += (float)acc;
            }
    }
    if (l->dw || l->db) {
#pragma omp parallel for schedule(static) if (work > 65536)
        for (int o = 0; o < O; o++) {
            if (l->db) {
                double acc = 0;
                for (int s = 0; s < n; s++) acc += dy[(long)s * O + o];
                l->db[o] += (float)acc;
            }
            if (l->dw) {
                for (int i = 0; i < I; i++) {
                    double acc = 0;
                    for (int s = 0; s < n; s++) acc += (double)dy[(long)s * O + o] * (double)x[(long)s * I + i];
                    l->dw[(long)o * I + i] += (float)acc;
                }
            }
        }
    }
    return MN_OK;
}
