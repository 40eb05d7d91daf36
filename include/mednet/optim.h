/* optim.h: optimisers and learning-rate schedules over the model's flat parameter buffer.
 *
 * The optimiser state (SGD momentum; Adam first and second moments) lives in buffers with the same layout as the
 * parameters, so one update loop runs over any (offset, length) range: the encoder and each head are updated as
 * separate ranges, each with its own learning rate (a head may have a multiplier) and, for Adam, its own step count
 * (a head that saw no sample this step is simply not updated: no decay, no momentum).  Semantics follow
 * torch.optim.SGD (dampening 0, weight decay added to the gradient, momentum buffer initialised with the first
 * gradient) and torch.optim.Adam (L2 weight decay, bias correction).  Pure arithmetic: no MPI, no files.
 */
#ifndef MEDNET_OPTIM_H
#define MEDNET_OPTIM_H

#include <stddef.h>
#include "mednet/error.h"

typedef enum mn_optim_kind { MN_OPTIM_SGD = 0, MN_OPTIM_ADAM = 1 } mn_optim_kind;
typedef enum mn_sched_kind { MN_SCHED_CONSTANT = 0, MN_SCHED_EXPONENTIAL = 1, MN_SCHED_COSINE = 2 } mn_sched_kind;

typedef struct mn_optim_config {
    mn_optim_kind kind;
    double lr;            /* base learning rate (encoder) */
    double head_lr_mult;  /* heads use lr * head_lr_mult */
    double momentum;      /* SGD: 0.9 as MedicalNet */
    int nesterov;         /* SGD */
    double weight_decay;  /* 1e-3 as MedicalNet */
    double beta1, beta2, eps; /* Adam */
    mn_sched_kind schedule;
    double gamma;         /* exponential: lr * gamma^(step / decay_steps) */
    long decay_steps;
    long warmup_steps;    /* linear warm-up from lr/warmup_steps to lr over this many steps (0 = none) */
    long total_steps;     /* cosine: the horizon */
    double min_lr;        /* cosine floor */
} mn_optim_config;

/* MedicalNet's defaults: SGD, lr 0.001, momentum 0.9, weight decay 1e-3, exponential gamma 0.99 per 100 steps. */
mn_optim_config mn_optim_defaults(void);

/* Read an optimiser configuration from [section] of a run config: recipe (none | medicalnet | adam: presets
 * for the defaults of the other keys, see configs/pretrain_mricron.ini), kind (sgd | adam), lr, momentum, nesterov,
 * weight_decay, beta1, beta2, eps, schedule (constant | exponential | cosine), gamma, decay_steps, warmup_steps,
 * min_lr, and head_lr_mult into *head_lr_mult (heads learn at lr * head_lr_mult).  total_steps is set to
 * `total_steps` (the run's step count, for the cosine schedule).  Each key is marked used; MN_ERR_CONFIG on bad
 * values. */
struct mn_config;
mn_err mn_optim_config_read(struct mn_config *cfg, const char *section, long total_steps, mn_optim_config *out,
                            double *head_lr_mult);

typedef struct mn_optim mn_optim;

/* Create an optimiser for a parameter buffer of n floats; state zeroed.  MN_ERR_ARG on a bad config value. */
mn_err mn_optim_create(const mn_optim_config *cfg, size_t n, mn_optim **out);
void mn_optim_destroy(mn_optim **opt);

/* Scheduled learning rate at (0-based) step for the encoder; heads multiply by head_lr_mult. */
double mn_optim_lr(const mn_optim_config *cfg, long step);

/* Update params[off, off+len) from grads[off, off+len) with learning rate lr; t is the 1-based count of updates
 * this range has received (Adam bias correction; ignored by SGD).  Grads are read, not modified.  Not collective:
 * every replica runs the same arithmetic on identical inputs and stays bitwise identical. */
mn_err mn_optim_update(mn_optim *opt, float *params, const float *grads, size_t off, size_t len, double lr, long t);

/* The state buffers for checkpoints: count (0, 1 or 2) and pointer/length of each. */
int mn_optim_state_count(const mn_optim *opt);
float *mn_optim_state(mn_optim *opt, int i, size_t *len);

#endif
