/* model.h: the MedicalNet 3-D ResNet family (depths 10, 18, 34, 50, 101, 152, 200), its heads, and the model object
 * that owns every buffer.
 *
 * Topology (MedicalNet's resnet.py): stem conv 7^3/2 pad 3 (1 -> 64, no bias), BN, ReLU, max pool 3/2 pad 1; four
 * stages of 64, 128, 256, 512 planes, strides 1, 2, 1, 1, dilations 1, 1, 2, 4 (padding = dilation); basic blocks
 * for 10/18/34, bottleneck blocks (expansion 4) for 50/101/152/200; a shortcut where stride or width changes: type B
 * (1x1x1 conv + BN) or type A (1x1x1 average pool with the stride, zero channels padded on; the gradient flows through
 * the identity part, unlike MedicalNet's code which detaches it).  No encoder convolution has a bias.  Output stride 8.
 *
 * Heads (one per dataset held; a rank holds only the heads of its datasets):
 *   MN_HEAD_SEG     MedicalNet's conv_seg: convT 2/2 (+bias) -> 32, BN, ReLU, conv 3^3 32->32, BN, ReLU, conv 1^3 ->
 *                   classes.  Logits at 1/4 of the input; the loss compares them with nearest-downsampled labels, or
 *                   (loss_full_size) up-samples them trilinearly to the input size first.
 *   MN_HEAD_BRANCH  Med3D's light branch: conv 1^3 -> classes (no bias), trilinear up-sampling to the input size.
 *   MN_HEAD_CLS     classification: global average pool, fully connected (+bias).
 *
 * Memory layout.  All trained parameters live in ONE flat float buffer, in PyTorch state-dict order; their gradients
 * in a twin buffer of the same layout; BN running statistics (running_mean, running_var) in a third flat buffer.  The
 * encoder is one contiguous range of each buffer, followed by one range per head.  Activations are planned once, at
 * create time, for the fixed input shape (N, 1, D, H, W): every saved activation, one shared convolution workspace
 * sized to the largest layer, and gradient scratch.  Held heads run sequentially on disjoint sub-batches, so they
 * share one set of head activation buffers sized for the whole local batch N (and the largest class count): head h
 * writes only the sample slice [offset, offset+count) of it.
 *
 * Tensor names are MedicalNet's state-dict names (conv1.weight, bn1.running_mean, layer2.0.downsample.0.weight,
 * conv_seg.0.weight, ...).  With one head and prefix_heads == 0 the head tensors carry plain names (conv_seg.*,
 * branch.*, fc.*), which MedicalNet's own classes load; otherwise they are prefixed `heads.<id>.`.
 *
 * Nothing here knows about MPI or files except the safetensors import/export at the end (src/model/model_io.c).
 *
 * A training step (samples of the local batch grouped by dataset, one head batch per held head):
 *
 *   mn_model_set_hooks(m, on_grad_ready, on_progress, comm_ctx);   once: start bucket all-reduces as ranges finish
 *   mn_model_forward(m, x, hb, nhb);                               encoder over N samples, head h over its slice
 *   for i: mn_model_loss_samples(m, i, labels + hb[i].offset * D*H*W, weights + hb[i].offset, losses);
 *   mn_model_zero_grad(m);  mn_model_backward(m);                  heads, then blocks last to first (hooks fire)
 *   ... reduce head ranges (mn_model_param_range(m, h)) and BN buffers (mn_model_bn_range), optimizer step on the
 *   flat buffers.
 */
#ifndef MEDNET_MODEL_H
#define MEDNET_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "mednet/error.h"
#include "mednet/tensor.h"

typedef enum mn_shortcut {
    MN_SHORTCUT_DEFAULT = 0, /* MedicalNet's choice: A for 18 and 34, B for the others */
    MN_SHORTCUT_A,
    MN_SHORTCUT_B
} mn_shortcut;

