/* direct.h (private): channel-blocked direct kernels for 3-D convolutions with several input channels (the 3x3x3
 * convolutions of every ResNet stage, any stride, padding and dilation).  See direct.c.  conv3d.c runs a pass here
 * when the layer's algo[pass] is MN_CONV_ALGO_DIRECT and mn_direct_eligible says the pass can run; the functions
 * take the layer and shapes already validated by conv3d.c.
 */
#ifndef MN_NN_DIRECT_H
#define MN_NN_DIRECT_H

#include <stddef.h>

#include "mednet/conv3d.h"

/* 1 when pass (MN_CONV_PASS_*) of (l, in) can run on the direct kernels: at least two input channels, a CPU with
 * AVX-512F or AVX2+FMA (mn_stem_isa, shared with the stem's kernels), an output row of at most MN_DIRECT_MAX_OX
 * voxels, and
 *   forward, backward-weights  cout a multiple of the vector width (16 floats with AVX-512, 8 with AVX2);
 *   backward-data              stride 1, cin a multiple of the vector width, padding <= dilation*(kernel-1).
 * 0 for a bad pass. */
#define MN_DIRECT_MAX_OX 256
int mn_direct_eligible(const mn_conv3d *l, const mn_shape *in, int pass);

/* Workspace floats any eligible pass needs (0 when no pass is eligible). */
size_t mn_direct_workspace_floats(const mn_conv3d *l, const mn_shape *in);

/* y (out shape) overwritten, with the bias. */
mn_err mn_direct_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                         float *ws);

/* dx += dL/dx. */
mn_err mn_direct_backward_data(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *dy,
                               float *dx, float *ws);

/* l->dw += dL/dw (the bias gradient is the caller's). */
mn_err mn_direct_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                  const float *dy, float *ws);

#endif
