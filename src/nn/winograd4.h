/* winograd4.h (private): 3-D Winograd F(4x4x4, 3x3x3) for stride-1 3x3x3 convolutions, any padding and dilation.
 *
 * Used by conv3d.c when a layer's per-pass choice (mn_conv3d.algo) is MN_CONV_ALGO_WINOGRAD4; see winograd4.c for
 * the algorithm, the blocking and the accuracy.  All functions take the layer and shapes already validated by
 * conv3d.c.
 */
#ifndef MN_NN_WINOGRAD4_H
#define MN_NN_WINOGRAD4_H

#include <stddef.h>

#include "mednet/conv3d.h"

/* 1 when l (for input `in`) can run on this path: kernel 3x3x3, stride 1, at most MN_WINO4_MAXT tiles per
 * dimension.  0 otherwise. */
int mn_wino4_eligible(const mn_conv3d *l, const mn_shape *in);

/* Tiles (4x4x4 outputs each) over the batch, 0 when not eligible. */
long mn_wino4_tiles(const mn_conv3d *l, const mn_shape *in);

/* Workspace floats for any pass on input `in` (0 when not eligible). */
size_t mn_wino4_workspace_floats(const mn_conv3d *l, const mn_shape *in);

/* y (out shape) overwritten, bias added.  ws: mn_wino4_workspace_floats floats. */
mn_err mn_wino4_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                        float *ws);

/* dx += dL/dx; the bias gradient is not touched. */
mn_err mn_wino4_backward_data(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *dy,
                              float *dx, float *ws);

/* l->dw += dL/dw; the bias gradient is not touched. */
mn_err mn_wino4_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                 const float *dy, float *ws);

/* Tests only: the block budget in floats (0: the default), so that small layers run in several blocks. */
void mn_wino4_set_budget(size_t floats);

#endif
