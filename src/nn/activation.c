/* activation.c: ReLU on flat float arrays.
 *
 * Element-wise, so the layout does not matter.  NaN propagates through the forward pass (y = x when x is not
 * below 0), as torch.relu does.  The backward pass reads the OUTPUT y, so that the input buffer can be overwritten
 * in place (y aliasing x): dx += dy where y > 0; PyTorch's threshold_backward passes the gradient where the output
 * is not <= 0, which we match exactly (a NaN output passes dy).  OpenMP splits the array only when it is large
 * enough to pay for the fork.
 */
#include "mednet/layers.h"

/* Elements below which the loops stay single-threaded. */
#define MN_ACT_PAR_MIN 32768

/* y = max(x, 0) element-wise (NaN stays NaN); y may alias x.  Overwrites y. */
void mn_relu_forward(size_t n, const float *x, float *y)
{
#pragma omp parallel for simd schedule(static) if (n > MN_ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

/* dx += dy where y > 0 (more exactly: where !(y <= 0)), from the forward OUTPUT y.  Accumulates. */
void mn_relu_backward(size_t n, const float *y, const float *dy, float *dx)
{
#pragma omp parallel for simd schedule(static) if (n > MN_ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) dx[i] += y[i] <= 0.0f ? 0.0f : dy[i];
}