typedef enum mn_head_kind {
    MN_HEAD_SEG = 0, /* conv_seg */
    MN_HEAD_BRANCH,  /* Med3D branch */
    MN_HEAD_CLS      /* GAP + fc */
} mn_head_kind;

/* One head to hold: `id` is the dataset index (names use it), `classes` its number of output classes (>= 1). */
typedef struct mn_head_spec {
    int id;
    int classes;
} mn_head_spec;

#define MN_MODEL_MAX_HEADS 256

/* Loss of every head: ce_weight * CE + dice_weight * soft Dice (loss.h).  Classification heads use CE only. */
typedef struct mn_loss_config {
    float ce_weight;      /* default 1 */
    float dice_weight;    /* default 0 */
    int ignore_label;     /* default -1 */
    int dice_first_class; /* 1: Dice over foreground classes only (default 1) */
    float dice_smooth;    /* default 1e-5 */
} mn_loss_config;

typedef struct mn_model_config {
    int depth;                 /* 10, 18, 34, 50, 101, 152 or 200 */
    mn_shortcut shortcut;      /* MN_SHORTCUT_DEFAULT picks MedicalNet's per-depth default */
    mn_head_kind head_kind;    /* one kind for every head */
    int nheads;                /* 0..MN_MODEL_MAX_HEADS; 0 = encoder only */
    const mn_head_spec *heads; /* nheads entries, distinct ids >= 0; copied by create */
    int prefix_heads;          /* 1: name head tensors heads.<id>.*, even with one head (forced when nheads > 1) */
    mn_shape input;            /* (N, 1, D, H, W); N == 0: parameters only (no activations, no forward) */
    int loss_full_size;        /* MN_HEAD_SEG: 0 = labels nearest-downsampled to the logits, 1 = logits up-sampled */
    mn_loss_config loss;
    uint64_t seed;             /* initialisation seed */
} mn_model_config;

/* A config with the defaults above (depth 10, default shortcut, conv_seg, no heads, no input, seed 1). */
mn_model_config mn_model_config_default(void);

/* Read a model configuration from [section] of a run config (mednet/config.h): depth (10, 18, 34, 50, 101, 152 or
 * 200: anything else is MN_ERR_CONFIG naming the valid depths), shortcut (default | A | B), head (seg | branch | cls),
 * loss_full_size, ce_weight, dice_weight, seed.  Starts from mn_model_config_default(); heads and input are left
 * for the caller.  Each key is marked used. */
struct mn_config;
mn_err mn_model_config_read(struct mn_config *cfg, const char *section, mn_model_config *out);

/* The default shortcut of a depth (A for 18/34, B otherwise). */
mn_shortcut mn_model_default_shortcut(int depth);

/* mn_range (offset, count in floats) is defined in mednet/tensor.h. */

/* One named tensor of the state dict. */
typedef enum mn_tensor_kind {
    MN_TENSOR_PARAM = 0, /* in params/grads */
    MN_TENSOR_BUFFER     /* in the BN buffer (running_mean / running_var) */
} mn_tensor_kind;

typedef struct mn_tensor_info {
    char name[96];       /* PyTorch state-dict name */
    mn_tensor_kind kind;
    int part;            /* -1: encoder, h >= 0: head index h (position in config heads) */
    size_t offset;       /* in floats, into params (and grads) or into the BN buffer */
    size_t numel;
    int ndim;
    int shape[5];
} mn_tensor_info;

/* The hooks of the backward pass (for bucketed non-blocking all-reduce).  grad_ready is called, in reverse layer
 * order, each time the gradient of a range of ENCODER parameters is final: every encoder parameter is covered
 * exactly once per backward; offsets are into the grad buffer.  progress (may be NULL) is called between layers so
 * communication can be progressed.  Both run on the calling thread. */
typedef void (*mn_grad_ready_fn)(void *ctx, size_t grad_offset, size_t count);
typedef void (*mn_progress_fn)(void *ctx);

/* A sub-batch of the local batch that goes through one head: samples [offset, offset+count) of the encoder output
 * (samples are grouped by dataset); `head` is the head index (position in config heads). */
