/* infer.h: applying a trained model to NIfTI volumes (`mednet infer`).
 *
 * A volume goes through what prep did to the training volumes (the checkpoint's preprocessing record,
 * mednet/corpus.h: resampling onto the canonical grid at the dataset's spacing, the same intensity normalisation),
 * then through the model window by window (sliding window with overlap, blended), and the class probabilities come
 * back onto the input's own grid through the affines (trilinear), where their argmax is the label map.  The output
 * NIfTI files carry the input's header (dimensions, sform, qform, pixdim): they overlay the input exactly.
 *
 * The sliding window.  A volume of D x H x W voxels (the canonical grid) is covered by windows of the model's input
 * size w (default: the training crop).  Along an axis of length L > w the windows start at
 * round(i (L - w) / (n - 1)), i = 0 .. n-1, with n = ceil((L - w) / (w (1 - overlap))) + 1, so neighbours overlap by
 * at least `overlap` of a window and the last window ends at the volume's end (nnU-Net's rule); along an axis with
 * L <= w one window covers it and the volume is padded with 0 (the normalised background; training crops are padded
 * the same way).  Each window's class probabilities (softmax of the logits, up-sampled trilinearly to the window when
 * the head predicts at 1/4 size) are accumulated with a weight map and divided by the accumulated weight:
 *   gaussian  exp(-d^2 / (2 sigma^2)) per axis, sigma = w / 8, centred (nnU-Net), scaled to a maximum of 1;
 *   linear    1 - |2 (x + 0.5) / w - 1| per axis (a tent, highest at the centre);
 *   constant  1 (a plain average).
 * With one window per axis, the result is the single window's probabilities whatever the blending.  Flip
 * test-time augmentation averages the probabilities over the 8 combinations of flips of the three axes.
 */
#ifndef MEDNET_INFER_H
#define MEDNET_INFER_H

#include <mpi.h>
#include <stdint.h>
#include "mednet/error.h"

typedef enum mn_blend { MN_BLEND_GAUSSIAN = 0, MN_BLEND_LINEAR, MN_BLEND_CONSTANT } mn_blend;

/* The predictor behind the sliding window: fill prob (n, classes, w0, w1, w2) with class probabilities for the n
 * windows x (n, 1, w0, w1, w2).  n <= the batch of the window config. */
typedef mn_err (*mn_window_fn)(void *ctx, int n, const float *x, float *prob);

typedef struct mn_window_config {
    int window[3];      /* D, H, W of a window */
    double overlap;     /* share of a window that neighbours overlap at least, in [0, 1) */
    mn_blend blend;
    int batch;          /* windows per predictor call, >= 1 */
    int classes;
} mn_window_config;

/* Window starts along an axis of length len (rule above); returns their count and writes them to starts (may be
 * NULL; room for the count). */
int mn_window_starts(int64_t len, int window, double overlap, int64_t *starts);

/* The blending weights of a window, w[window voxels] (D, H, W order), all > 0. */
void mn_window_weights(const int window[3], mn_blend blend, float *w);

/* Sliding-window prediction over vol (dims D, H, W) into prob (classes, D, H, W), overwritten.  *nwindows (may be
 * NULL) gets the window count.  Errors from fn are returned; MN_ERR_ARG for a bad config; MN_ERR_MEM.  Not
 * collective. */
mn_err mn_sliding_window(const mn_window_config *c, const float *vol, const int64_t dims[3], mn_window_fn fn,
                         void *ctx, float *prob, int64_t *nwindows);

/* What `mednet infer` does (see the command's help). */
typedef struct mn_infer_options {
    const char *checkpoint;   /* a mednet training checkpoint (ckpt-<step>.h5) or a .safetensors file */
    const char *head;         /* dataset whose head to apply; NULL: the checkpoint's only one */
    const char *corpus;       /* for sources without a preprocessing record: the corpus they were trained on */
    const char *config;       /* safetensors only: a run config for what its metadata lacks ([model], [sampler] crop) */
    const char *out_dir;      /* outputs <out_dir>/<stem>_seg.nii.gz (and <stem>_prob.nii.gz) */
    const char *const *inputs;
    int ninputs;
    int window[3];            /* 0: the training crop */
    double overlap;           /* default 0.5 */
    mn_blend blend;
    int batch;                /* windows per forward pass, default 1 */
    int tta;                  /* 1: average over the 8 flips */
    int probs;                /* 1: also write the class probabilities (4-D float32, one volume per class) */
    int force;                /* replace existing outputs */
    int threads;              /* 0: SLURM_CPUS_PER_TASK / OMP_NUM_THREADS / 1 */
} mn_infer_options;

/* Run inference on comm: rank 0 reads the model (mn_model_file_load: a checkpoint, or a safetensors file with the
 * metadata `mednet export` writes or the options that replace it) and broadcasts it (mn_ckpt_model_bcast); the inputs are
 * dealt round-robin to the ranks; each rank checks its inputs' headers and outputs first (agreed: a missing file
 * or an existing output without force stops every rank before any work), then processes its volumes one by one,
 * writing each output atomically (temporary file, check, rename: never a half-written file under its name).  A
 * volume that fails (NaN voxels, a singular affine) stops its rank's list; the outcome is agreed, so the job ends
 * with exit status 1 on every rank and one message naming the file, and no output file of the failed volume.
 * Collective on comm; errors carry MN_ERR_AGREED except a failing MPI call. */
mn_err mn_infer_run(MPI_Comm comm, const mn_infer_options *o);

#endif
