/* trainer.h: one data-parallel training step over a part table, the step that `mednet pretrain` and
 * `mednet finetune` run (and the equivalence tests drive directly).
 *
 * The trainer owns the model (encoder + the heads of this rank's datasets), the optimiser and the part table
 * (mednet/parts.h).  A step:
 *
 *   for each of micro_batches micro-batches: ask the batch source for `batch` samples (inputs, labels, the corpus
 *     dataset of each sample, its importance weight), forward the encoder over all of them and each held head over
 *     its dataset's contiguous sub-batch, per-sample losses with the logit gradient of sample i scaled by its
 *     weight w_i (mn_model_loss_samples), backward (gradients accumulate);
 *   the encoder's buckets are all-reduced during the backward pass of the last micro-batch; heads after it
 *     (mn_parts_reduce): the encoder gradient is then the gradient of L = sum_i w_i l_i / sum_i w_i over every
 *     sample of every rank and micro-batch, and head d's the same over the samples of dataset d;
 *   non-finite losses or gradients anywhere: every rank skips the update (BN buffers restored) or stops, per config;
 *   the optimiser updates the encoder and each head that saw a sample somewhere (lr * head_lr_mult for heads);
 *     while step < freeze_steps the encoder is frozen: batch norm on running statistics, no backward through it
 *     (its buckets reduce zeros), no update, its BN buffers restored bit for bit after the averaging;
 *   batch-norm running statistics averaged over holders, weighted by samples.
 *
 * The loss of a sample does not depend on its batch, rank or micro-batch, so P ranks, m micro-batches and one large
 * batch give the same gradient (with SyncBN, or batch norm in a layout where each micro-batch sees the same
 * samples: batch statistics are the one thing a grouping changes).
 */
#ifndef MEDNET_TRAINER_H
#define MEDNET_TRAINER_H

#include <mpi.h>
#include <stdint.h>

#include "mednet/dist.h"
#include "mednet/error.h"
#include "mednet/model.h"
#include "mednet/optim.h"
#include "mednet/parts.h"

/* One micro-batch, filled by the batch source: n samples of the planned crop size. */
typedef struct mn_batch {
    int n;
    float *x;          /* (n, 1, D, H, W) */
    int32_t *labels;   /* (n, D, H, W): class indices, or the model's ignore label; a classification crop holds its
                        * class (or the ignore label) in every voxel */
    int *dataset;      /* (n) corpus dataset index of each sample, non-decreasing */
    float *weight;     /* (n) importance weight of each sample (> 0) */
} mn_batch;

/* Fill b->x, labels, dataset and weight for micro-batch `index` (= step * micro_batches + micro-batch). */
typedef mn_err (*mn_batch_fn)(void *ctx, int64_t index, mn_batch *b);

/* A dataset the run trains: corpus index, name, class count, and which world ranks hold it ([size] flags). */
typedef struct mn_trainer_dataset {
    int corpus_index;
    const char *name;
    int classes;
    const int *holders;
} mn_trainer_dataset;

typedef struct mn_trainer_config {
    mn_model_config model;   /* depth, head kind, loss, seed; `input` gives (batch, crop); heads come from the table */
    mn_optim_config optim;
    double head_lr_mult;     /* heads learn at lr * head_lr_mult */
    int micro_batches;       /* >= 1 */
    int sync_bn;             /* 1: encoder batch norm with global-batch statistics */
    int nan_abort;           /* 1: stop on non-finite numbers; 0: skip the update */
    double bucket_mb;        /* encoder bucket size, MiB */
    long freeze_steps;       /* steps < freeze_steps train the heads only (mn_model_set_encoder_frozen: no encoder
                              * gradient, update or BN statistics change); 0: never, LONG_MAX: always */
} mn_trainer_config;

/* What one step saw, per row of the part table.  Times in seconds on this rank:
 *   t_data     the batch source;
 *   t_compute  forward + backward of every micro-batch (includes t_busy: the reducer's hooks run inside backward);
 *   t_comm     the gradient path after backward (waiting for the encoder buckets, head reductions, the agreement on
 *              numerical trouble) and the batch-norm averaging: communication the step waits for;
 *   t_update   the optimiser updates (local arithmetic, between the two);
 *   t_busy, t_wait, t_inflight, hidden   the encoder reducer's figures (mn_reducer_stats: time inside its hooks,
 *              blocked in finish, with a bucket outstanding, and the share of that hidden behind backward).
 * Exposed communication is t_comm + t_busy; communication hidden behind backward is t_inflight - t_wait - t_busy. */
typedef struct mn_step_stats {
    double t_data, t_compute, t_comm, t_update, hidden;
    double t_busy, t_wait, t_inflight;
    double *loss;   /* [nrows]: sum over this rank's samples of w_i * l_i (row 0: all samples) */
    double *weight; /* [nrows]: sum of w_i over this rank's samples */
    int skipped;
} mn_step_stats;

typedef struct mn_trainer mn_trainer;

/* Build the part table, the model with the heads this rank holds, the optimiser and the reducer, and broadcast
 * the initial parameters (the encoder from world rank 0, each head from its root).  `trace` may be NULL (not
 * owned).  Collective on comm.  Errors in model creation are local work agreed over comm; later ones are not. */
mn_err mn_trainer_create(MPI_Comm comm, const mn_trainer_config *cfg, int ndatasets, const mn_trainer_dataset *ds,
                         int ncorpus, mn_trace *trace, mn_trainer **out);

void mn_trainer_destroy(mn_trainer **t);

mn_model *mn_trainer_model(mn_trainer *t);
mn_optim *mn_trainer_optim(mn_trainer *t);
mn_parts *mn_trainer_parts(mn_trainer *t);

/* Run training step `step` (0-based) with batches from fn(ctx, ...).  stats->loss/weight must have nrows entries.
 * Collective on the world and the dataset communicators.  A non-finite number with nan_abort: an agreed
 * MN_ERR_NUMERIC on every rank.  Other errors are not agreed: end the job with mn_mpi_exit_error. */
mn_err mn_trainer_step(mn_trainer *t, long step, mn_batch_fn fn, void *ctx, mn_step_stats *stats);

#endif