typedef struct mn_head_batch {
    int head, offset, count;
} mn_head_batch;

typedef struct mn_model mn_model;

/* ---- create / destroy ---- */

/* Build a model: lays out parameters, initialises them deterministically from cfg->seed (Kaiming-normal fan_out for
 * convolutions, BN weight 1 / bias 0, running mean 0 / var 1; PyTorch's default uniform init for the transposed
 * conv and fc; each tensor is seeded from (seed, name) so it does not depend on which heads are held), zeroes grads
 * and, if cfg->input.n > 0, plans and allocates every activation for that input shape.  Errors: MN_ERR_ARG for a bad
 * depth/head list/input shape (named), MN_ERR_MEM.  *out is NULL on error.  Not collective. */
mn_err mn_model_create(const mn_model_config *cfg, mn_model **out);

/* Free everything; accepts NULL and sets *m to NULL. */
void mn_model_destroy(mn_model **m);

/* ---- access ---- */

/* All accessors are Not collective and never fail on a valid model.  Pointers stay valid until destroy. */
const mn_model_config *mn_model_config_of(const mn_model *m); /* the config (heads copied; shortcut resolved) */
float *mn_model_params(mn_model *m);      /* flat parameters (num_params floats), PyTorch state-dict order */
float *mn_model_grads(mn_model *m);       /* their gradients, same layout; backward accumulates into it */
float *mn_model_bn_buffers(mn_model *m);  /* BN running_mean / running_var of every BN (num_bn_buffers floats) */
size_t mn_model_num_params(const mn_model *m);     /* length of params and of grads */
size_t mn_model_num_bn_buffers(const mn_model *m); /* length of the BN buffer */

/* Range of the encoder (part = -1) or of head h (part = h) in params/grads, and in the BN buffer.  The encoder
 * range starts at 0; head ranges follow in config order and tile the rest.  An out-of-range part gives {0, 0}. */
mn_range mn_model_param_range(const mn_model *m, int part);
mn_range mn_model_bn_range(const mn_model *m, int part);

/* The tensor table, in state-dict order (encoder first, then heads); mn_model_tensor returns NULL out of range. */
int mn_model_num_tensors(const mn_model *m);
const mn_tensor_info *mn_model_tensor(const mn_model *m, int i);
/* Index of a tensor by name (after stripping a leading "module."), or -1. */
int mn_model_find_tensor(const mn_model *m, const char *name);

/* Trainable encoder parameter count of a depth/shortcut, without building a model. */
size_t mn_model_encoder_param_count(int depth, mn_shortcut shortcut);

/* Channels of the encoder output (512 * expansion). */
int mn_model_feature_channels(const mn_model *m);
/* Shape of the logits of head h for `count` samples ((count, classes, ...) or (count, classes, 1, 1, 1) for cls). */
mn_shape mn_model_logits_shape(const mn_model *m, int head, int count);

/* Bytes allocated: params+grads+bn, activations (encoder and heads), conv workspace, gradient scratch. */
typedef struct mn_model_memory {
    size_t param_bytes, activation_bytes, workspace_bytes, scratch_bytes, total_bytes;
} mn_model_memory;
mn_model_memory mn_model_memory_plan(const mn_model *m);

/* The convolution plan for the planned input: one line per group of convolutions with the same geometry, input
 * shape and per-pass algorithm, in order of first use (encoder, then heads), e.g. "layer1.0.conv1 +3 like it:
 * 64->64 k3 s1 d1 @2x16^3: winograd/winograd/winograd" (forward / backward-data / backward-weights: direct, dense,
 * taps or winograd), each line ending in a newline.  Writes at most len bytes (truncated, NUL-terminated); returns the
 * length the whole text needs, or 0 without a planned input. */
size_t mn_model_conv_plan(const mn_model *m, char *buf, size_t len);

