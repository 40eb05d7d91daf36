/* layers.h: the non-convolution layers on NCDHW float32: batch norm, ReLU, pooling, fully connected, trilinear
 * up-sampling and nearest resizing of label volumes.
 *
 * Conventions (as conv3d.h): forward overwrites its output; backward ACCUMULATES (+=) into dx and into parameter
 * gradients, which the model zeroes once per step; a NULL gradient pointer means "not wanted".  Forward saves what
 * backward needs into caller-provided buffers (batch statistics, pooling argmax).  Nothing allocates per call.
 * Shapes are checked; a mismatch returns MN_ERR_SHAPE naming the layer.
 */
#ifndef MEDNET_LAYERS_H
#define MEDNET_LAYERS_H

#include <stdint.h>
#include "mednet/error.h"
#include "mednet/tensor.h"

/* ---- batch norm 3-D (torch.nn.BatchNorm3d semantics) ----
 * Training: normalise with the batch mean and biased variance over (N, D, H, W); running statistics updated as
 * running = (1 - momentum) * running + momentum * batch, with the UNBIASED batch variance.  Eval: running stats.
 * `save` holds MN_BN3D_SAVE(c) floats written by forward: batch mean, 1/sqrt(var + eps) and the scale
 * gamma/sqrt(var + eps) the output was computed with (training), or the running-stat equivalents (eval). */
#define MN_BN3D_SAVE(c) (3 * (size_t)(c))
typedef struct mn_bn3d {
    int c;
    float eps, momentum;                /* PyTorch defaults 1e-5, 0.1 */
    float *gamma, *beta;                /* (c) weight and bias: parameters */
    float *dgamma, *dbeta;              /* (c) or NULL */
    float *running_mean, *running_var;  /* (c) buffers, not trained; NULL allowed in training if not tracked */
} mn_bn3d;

mn_err mn_bn3d_forward(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save, int training);
mn_err mn_bn3d_backward(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                        const float *save, int training);

/* The split form used for synchronised batch norm across ranks (the caller all-reduces the sums in between):
 *   stats:      sums[0..c) = sum x, sums[c..2c) = sum x^2 over this rank's (N,D,H,W), in double (overwrites);
 *   apply:      normalise with the global sums over `count` voxels per channel, write save, update running stats;
 *   bwd_stats:  sums[0..c) = sum dy, sums[c..2c) = sum dy * xhat (overwrites);
 *   bwd_apply:  dx += gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count); dgamma/dbeta += local terms.
 * mn_bn3d_forward/backward in training mode equal these with count = local N*D*H*W and no reduction. */
mn_err mn_bn3d_stats(const mn_bn3d *l, const mn_shape *in, const float *x, double *sums);
mn_err mn_bn3d_apply(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save, const double *sums,
                     double count);
mn_err mn_bn3d_bwd_stats(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, const float *save,
                         double *sums);
mn_err mn_bn3d_bwd_apply(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy, float *dx,
                         const float *save, const double *sums, double count);

/* Fused passes (bit-identical to the separate ones; `res` and `mask` may be NULL):
 *   forward_fused:  y = bn(x) + res, then max(y, 0) if relu (y must not alias res);
 *   apply_fused:    the same for the split form;
 *   backward_fused: with g = dy where mask > 0, else 0 (ReLU backward from its output `mask`): dx is OVERWRITTEN
 *                   with the batch-norm input gradient of g (dx may alias mask or dy), dgamma/dbeta += as in
 *                   mn_bn3d_backward;
 *   bwd_stats_masked / bwd_apply_fused: the same for the split form (bwd_apply_fused overwrites dx). */
mn_err mn_bn3d_forward_fused(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save,
                             int training, const float *res, int relu);
mn_err mn_bn3d_apply_fused(const mn_bn3d *l, const mn_shape *in, const float *x, float *y, float *save,
                           const double *sums, double count, const float *res, int relu);
mn_err mn_bn3d_backward_fused(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                              const float *mask, float *dx, const float *save, int training);
mn_err mn_bn3d_bwd_stats_masked(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                                const float *mask, const float *save, double *sums);
mn_err mn_bn3d_bwd_apply_fused(const mn_bn3d *l, const mn_shape *in, const float *x, const float *dy,
                               const float *mask, float *dx, const float *save, const double *sums, double count);

