/* loss.h: voxel-wise losses for segmentation, fused with their gradients.
 *
 * logits are (N, C, D, H, W); labels are (N, D, H, W) int32 class indices in [0, C) or `ignore_label`.  Each loss
 * returns its value (summed in double) and, when dlogits != NULL, ACCUMULATES scale * dLoss/dlogits into it (scale
 * lets a caller weight heads or average over micro-batches without another pass).  A label outside [0, C) that is
 * not ignore_label is an error (MN_ERR_ARG naming the value and the voxel), as is a non-finite logit
 * (MN_ERR_NUMERIC).
 */
#ifndef MEDNET_LOSS_H
#define MEDNET_LOSS_H

#include <stdint.h>
#include "mednet/error.h"
#include "mednet/tensor.h"

/* Largest class count the Dice functions accept (their per-class sums live on the stack, nothing is allocated). */
#define MN_LOSS_MAX_CLASSES 1024

/* Softmax cross-entropy, as F.cross_entropy(logits, labels, weight=class_weights, ignore_index=ignore_label,
 * reduction='mean'): sum over non-ignored voxels of w[y] * -log softmax(x)[y], divided by the sum of w[y].
 * class_weights: (C) or NULL (all 1).  If every voxel is ignored the loss is 0 with zero gradient.
 * *nvalid (may be NULL) receives the number of non-ignored voxels. */
mn_err mn_ce_loss(const mn_shape *in, const float *logits, const int32_t *labels, int ignore_label,
                  const float *class_weights, float scale, double *loss, float *dlogits, long *nvalid);

/* Soft Dice loss over softmax probabilities p and one-hot targets g, per class c over the whole batch:
 *   dice_c = (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth),   loss = 1 - mean_c dice_c
 * over classes c >= first_class (1 skips background).  Ignored voxels contribute to no sum. */
mn_err mn_dice_loss(const mn_shape *in, const float *logits, const int32_t *labels, int ignore_label, int first_class,
                    float smooth, float scale, double *loss, float *dlogits);

/* Hard Dice of argmax(logits) against labels, per class: dice[c] for c in [0, C) (NaN where the class is absent
 * from both); ignored voxels skipped.  For evaluation. */
mn_err mn_dice_hard(const mn_shape *in, const float *logits, const int32_t *labels, int ignore_label, double *dice);

#endif