/* Dense convolution FLOPs of one forward pass of the encoder + the given head batches (backward costs 2x). */
double mn_model_forward_flops(const mn_model *m, const mn_head_batch *hb, int nhb);

/* ---- parameters ---- */

mn_err mn_model_zero_grad(mn_model *m);                           /* grads = 0 (whole buffer) */
/* params = p (copied); MN_ERR_SHAPE unless n == num_params.  BN buffers are untouched (write them through
 * mn_model_bn_buffers). */
mn_err mn_model_set_params(mn_model *m, const float *p, size_t n);
/* Re-run the seeded initialisation of params and BN buffers (as create). */
mn_err mn_model_init(mn_model *m, uint64_t seed);

/* ---- training ---- */

/* BN num_batches_tracked of the encoder (part -1) or of head h: the number of training-mode forwards it saw.  Only
 * exported (PyTorch's state dict has it); a checkpoint that wants bit-identical exports after resume saves it. */
long mn_model_bn_batches(const mn_model *m, int part);
void mn_model_set_bn_batches(mn_model *m, int part, long batches);

void mn_model_set_training(mn_model *m, int training); /* 1: BN uses batch statistics (default), 0: running stats */
/* Freeze the encoder (fine-tuning recipes): 1: its batch norm uses the running statistics and does not update them
 * (as in eval mode) whatever the training mode, and backward stops at the encoder output: no encoder gradient is
 * computed (the grad buffer's encoder range is left as it is), the grad_ready hook still fires once per encoder
 * range.  Heads train as usual.  0 (default): the encoder trains. */
void mn_model_set_encoder_frozen(mn_model *m, int frozen);
/* Install the backward hooks (either may be NULL; ctx is passed back unchanged). */
void mn_model_set_hooks(mn_model *m, mn_grad_ready_fn grad_ready, mn_progress_fn progress, void *ctx);

/* Synchronised batch norm (SyncBN) of the ENCODER.  When set, every encoder batch-norm layer in training mode calls
 * sync(ctx, sums, n, count) twice per forward/backward pair: with the local per-channel sums of its split form
 * (forward: sum x, sum x^2; backward: sum dy, sum dy*xhat; n = 2*channels doubles) and the local voxel count per
 * channel, which the callback must replace in place by their sums over every replica (an all-reduce over the world
 * communicator): the layer then normalises with the statistics of the global batch.  Every replica must call
 * forward/backward together.  Head batch norm keeps the statistics of the local sub-batch (a rank may hold no sample
 * of a dataset in a micro-batch, so a head-level collective could not be matched).  fn = NULL: local statistics. */
#define MN_MODEL_BN_SYNC_MAX 4096
typedef mn_err (*mn_bn_sync_fn)(void *ctx, double *sums, int n, double *count);
void mn_model_set_bn_sync(mn_model *m, mn_bn_sync_fn fn, void *ctx);

/* Forward: the encoder over the whole local batch x (N, 1, D, H, W) of the planned shape, then head hb[i].head over
 * its sub-batch.  Sub-batches must be disjoint and within [0, N), each head at most once.  The model keeps x (the
 * caller must not change it before backward) and the head batches.  Training mode updates BN running stats. */
mn_err mn_model_forward(mn_model *m, const float *x, const mn_head_batch *hb, int nhb);

/* Logits of the i-th head batch of the last forward (shape mn_model_logits_shape(head, count)); for MN_HEAD_SEG
 * with loss_full_size these are the 1/4-size logits (the up-sampled ones are internal). */
const float *mn_model_logits(const mn_model *m, int i, mn_shape *shape);

/* Logits at the resolution the loss compares them: the up-sampled full-size logits for MN_HEAD_SEG with
 * loss_full_size, otherwise the same as mn_model_logits.  For evaluation (hard Dice) against full-size labels. */
const float *mn_model_loss_logits(const mn_model *m, int i, mn_shape *shape);

/* Largest local batch a head batch can have for mn_model_loss (its per-sample scratch is on the stack). */
#define MN_MODEL_MAX_BATCH 4096

