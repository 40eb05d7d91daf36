/* winograd.h (private): 3-D Winograd F(2x2x2, 3x3x3) for stride-1 3x3x3 convolutions, any padding and dilation.
 *
 * Used by conv3d.c when a layer's per-pass choice (mn_conv3d.algo) says so; see winograd.c for the algorithm and
 * the layouts.  All functions take the layer and shapes already validated by conv3d.c.
 */
#ifndef MN_NN_WINOGRAD_H
#define MN_NN_WINOGRAD_H

#include <stddef.h>

#include "mednet/conv3d.h"

/* 1 when l (for input `in`) can run on the Winograd path: kernel 3x3x3, stride 1, extents within the per-dimension
 * tile limit.  0 otherwise (the GEMM path then runs). */
int mn_wino_eligible(const mn_conv3d *l, const mn_shape *in);

/* Workspace floats for forward and backward on input `in` (0 when not eligible). */
size_t mn_wino_workspace_floats(const mn_conv3d *l, const mn_shape *in);

/* y (out shape) overwritten, bias added.  ws: mn_wino_workspace_floats floats. */
mn_err mn_wino_forward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, float *y,
                       float *ws);

/* dx += dL/dx (dx != NULL); the bias gradient is not touched. */
mn_err mn_wino_backward_data(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *dy, float *dx,
                             float *ws);

/* l->dw += dL/dw (l->dw != NULL); the bias gradient is not touched. */
mn_err mn_wino_backward_weights(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x,
                                const float *dy, float *ws);

/* Both backward passes: dx += dL/dx and l->dw += dL/dw (both non-NULL); when the layer fits one block of tiles the
 * transformed dy is computed once for both. */
mn_err mn_wino_backward(const mn_conv3d *l, const mn_shape *in, const mn_shape *out, const float *x, const float *dy,
                        float *dx, float *ws);

/* MEDNET_CONV_ALGO: MN_CONV_ENV_RULE (unset, empty or "rule": mn_conv3d_rule_algo), MN_CONV_ALGO_GEMM ("gemm"),
 * MN_CONV_ALGO_WINOGRAD ("winograd"), MN_CONV_ALGO_DIRECT ("direct"), MN_CONV_ENV_AUTO ("auto": measure),
 * MN_CONV_ENV_BAD (anything else). */
enum { MN_CONV_ENV_AUTO = -1, MN_CONV_ENV_BAD = -2, MN_CONV_ENV_RULE = -3 };
int mn_wino_env_force(void); /* conv_choose.c */

#endif
