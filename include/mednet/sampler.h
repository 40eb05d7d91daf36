/* sampler.h: the per-rank sampler: random training crops from the volumes of a shard (mednet/corpus.h).
 *
 * Each call draws n crops of a configured size (D, H, W).  A share `fg_share` of them is centred on a foreground
 * voxel of the chosen volume: a foreground class present in the volume is drawn uniformly, then one of its voxels
 * (uniformly; counted in the volume's chunk order, mednet/reader.h)
 * (nnU-Net's oversampling of foreground, which matters for small structures); the rest are placed uniformly.
 * Volumes are chosen uniformly among the shard's volumes.
 * Augmentation: a random flip per enabled axis (probability 1/2), and intensity jitter x' = x*(1+a) + b with a, b
 * uniform in [-jitter_scale, jitter_scale] and [-jitter_shift, jitter_shift], one draw per crop.
 * A crop that reaches outside its volume (crops larger than the volume, or foreground near the border) is padded
 * with x = 0 and label MN_LABEL_IGNORE, which losses must skip.
 * Hold-out (holdout > 0; dataset filtering's proxy validation): voxels with z >= ceil((1 - holdout) * D) form the
 * held-out slab of a volume of depth D.  Training crops keep their images whole but carry MN_LABEL_IGNORE there, and
 * validation crops (holdout_side = 1) carry labels only there, so no validation label is ever trained on.  A crop of
 * a classification volume is labelled (with its class, every voxel) when it lies wholly below the slab (training)
 * or is centred in it (validation); otherwise it is ignored whole.
 *
 * Determinism: everything a call draws comes from a generator seeded with (seed, rank, step) only, so a step can
 * be replayed (resume from a checkpoint) and does not depend on previous calls.  The samples of one call are
 * ordered by dataset index (stable), so each per-dataset head sees one contiguous sub-batch.
 */
#ifndef MEDNET_SAMPLER_H
#define MEDNET_SAMPLER_H

#include <stdint.h>
#include "mednet/config.h"
#include "mednet/corpus.h"
#include "mednet/error.h"
#include "mednet/reader.h"

/* Label value of padded voxels: to be ignored by the losses. */
#define MN_LABEL_IGNORE (-1)

/* The sampling rule: which volume a training crop comes from, in expectation over the whole job.
 *   MN_MIXTURE_VOLUMES   every pre-training volume of the corpus equally likely (the default);
 *   MN_MIXTURE_DATASETS  every dataset equally likely, then its volumes equally likely.
 * A rank draws from its own shard only (uniformly over its volumes), so each sample carries an importance weight
 * w(v) = pi(v) / q(v), with pi the rule's probability of v and q(v) the probability that a draw of a uniformly
 * chosen rank is v (mn_sampler_weights).  The training loss is the w-weighted mean over samples, whose expectation
 * is the rule's mixture for every rank count: the objective does not change with P. */
typedef enum mn_mixture { MN_MIXTURE_VOLUMES = 0, MN_MIXTURE_DATASETS } mn_mixture;

typedef struct mn_sampler_config {
    int crop[3];           /* D, H, W of a crop, each > 0 */
    double fg_share;       /* 0..1: share of crops centred on foreground */
    int flip[3];           /* 1: random flips along D, H, W */
    double jitter_scale;   /* >= 0 */
    double jitter_shift;   /* >= 0 */
    uint64_t seed;
    mn_mixture mixture;    /* the sampling rule (above) */
    double holdout;        /* 0..0.9: the last `holdout` share of every volume along D is held out for validation */
    int holdout_side;      /* 0: training crops (labels in the held-out slab ignored); 1: validation crops (labels
                            * outside it ignored).  Set by the evaluator, not by the config. */
} mn_sampler_config;

typedef struct mn_sampler mn_sampler;

/* Read a sampler configuration from [section]: crop (1 or 3 integers, default 32), fg_share (0.33), flip (true:
 * all three axes), jitter_scale (0.1), jitter_shift (0.1), seed (0), mixture (volumes), holdout (0).  Each key is marked used.  MN_ERR_CONFIG on
 * bad values. */
mn_err mn_sampler_config_read(mn_config *cfg, const char *section, mn_sampler_config *out);

/* Create a sampler over the volumes of `shard` (borrowed: it must outlive the sampler) for rank `rank`.
 * A volume's foreground index is built the first time a crop is centred on its foreground.  MN_ERR_ARG for an empty shard or bad config.  Not collective. */
mn_err mn_sampler_create(const mn_shard *shard, const mn_sampler_config *cfg, int rank, mn_sampler **out);

/* Create a sampler over the volumes of a shard reader (borrowed: it must outlive the sampler; mednet/reader.h).  The
 * sampler reads through it, so the reader's thread rule applies to mn_sampler_next.  A sampler over
 * mn_reader_create_memory(shard) draws exactly what mn_sampler_create(shard) draws, and one over a file reader of
 * the same corpus and plan draws bitwise the same crops.  Not collective. */
mn_err mn_sampler_create_reader(mn_reader *rd, const mn_sampler_config *cfg, int rank, mn_sampler **out);

void mn_sampler_destroy(mn_sampler **s);

/* Draw the n crops of step `step` (>= 0):
 *   x        (n, 1, D, H, W) floats, overwritten
 *   labels   (n, D, H, W) int32 class indices or MN_LABEL_IGNORE, overwritten
 *   dataset  (n) corpus dataset index of each sample, non-decreasing (may be NULL)
 * Deterministic from (seed, rank, step).  Not collective. */
mn_err mn_sampler_next(mn_sampler *s, int64_t step, int n, float *x, int32_t *labels, int *dataset);

/* As mn_sampler_next, and weight[k] (n floats, may be NULL) receives the importance weight of sample k (the weight
 * of its volume, mn_sampler_set_weights; 1 by default).  Not collective. */
mn_err mn_sampler_next_weighted(mn_sampler *s, int64_t step, int n, float *x, int32_t *labels, int *dataset,
                                float *weight);

/* The importance weights of the volumes of `rank`'s shard under `mixture` (mednet/sampler.h, mn_mixture):
 * weight[k] for the k-th item of the rank's shard in plan order (the order of mn_shard_load's volumes).
 * Deterministic from (info, plan, mixture): every rank computes the same value for a volume.  Not collective. */
mn_err mn_sampler_weights(const mn_corpus_info *info, const mn_shard_plan *plan, int rank, mn_mixture mixture,
                          double *weight);

/* Set the per-volume weights (shard->num_volumes positive values, copied).  Not collective. */
mn_err mn_sampler_set_weights(mn_sampler *s, const double *weight);

#endif