/* Per-sample loss of the i-th head batch of the last forward against `labels`: segmentation (count, D, H, W) int32
 * at the INPUT size (the model downsamples them as configured); classification (count) int32.  The loss of sample j
 * is l_j = ce_weight * CE_j + dice_weight * Dice_j, with CE_j the cross-entropy averaged over the sample's
 * non-ignored voxels (0 if all are ignored) and Dice_j the soft Dice loss of the sample alone, so a sample's loss
 * never depends on the samples that share its batch, rank or micro-batch.  Writes loss[j] for j < count and
 * OVERWRITES the head's logit gradient with sum_j weight[j] * dl_j/dlogits.  Non-finite logits are numerical state,
 * not an error: every loss[j] is NaN and the logit gradient zero (the caller agrees on what to do).
 * Errors: labels out of range (named). */
mn_err mn_model_loss_samples(mn_model *m, int i, const int32_t *labels, const float *weight, double *loss);

/* The batch form: *loss = the mean of the per-sample losses of head batch i, and the logit gradient is
 * scale * d(loss)/dlogits (every sample weighted scale / count).  Non-finite logits: MN_ERR_NUMERIC. */
mn_err mn_model_loss(mn_model *m, int i, const int32_t *labels, float scale, double *loss);

/* Backward through every head batch of the last forward (using the logit gradients of mn_model_loss; a head batch
 * whose loss was not computed contributes nothing) and the encoder.  ACCUMULATES into grads (call zero_grad once per
 * step).  Calls the hooks (above).  Needs a preceding forward, and consumes it (some saved activations are reused
 * as gradient scratch): a second backward, or mn_model_loss, needs a new forward.  Logits stay readable. */
mn_err mn_model_backward(mn_model *m);

/* ---- safetensors (src/model/model_io.c) ---- */

/* Write every tensor (params, BN buffers, and num_batches_tracked as I64) with its state-dict name.  part = -2:
 * all; -1: encoder only; h: encoder + head h.  Not collective: call on one rank. */
mn_err mn_model_save_safetensors(const mn_model *m, const char *path, int part);

/* The same with nextra (<= 32) more __metadata__ entries after the standard ones (format, producer, depth,
 * shortcut_type, head); keys and values free of quotes, backslashes and control characters. */
mn_err mn_model_save_safetensors_meta(const mn_model *m, const char *path, int part, const char *const *keys,
                                      const char *const *values, int nextra);

/* Import report: counts, and the names of the first problems in a message buffer. */
typedef struct mn_import_report {
    int loaded, missing, unexpected, mis_shaped;
    int skipped; /* encoder-only import: file tensors that are not the encoder's (heads, other names) */
    char detail[2048]; /* "missing: a, b; unexpected: c; mis-shaped: d (file 3x3 vs model 2x2)" (truncated) */
} mn_import_report;

/* Load tensors by name from a safetensors file (names may carry the "module." prefix; num_batches_tracked is
 * accepted and ignored).  strict = 1: any missing, unexpected or mis-shaped tensor is an error (MN_ERR_FORMAT,
 * naming them) and the model is left unchanged; strict = 0: matching tensors are loaded, the others reported in
 * *rep (may be NULL) and by a warning.  A wrong dtype is always an error.  A corrupt or truncated file is rejected
 * with the byte offset (safetensors.h). */
mn_err mn_model_load_safetensors(mn_model *m, const char *path, int strict, mn_import_report *rep);

/* Load the encoder only (fine-tuning or inference from pre-trained weights, e.g. MedicalNet's converted release):
 * every encoder tensor must be in the file with the model's shape (else MN_ERR_FORMAT naming the missing and
 * mis-shaped ones, and the model is unchanged); every other file tensor (a conv_seg of another class count, an fc
 * layer, unknown names) is skipped and counted in rep->skipped.  The heads are not touched. */
mn_err mn_model_load_safetensors_encoder(mn_model *m, const char *path, mn_import_report *rep);

#endif
