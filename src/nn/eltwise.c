/* eltwise.c: element-wise helpers for residual joins and gradient buffers.
 *
 * Plain loops with `omp parallel for simd`; split over threads only above a size where the fork pays off.
 */
#include "mednet/layers.h"

/* Elements below which the loops stay single-threaded. */
#define MN_ELT_PAR_MIN 32768

/* y += x (n elements).  x and y must not partially overlap. */
void mn_add_inplace(size_t n, float *y, const float *x)
{
#pragma omp parallel for simd schedule(static) if (n > MN_ELT_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* y = 0 (n elements).  Zeroing in parallel also spreads first-touch pages over the threads. */
void mn_zero(size_t n, float *y)
{
#pragma omp parallel for simd schedule(static) if (n > MN_ELT_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] = 0.0f;
}