/* y = bn(x) + res, then max(y, 0) if relu (res may be NULL), from the `save` a forward (any of the above, training or
 * eval) wrote for x: that forward's output bit for bit.  A model stores the batch norm's input only and recomputes
 * the output when the backward pass needs it. */
mn_err mn_bn3d_recompute(const mn_bn3d *l, const mn_shape *in, const float *x, const float *save, const float *res,
                         int relu, float *y);

/* ---- ReLU ----  y = max(x, 0), y may alias x.  Backward from the OUTPUT: dx += dy * (y > 0). */
void mn_relu_forward(size_t n, const float *x, float *y);
void mn_relu_backward(size_t n, const float *y, const float *dy, float *dx);

/* ---- max pooling 3-D (torch.nn.MaxPool3d, padding is -inf) ----  argmax (int32, one per output element) holds the
 * flat input index within the (n, c) slice, written by forward, read by backward. */
typedef struct mn_maxpool3d {
    int k[3], s[3], p[3];
} mn_maxpool3d;
mn_err mn_maxpool3d_out_shape(const mn_maxpool3d *l, const mn_shape *in, mn_shape *out);
mn_err mn_maxpool3d_forward(const mn_maxpool3d *l, const mn_shape *in, const float *x, float *y, int32_t *argmax);
mn_err mn_maxpool3d_backward(const mn_maxpool3d *l, const mn_shape *in, const float *dy, const int32_t *argmax,
                             float *dx);
/* The direct loop-nest twin of mn_maxpool3d_forward (same contract, same results bit for bit), for tests. */
mn_err mn_maxpool3d_forward_ref(const mn_maxpool3d *l, const mn_shape *in, const float *x, float *y, int32_t *argmax);

/* ---- average pooling 3-D (torch.nn.AvgPool3d, count_include_pad=True) ----  k = 1 with stride s is MedicalNet's
 * type-A shortcut subsampling. */
typedef struct mn_avgpool3d {
    int k[3], s[3], p[3];
} mn_avgpool3d;
mn_err mn_avgpool3d_out_shape(const mn_avgpool3d *l, const mn_shape *in, mn_shape *out);
mn_err mn_avgpool3d_forward(const mn_avgpool3d *l, const mn_shape *in, const float *x, float *y);
mn_err mn_avgpool3d_backward(const mn_avgpool3d *l, const mn_shape *in, const float *dy, float *dx);

/* ---- global average pooling: (N,C,D,H,W) -> (N,C) ---- */
mn_err mn_gap3d_forward(const mn_shape *in, const float *x, float *y);
mn_err mn_gap3d_backward(const mn_shape *in, const float *dy, float *dx);

/* ---- fully connected (torch.nn.Linear): y (n, out) = x (n, in) w^T + b ---- */
typedef struct mn_linear {
    int in, out;
    float *w, *b;   /* (out, in), (out) or NULL */
    float *dw, *db; /* or NULL */
} mn_linear;
mn_err mn_linear_forward(const mn_linear *l, int n, const float *x, float *y);
mn_err mn_linear_backward(const mn_linear *l, int n, const float *x, const float *dy, float *dx);

/* ---- trilinear up/down-sampling, F.interpolate(mode='trilinear', align_corners=False) ----
 * out has the same n, c as in and any positive d, h, w. */
mn_err mn_upsample3d_forward(const mn_shape *in, const float *x, const mn_shape *out, float *y);
mn_err mn_upsample3d_backward(const mn_shape *in, const mn_shape *out, const float *dy, float *dx);

/* ---- nearest resizing of a label volume, F.interpolate(mode='nearest') index rule src = floor(dst * in/out) ----
 * labels are (n, d, h, w) int32 (in->c and out->c ignored). */
mn_err mn_labels_resize_nearest(const mn_shape *in, const int32_t *x, const mn_shape *out, int32_t *y);

/* ---- element-wise helpers used by residual blocks ---- */
void mn_add_inplace(size_t n, float *y, const float *x); /* y += x */
void mn_zero(size_t n, float *y);                        /* y = 0 */

#endif
