/* train_impl.h: the pieces of a training run that pretrain.c composes (private to src/train).
 *
 *   checkpoint.c  checkpoints of a trainer over its part table: write, resume, encoder initialisation, and the
 *                 description of a checkpoint file used to validate a run before any heavy work.
 */
#ifndef MN_TRAIN_IMPL_H
#define MN_TRAIN_IMPL_H

#include <stdint.h>

#include "mednet/error.h"
#include "mednet/trainer.h"

/* The identity written into every checkpoint, besides the arrays. */
typedef struct mn_ckpt_meta {
    const char *config_text;   /* the run's whole configuration (mn_config_dump) */
    uint32_t corpus_checksum;
    const char *corpus_path;
    uint64_t sampler_seed;
} mn_ckpt_meta;

/* What a checkpoint file holds, read from its attributes alone (cheap). */
typedef struct mn_ckpt_desc {
    int depth;                 /* model.depth of the config it was written with */
    int shortcut;              /* 0 default, 1 A, 2 B */
    int head_kind;             /* 0 seg, 1 branch */
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

/* Initialise t's encoder (parameters and BN statistics) from checkpoint `path` (fine-tuning): read on rank 0,
 * agreed, broadcast.  Collective on the world. */
mn_err mn_train_ckpt_init_encoder(mn_trainer *t, const char *path);

/* Describe checkpoint `path` from its attributes.  Not collective.  Errors name the file: not a checkpoint (not
 * HDF5, or no mednet attributes), unreadable config. */
mn_err mn_train_ckpt_describe(const char *path, mn_ckpt_desc *d);

#endif
