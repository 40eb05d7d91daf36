/* train_impl.h: the pieces of a training run that pretrain.c composes (private to src/train).
 *
 *   run_config.c  the [corpus] and [train] sections of a run configuration (the other sections are read by their
 *                 parts: [model] by the model, [optim] by the optimiser, [sampler] by the sampler), and the check
 *                 of a checkpoint's model against the configuration;
 *   setup.c       a run's set-up in failure-safe order: output folder and lock, checkpoints, corpus, shard,
 *                 sampler, trainer, resume;
 *   evaluate.c    the evaluator: mean foreground Dice (or classification accuracy) per dataset on fixed crops;
 *   checkpoint.c  checkpoints of a trainer over its part table: write, resume, encoder initialisation, and the
 *                 description of a checkpoint file used to validate a run before any heavy work;
 *   watchdog.c    the step-progress watchdog: ends the job when a rank stops arriving;
 *   pretrain.c    the loop and its logging.
 */
#ifndef MN_TRAIN_IMPL_H
#define MN_TRAIN_IMPL_H

#include <stdint.h>

#include <stdio.h>

#include "mednet/config.h"
#include "mednet/corpus.h"
#include "mednet/dist.h"
#include "mednet/error.h"
#include "mednet/lock.h"
#include "mednet/prefetch.h"
#include "mednet/reader.h"
#include "mednet/sampler.h"
#include "mednet/trainer.h"

/* The identity written into every checkpoint, besides the arrays. */
typedef struct mn_ckpt_meta {
    const char *config_text;   /* the run's whole configuration (mn_config_dump) */
    uint32_t corpus_checksum;
    const char *corpus_path;
    uint64_t sampler_seed;
    const char *prep_text;     /* the preprocessing record of the run's datasets (mednet/corpus.h) */
} mn_ckpt_meta;

/* What a checkpoint file holds, read from its attributes alone (cheap). */
typedef struct mn_ckpt_desc {
    int depth;                 /* model.depth of the config it was written with */
    int shortcut;              /* 0 default, 1 A, 2 B */
    int head_kind;             /* 0 seg, 1 branch, 2 cls */
    int64_t step;
    uint32_t corpus_checksum;
    int nranks;
} mn_ckpt_desc;

/* Write checkpoint `step` of t into dir, keeping the `keep` newest: every part's root sends the part's arrays,
 * with their names, to world rank 0, which writes the file.  The gather is collective work (errors not agreed);
 * the write is rank 0's local work, agreed over the world (a full disk is an agreed error on every rank, and the
 * previous checkpoint and `latest` are untouched).  Collective on the world. */
mn_err mn_train_ckpt_write(mn_trainer *t, const char *dir, long step, int keep, const mn_ckpt_meta *meta);

/* Resume t from checkpoint `path` (validated before with mn_train_ckpt_describe): rank 0 reads the encoder and
 * the root of each part its head, the reads are agreed over the world, then broadcast over each part's holders.
 * *step receives the completed step count.  Collective on the world. */
mn_err mn_train_ckpt_resume(mn_trainer *t, const char *path, long *step);

/* Initialise t's encoder (parameters and BN statistics) from `path` (fine-tuning): a mednet checkpoint, or a
 * safetensors file with MedicalNet's state-dict names (mn_train_is_safetensors; every encoder tensor required, other
 * tensors skipped).  Read on rank 0, agreed, broadcast.  Collective on the world. */
mn_err mn_train_ckpt_init_encoder(mn_trainer *t, const char *path);

/* 1 when `path` names a safetensors file (by its extension .safetensors), 0 for a mednet checkpoint. */
int mn_train_is_safetensors(const char *path);

/* Describe checkpoint `path` from its attributes.  Not collective.  Errors name the file: not a checkpoint (not
 * HDF5, or no mednet attributes), unreadable config. */
mn_err mn_train_ckpt_describe(const char *path, mn_ckpt_desc *d);

/* ---- run_config.c ---- */

/* The [corpus] and [train] sections, and the parts' sections read through their modules. */
typedef struct run_cfg {
    const char *corpus;
    long shard_seed;
    int role;                 /* MN_ROLE_PRETRAIN or MN_ROLE_TARGET: the datasets this run trains on */
    const char *init_encoder; /* checkpoint whose encoder initialises a fresh run (fine-tuning), or "" */
    const char *datasets;     /* comma-separated dataset names this run uses (of its role), or "": all */
    mn_model_config model;    /* [model] */
    mn_optim_config optim;    /* [optim] */
    double head_lr_mult;
    mn_sampler_config sampler;/* [sampler] */
    double cache_mb;          /* [data] cache_mb: the shard reader's cache bound (0: none, the shard is held) */
    int prefetch;             /* [data] prefetch: draw the next batch on the I/O thread during the step */
    long steps, batch, micro, threads, ckpt_every, keep, consistency_every, log_every, eval_every, eval_batches;
    double bucket_mb;
    int freeze_encoder;       /* train.freeze_encoder: the encoder never trains (heads only) */
    long head_warmup_steps;   /* train.head_warmup_steps: the first N steps train the heads only */
    double watchdog_s;        /* no progress for this long ends the job (0: no watchdog) */
    int nan_abort, trace, resume, sync_bn;
    int ckpt_continue;        /* train.checkpoint_failure: 0 stop (default), 1 continue training */
    const char *out;
} run_cfg;

