/* train.h: the distributed multi-dataset pre-training loop (`mednet pretrain`).
 *
 * One call runs a whole pre-training job on a communicator: read the config (rank 0 reads, broadcasts), open the
 * corpus, assign shards, load this rank's shard, build the model with the heads of this rank's datasets, build the
 * per-dataset communicators, broadcast rank 0's parameters, resume from the newest checkpoint of the output
 * directory if there is one, then train: every step each rank draws `micro_batches` local batches of crops,
 * accumulates gradients, the encoder gradient is all-reduced over all ranks in buckets that start during the
 * backward pass of the last micro-batch, each head's gradient over the ranks that hold its dataset, and every
 * replica applies the same optimiser update.  Checkpoints are written atomically every `checkpoint_every` steps,
 * at the end, and when a SIGUSR1/SIGTERM is caught (then the run exits with MN_EXIT_REQUEUE).
 *
 * The config keys are documented in configs/pretrain_mricron.ini.
 */
#ifndef MEDNET_TRAIN_H
#define MEDNET_TRAIN_H

#include <mpi.h>
#include "mednet/error.h"
#include "mednet/model.h"

/* What a run ended with. */
typedef struct mn_train_result {
    int exit_status;      /* 0: finished; MN_EXIT_REQUEUE: checkpointed on a signal */
    long steps_done;      /* the step count reached */
    double first_loss, last_loss;        /* mean loss over heads, first and last logged step */
    double dice_before, dice_after;      /* mean foreground Dice over datasets, before and after training */
} mn_train_result;

/* Run pre-training with the config file `path` plus `noverrides` overrides "section.key=value".  finetune = 1
 * only changes the wording of the log ("finetune"); what is trained comes from the config (corpus.role,
 * train.init_encoder).
 * Installs the SIGUSR1/SIGTERM handlers of mednet/signals.h first and leaves them installed on return (a signal
 * arriving while the process exits is recorded, not fatal).
 * Collective on comm.  An error every rank agreed on carries MN_ERR_AGREED (exit 1 possible); any other error must
 * end the job with MPI_Abort (mn_mpi_exit_error). */
mn_err mn_pretrain_run(MPI_Comm comm, const char *path, char **overrides, int noverrides, int finetune,
                       mn_train_result *res);

/* Read a config file on rank 0 of comm, broadcast its text and parse it everywhere; apply overrides.
 * Collective on comm; a missing or malformed file gives the same error on every rank. */
struct mn_config;
mn_err mn_train_config_load(MPI_Comm comm, const char *path, char **overrides, int noverrides,
                            struct mn_config **out);

/* A model rebuilt from a training checkpoint alone (no corpus needed): for export and inference. */
typedef struct mn_ckpt_model {
    mn_model *model;         /* the encoder and every head of the checkpoint, trained values loaded */
    mn_model_config cfg;     /* from the checkpoint's recorded [model] section; heads below */
    int nheads;
    char **head_names;       /* the datasets of the heads, in name order; head h has id h */
    mn_head_spec *heads;     /* class counts, solved from each head's parameter count */
    long step;               /* the step the checkpoint was written at */
    char *prep_text;         /* the preprocessing record (mednet/corpus.h), one section per dataset; NULL if none */
    char *config_text;       /* the run config the checkpoint recorded */
} mn_ckpt_model;

/* Rebuild the model of checkpoint `path` for `input` ((N, 1, D, H, W); N == 0: parameters only).  only_head: NULL
 * keeps every head (tensor names heads.<h>.* when there are several), "" none (the encoder alone), a dataset name
 * that head alone (MedicalNet's plain names, e.g. conv_seg.*; a name the checkpoint lacks is MN_ERR_ARG listing its
 * heads).  Not collective.  A file that is not a training checkpoint, a recorded config that is not usable, or a
 * head whose parameter count fits no class count is MN_ERR_FORMAT naming the file; *out is zeroed on error. */
mn_err mn_ckpt_model_load(const char *path, mn_shape input, const char *only_head, mn_ckpt_model *out);

/* What a safetensors file may not say about itself (mn_model_file_load).  Any field may be NULL. */
typedef struct mn_model_file_hint {
    const char *config_text;  /* a run config: [model] depth, shortcut, head; [sampler] crop */
    const char *config_origin;/* its file name, for messages */
    const char *head;         /* the dataset the head was trained on */
    const char *prep_text;    /* a preprocessing record holding a section of that dataset */
} mn_model_file_hint;

/* Rebuild a model with one head from a training checkpoint (as mn_ckpt_model_load, with only_head = hint->head) or
 * from a safetensors file (a file whose name ends in .safetensors).  For safetensors the model settings (depth,
 * shortcut_type, head kind, classes), the dataset, the crop and the preprocessing record are read from the
 * header's __metadata__ as `mednet export` writes them (keys depth, shortcut_type, head, classes, dataset, crop,
 * prep.<record key>); what the metadata lacks comes from the hint (a config's [model] and [sampler] crop, a record
 * section of hint->head); a metadata value and a hint that disagree is MN_ERR_ARG.  Settings still unknown
 * after both are MN_ERR_ARG naming them and the options that supply them; the file must hold exactly the tensors of
 * that model (strict).  out->config_text is then synthesised ([model] and, when known, [sampler] crop) and
 * out->prep_text holds the one section (NULL when unknown).  Not collective. */
mn_err mn_model_file_load(const char *path, mn_shape input, const mn_model_file_hint *hint, mn_ckpt_model *out);

/* Give every rank of comm the model that rank `root` loaded (parameters only, input N == 0) into *cm: the
 * description and texts are broadcast, every rank creates the model for `input` and receives the weights; on root
 * the parameter-only model is replaced.  Collective on comm; root's *cm must be loaded, the others' zeroed. */
mn_err mn_ckpt_model_bcast(MPI_Comm comm, int root, mn_shape input, mn_ckpt_model *cm);

/* Index of the head of dataset `name`, or -1. */
int mn_ckpt_model_head(const mn_ckpt_model *cm, const char *name);

/* Free everything; accepts a zeroed or partly filled struct. */
void mn_ckpt_model_free(mn_ckpt_model *cm);

#endif
