/* model_impl.h: private structure of mn_model, shared by model.c (layout, init, memory plan), model_fwd.c (forward,
 * loss, backward) and model_io.c (safetensors).
 *
 * The plan is built by one function run twice (model.c: plan()): pass 0 counts every tensor, activation and scratch
 * buffer; the buffers are then allocated once; pass 1 runs the same code again and points every layer and
 * activation into them.  The two passes cannot disagree because they are the same code.
 */
#ifndef MN_MODEL_IMPL_H
#define MN_MODEL_IMPL_H

#include <stdint.h>
#include "mednet/conv3d.h"
#include "mednet/layers.h"
#include "mednet/model.h"

/* A BN layer with its saved statistics (2*c floats, in the activation arena). */
typedef struct mn_bnl {
    mn_bn3d l;
    float *save;
} mn_bnl;

enum { SC_NONE = 0, SC_A, SC_B };

/* One residual block (basic or bottleneck).  Activations are for the whole local batch N. */
typedef struct mn_block {
    int bottleneck, shortcut;       /* shortcut: SC_* */
    mn_conv3d c1, c2, c3, dsc;      /* c3 only for bottleneck, dsc only for SC_B */
    mn_bnl b1, b2, b3, dsb;
    mn_avgpool3d pool;              /* SC_A subsampling */
    mn_shape in, s1, s2, out;       /* input, after c1, after c2, output (= after c3 for bottleneck) */
    const float *x;                 /* input: the previous block's output */
    float *c1o, *c2o, *c3o, *dso, *y; /* conv outputs, shortcut conv output, block output; the post-ReLU
                                       * activations inside the block live in the scratch r (recomputed in backward) */
    size_t p_off, p_len;            /* parameter range */
    int ry;                         /* 1: y is the scratch yr, recomputed in backward (mn_model_block_recompute) */
} mn_block;

/* One held head. */
typedef struct mn_head {
    int id, classes;
    size_t p_off, p_len, b_off, b_len; /* ranges in params and BN buffers */
    long bn_batches;                   /* num_batches_tracked of its BN layers */
    /* conv_seg */
    mn_convt3d up;
    mn_bnl hb1, hb2;
    mn_conv3d hc2, hc3;
    /* branch */
    mn_conv3d br;
    /* classification */
    mn_linear fc;
} mn_head;

/* A head batch of the last forward and its loss state. */
typedef struct mn_hb_state {
    mn_head_batch hb;
    int have_loss;
} mn_hb_state;

struct mn_model {
    mn_model_config cfg;
    mn_head_spec *specs;  /* cfg.heads points here */
    int expansion, feat_c;
    int shortcut;         /* resolved: SC_A or SC_B */

    /* flat buffers */
    float *params, *grads, *bufs;
    size_t nparams, nbufs;
    size_t enc_p_len, enc_b_len;
    long enc_bn_batches;

    /* tensor table */
    mn_tensor_info *tensors;
    int ntensors;
    unsigned char *tinit; /* per tensor: INIT_* (model.c) */
    float *tbound;        /* per tensor: std (Kaiming) or bound (uniform) */

    /* encoder */
    mn_conv3d conv1;
    mn_bnl bn1;
    mn_maxpool3d pool;
    mn_shape in_shape, stem_shape, pool_shape, feat_shape;
    float *stem_c, *pooled; /* the stem's batch norm writes into t1; its ReLU runs on the pooled output */
    int32_t *argmax;
    size_t stem_p_len;
    int nblocks;
    mn_block *blocks;

    /* heads (shared activations, sized for N samples and the largest class count) */
    int nheads, max_classes;
    mn_head *heads;
    mn_shape head_q_shape;    /* spatial shape of conv_seg's 1/4-size output (n = N, c = 32) */
    float *h0, *h3;           /* conv_seg's batch-norm inputs (N, 32, q); the ReLU outputs live in r */
    float *logits, *dlogits;  /* (N, max_classes, logit voxels) */
    float *up, *dup;          /* conv_seg with loss_full_size: (N, max_classes, D, H, W) */
    float *hz, *dhz;          /* branch: 1x1x1 conv output at 1/8 (N, max_classes, feat voxels) */
    float *hg, *dhg;          /* classification: pooled features (N, feat_c) */
    int32_t *labels_ds;       /* labels resized to the logits (N, q voxels) */
    size_t logit_vox;         /* voxels per channel of the logits held in `logits` */

    /* scratch, in this order: g0/g1 carry block input/output gradients (max_io floats each), t1 the temporaries
     * inside a block (max_int), t2 the gradients of the tensors inside a block (max_relu), r the post-ReLU tensor
     * inside a block that the next convolution reads, in forward and again, recomputed, in backward (max_relu), yr
     * the output of a block with ry set (max_yr).
     * The stem's batch-norm output and gradient (max_stem) start at t1 and may run on into t2 and r. */
    float *g0, *g1, *t1, *t2, *r, *yr;
    size_t max_io, max_int, max_stem, max_relu, max_yr;
    float *ws;
    size_t ws_floats;

    /* memory accounting (floats) */
    size_t act_floats, scratch_floats;
    void *act_arena, *scratch_arena;

    /* state */
    int training;
    int enc_frozen; /* mn_model_set_encoder_frozen: encoder BN in eval mode, backward stops at the encoder output */
    const float *x;
    mn_hb_state hbs[MN_MODEL_MAX_HEADS];
    int nhb;
    int forwarded;
    int consumed; /* 1 after a backward: saved activations were overwritten */
    mn_grad_ready_fn grad_ready;
    mn_progress_fn progress;
    void *hook_ctx;
    mn_bn_sync_fn bn_sync; /* synchronised batch norm of the encoder (NULL: local statistics) */
    void *bn_sync_ctx;
    double bn_sums[MN_MODEL_BN_SYNC_MAX];
};

/* One block's forward (b->y from b->x) and backward (dy: gradient of b->y, masked in place; dx: overwritten with
 * the gradient of b->x; parameter gradients accumulated), in the model's training mode.  Internal; exposed for the
 * block-level gradient tests. */
mn_err mn_model_block_forward(mn_model *m, mn_block *b);
mn_err mn_model_block_backward(mn_model *m, mn_block *b, float *dy, float *dx);
/* b->y again, bit for bit, from the tensors its forward stored (for a block with ry set; uses t1). */
mn_err mn_model_block_recompute(mn_model *m, mn_block *b);

#endif