/* Read and validate a whole run configuration (every section; unknown keys are errors).  Local work. */
mn_err mn_run_config_read(mn_config *c, run_cfg *r);

/* A checkpoint the run will load must hold the model the configuration describes (depth, shortcut): otherwise
 * MN_ERR_CONFIG in the user's terms ("... holds a resnet10 encoder; model.depth is 18").  `why` starts the message.
 * Not collective. */
mn_err mn_run_check_ckpt_model(const char *path, const char *why, const run_cfg *c);

/* ---- evaluate.c ---- */

typedef struct mn_evaluator mn_evaluator;

/* An evaluator over this rank's shard reader (borrowed): fixed crops (the sampler config with seed + 0x5eed and no
 * jitter) of `batch` samples, drawn through pf (borrowed; mednet/prefetch.h) so that the reader stays on the I/O
 * thread.  Local work. */
mn_err mn_eval_create(mn_reader *rd, mn_prefetch *pf, const mn_sampler_config *scfg, int rank, int batch,
                      mn_evaluator **out);
void mn_eval_destroy(mn_evaluator **ev);

/* Evaluate t over `nbatches` fixed batches, batch norm in eval mode, per dataset row of its part table: score[row]
 * is the mean foreground Dice (segmentation heads) or the accuracy (model.head = cls), balanced[row] the mean
 * per-class accuracy (classification; NaN for segmentation); NaN where no holder evaluated the row; [0] the means
 * over the finite rows.  Classification counts are summed over the ranks before dividing.  Collective on the world
 * (the local evaluation is agreed before the reduction). */
mn_err mn_eval_run(mn_evaluator *ev, mn_trainer *t, long nbatches, double *score, double *balanced);

/* ---- watchdog.c ---- */

typedef struct mn_watchdog mn_watchdog;

/* Start this rank's watchdog over a run writing into out_dir: a helper thread that, when mn_watchdog_beat has not
 * been called for `limit` seconds, prints where this rank waits, reports itself in <out_dir>/.watchdog/, names the
 * ranks that did not report, and ends this process with _exit(MN_EXIT_WATCHDOG) so that the launcher ends the job
 * (design in watchdog.c).  limit <= 0: no watchdog, *out = NULL.  Rank 0 removes the reports of an earlier run.
 * Not collective (the helper never calls MPI); errors (a thread that cannot start) are local work to agree on. */
mn_err mn_watchdog_start(const char *out_dir, double limit, int rank, int size, mn_watchdog **out);

/* Record progress: the main thread enters `phase` (a string literal) of step `step` (0-based).  NULL: no-op. */
void mn_watchdog_beat(mn_watchdog *wd, long step, const char *phase);

/* Stop and join the helper thread, free *wd, set it to NULL; accepts NULL. */
void mn_watchdog_stop(mn_watchdog **wd);

/* ---- setup.c ---- */

typedef struct run {
    run_cfg cfg;
    mn_config *config;
    char *config_text;
    char *prep_text;          /* the preprocessing record of the run's datasets, for checkpoints */
    MPI_Comm comm;
    int rank, size;
    char resume_path[1400];   /* the checkpoint to resume from, or "" */
    mn_corpus_info *info;
    mn_shard_plan *plan;
    mn_reader *reader;        /* this rank's volumes, streamed from the corpus through a bounded cache */
    mn_prefetch *pf;          /* the I/O thread: every draw of the sampler and the evaluator runs there */
    mn_sampler *sampler;
    mn_evaluator *eval;
    mn_trainer *trainer;
    mn_parts *parts;          /* the trainer's part table (rows: encoder, then the run's datasets) */
    mn_trace *trace;
    long step;                /* the next step to run */
    FILE *metrics;
    mn_lock *lock;            /* this run's hold on the output folder */
    mn_watchdog *watchdog;    /* NULL when train.watchdog_s = 0 */
    long ckpt_step;           /* the step of the last checkpoint this run wrote, -1: none */
    int metrics_warned;       /* a failed metrics write was reported once */
    int fault_rank;           /* MEDNET_FAULT (testing): the rank and step of an injected fault, -1: none */
    long fault_step;
    int fault_signal;         /* the signal of the signal_* kinds: SIGUSR1 or SIGTERM */
    int fault_done;           /* a one-shot fault has fired */
    char fault[32];
} run;

/* Set a run up (see pretrain.c's design note for the order).  Collective on r->comm; errors that every rank agreed
 * on carry MN_ERR_AGREED. */
mn_err mn_run_setup(run *r);

#endif
