/* pretrain.c: the pre-training and fine-tuning run (mednet/train.h): set-up, the loop and its logging.
 *
 * The parallel work lives elsewhere: the step and the gradient path in trainer.c over the part table (parts.c),
 * checkpoints in checkpoint.c, the sampling rule in the sampler.  This file puts them together in an order that
 * keeps failures clean (DESIGN.md, "Failure model"):
 *
 *   1. signal handlers first: a SIGUSR1/SIGTERM at any time from here on ends the run with the requeue status;
 *   2. the configuration, read by every part from its own section and validated whole, plus the checkpoints it
 *      names (train.init_encoder, the newest one in train.out_dir) checked against it, before any heavy work;
 *   3. the output folder and its lock, the corpus metadata, the shard plan, the shard, the sampler (each step
 *      local work agreed over the world: a failure on one rank is an exit 1 on every rank);
 *   4. the trainer (model, optimiser, part table, reducer), resume or encoder initialisation;
 *   5. the loop: signal agreement, step, replica check, log, evaluation, checkpoint.
 *
 * Errors that every rank agreed on carry MN_ERR_AGREED (mednet/error.h); any other error ends the job in
 * MPI_Abort (the caller, via mn_mpi_exit_error).
 */
#include "mednet/train.h"

#include "mednet/ckpt.h"
#include "mednet/config.h"
#include "mednet/corpus.h"
#include "mednet/dist.h"
#include "mednet/layers.h"
#include "mednet/lock.h"
#include "mednet/loss.h"
#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/optim.h"
#include "mednet/parts.h"
#include "mednet/sampler.h"
#include "mednet/signals.h"
#include "mednet/threads.h"
#include "mednet/trainer.h"
#include "train/train_impl.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- configuration ------------------------------------------------------------------------------------------ */

typedef struct run_cfg {
    const char *corpus;
    long shard_seed;
    int role;                 /* MN_ROLE_PRETRAIN or MN_ROLE_TARGET: the datasets this run trains on */
    const char *init_encoder; /* checkpoint whose encoder initialises a fresh run (fine-tuning), or "" */
    mn_model_config model;    /* [model] */
    mn_optim_config optim;    /* [optim] */
    double head_lr_mult;
    mn_sampler_config sampler;/* [sampler] */
    long steps, batch, micro, threads, ckpt_every, keep, consistency_every, log_every, eval_every, eval_batches;
    double bucket_mb;
    int nan_abort, trace, resume, sync_bn;
    const char *out;
} run_cfg;

/* Parse a config text and apply the overrides.  Local work; on error *out is NULL. */
static mn_err parse_config(const char *text, const char *path, char **overrides, int noverrides, mn_config **out)
{
    mn_err e = mn_config_parse(text, path, out);
    for (int i = 0; i < noverrides && !e; i++) e = mn_config_override(*out, overrides[i]);
    if (e) mn_config_destroy(out);
    MN_CALL(e);
    return MN_OK;
}

mn_err mn_train_config_load(MPI_Comm comm, const char *path, char **overrides, int noverrides, mn_config **out)
{
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    char *text = NULL;
    long len = 0;
    mn_err e = MN_OK;
    if (rank == 0) {
        size_t n = 0;
        e = mn_config_read_text(path, &text, &n);
        len = e ? -1 : (long)n;
    }
    MN_MPI(MPI_Bcast(&len, 1, MPI_LONG, 0, comm));
    if (len < 0) MN_CALL(mn_agree(comm, rank == 0 ? MN_ERR_IO : MN_OK));
    if (rank != 0) MN_CALL(mn_malloc((size_t)len + 1, "config text", (void **)&text));
    mn_err be = mn_mpi_report_if(MPI_Bcast(text, (int)len + 1, MPI_CHAR, 0, comm));
    if (be) {
        free(text);
        MN_CALL(be);
    }
    /* Every rank parses the same text, so the outcome is the same everywhere: rank 0 parses first and reports, the
     * others parse only once rank 0 succeeded (one message per error, not one per rank). */
    e = rank == 0 ? parse_config(text, path, overrides, noverrides, out) : MN_OK;
    e = mn_agree(comm, e);
    if (!e && rank != 0) e = mn_agree(comm, parse_config(text, path, overrides, noverrides, out));
    else if (!e) e = mn_agree(comm, MN_OK);
    free(text);
    MN_CALL(e);
    return MN_OK;
}

/* The [corpus] and [train] sections; [model], [optim] and [sampler] are read by their own modules. */
static mn_err read_cfg(mn_config *c, run_cfg *r)
{
    memset(r, 0, sizeof *r);
    MN_CALL(mn_config_string(c, "corpus", "path", NULL, &r->corpus));
    MN_CHECK(r->corpus && *r->corpus, MN_ERR_CONFIG, "config %s: [corpus] path is required (the corpus.h5 to train on)",
             mn_config_origin(c));
    MN_CALL(mn_config_int(c, "corpus", "shard_seed", 0, 0, 1L << 40, &r->shard_seed));
    static const char *const roles[] = {"pretrain", "target", NULL};
    MN_CALL(mn_config_choice(c, "corpus", "role", "pretrain", roles, &r->role));
    MN_CALL(mn_config_string(c, "train", "init_encoder", "", &r->init_encoder));

    MN_CALL(mn_model_config_read(c, "model", &r->model));
    MN_CALL(mn_sampler_config_read(c, "sampler", &r->sampler));

    MN_CALL(mn_config_int(c, "train", "steps", 100, 0, 1L << 40, &r->steps));
    MN_CALL(mn_config_int(c, "train", "batch", 2, 1, MN_MODEL_MAX_BATCH, &r->batch));
    MN_CALL(mn_config_int(c, "train", "micro_batches", 1, 1, 4096, &r->micro));
    MN_CALL(mn_config_int(c, "train", "threads", 0, 0, 1024, &r->threads));
    MN_CALL(mn_config_int(c, "train", "checkpoint_every", 50, 0, 1L << 40, &r->ckpt_every));
    MN_CALL(mn_config_int(c, "train", "keep", 3, 1, 1000, &r->keep));
    MN_CALL(mn_config_int(c, "train", "consistency_every", 10, 0, 1L << 40, &r->consistency_every));
    MN_CALL(mn_config_int(c, "train", "log_every", 1, 1, 1L << 40, &r->log_every));
    MN_CALL(mn_config_int(c, "train", "eval_every", 0, 0, 1L << 40, &r->eval_every));
    MN_CALL(mn_config_int(c, "train", "eval_batches", 4, 0, 100000, &r->eval_batches));
    MN_CALL(mn_config_double(c, "train", "bucket_mb", 25.0, 0.001, 1e5, &r->bucket_mb));
    static const char *const nan_policy[] = {"skip", "abort", NULL};
    MN_CALL(mn_config_choice(c, "train", "nan_policy", "skip", nan_policy, &r->nan_abort));
    MN_CALL(mn_config_bool(c, "train", "trace", 0, &r->trace));
    MN_CALL(mn_config_bool(c, "train", "sync_bn", 0, &r->sync_bn));
    MN_CALL(mn_config_bool(c, "train", "resume", 1, &r->resume));
    MN_CALL(mn_config_string(c, "train", "out_dir", "run", &r->out));
    MN_CHECK(*r->out, MN_ERR_CONFIG, "config %s: [train] out_dir is empty", mn_config_origin(c));

    MN_CALL(mn_optim_config_read(c, "optim", r->steps, &r->optim, &r->head_lr_mult));
    MN_CALL(mn_config_check_unused(c));
    r->model.input = (mn_shape){(int)r->batch, 1, r->sampler.crop[0], r->sampler.crop[1], r->sampler.crop[2]};
    return MN_OK;
}

static const char *depth_shortcut_name(int s) { return s == 1 ? "A" : s == 2 ? "B" : "default"; }

/* A checkpoint that the run will load must hold the model the config describes.  Not collective. */
static mn_err check_ckpt_model(const char *path, const char *why, const run_cfg *c, mn_ckpt_desc *d)
{
    MN_CALL(mn_train_ckpt_describe(path, d));
    int shortcut = c->model.shortcut == MN_SHORTCUT_A ? 1 : c->model.shortcut == MN_SHORTCUT_B ? 2 : 0;
    MN_CHECK(d->depth == c->model.depth, MN_ERR_CONFIG,
             "%s %s holds a resnet%d encoder; model.depth is %d\n---> HINT: set model.depth=%d, or use a checkpoint "
             "of a resnet%d", why, path, d->depth, c->model.depth, d->depth, c->model.depth);
    MN_CHECK(d->shortcut == shortcut || d->shortcut == 0 || shortcut == 0, MN_ERR_CONFIG,
             "%s %s has shortcut %s; model.shortcut is %s", why, path, depth_shortcut_name(d->shortcut),
             depth_shortcut_name(shortcut));
    return MN_OK;
}

/* ---- the run state ------------------------------------------------------------------------------------------ */

typedef struct run {
    run_cfg cfg;
    mn_config *config;
    char *config_text;
    MPI_Comm comm;
    int rank, size;
    char resume_path[1400];   /* the checkpoint to resume from, or "" */
    mn_corpus_info *info;
    mn_shard_plan *plan;
    mn_shard *shard;
    mn_sampler *sampler, *eval_sampler;
    mn_trainer *trainer;
    mn_parts *parts;          /* the trainer's part table (rows: encoder, then the run's datasets) */
    mn_trace *trace;
    long step;                /* the next step to run */
    float *x;                 /* evaluation batch */
    int32_t *labels, *labels_small;
    int *ds;
    FILE *metrics;
    mn_lock *lock;            /* this run's hold on the output folder */
    int fault_rank;           /* MEDNET_FAULT (testing): the rank and step of an injected fault, -1: none */
    long fault_step;
    char fault[32];
} run;

/* Fault injection for the failure tests, from MEDNET_FAULT=<kind>:<rank>[:<step>]:
 *   head_mismatch:R:S   after step S, rank R perturbs one parameter of the first head it holds (a replica
 *                       mismatch the next consistency check must end the job on);
 *   signal_setup:R      rank R raises SIGUSR1 to itself at the start of set-up.
 * Never set in production; documented in DESIGN.md. */
static void fault_parse(run *r)
{
    r->fault_rank = -1;
    const char *f = getenv("MEDNET_FAULT");
    if (!f || !*f) return;
    int rank = -1;
    long step = 0;
    char kind[32] = "";
    if (sscanf(f, "%31[a-z_]:%d:%ld", kind, &rank, &step) >= 2) {
        snprintf(r->fault, sizeof r->fault, "%s", kind);
        r->fault_rank = rank;
        r->fault_step = step;
    }
}

static int fault_is(const run *r, const char *kind) { return r->fault_rank == r->rank && !strcmp(r->fault, kind); }

static mn_err mkdir_p1(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        MN_FAIL(MN_ERR_IO, "cannot create output directory '%s': %s", dir, strerror(errno));
    return MN_OK;
}

/* ---- set-up ------------------------------------------------------------------------------------------------- */

/* Rank 0 checks the checkpoints the run will load against the config.  Local work, agreed by the caller. */
static mn_err check_checkpoints(run *r)
{
    const run_cfg *c = &r->cfg;
    r->resume_path[0] = 0;
    if (c->resume) {
        int found = 0;
        MN_CALL(mn_ckpt_latest(c->out, r->resume_path, sizeof r->resume_path, &found));
        if (!found) r->resume_path[0] = 0;
    }
    mn_ckpt_desc d;
    if (r->resume_path[0]) MN_CALL(check_ckpt_model(r->resume_path, "the checkpoint to resume from,", c, &d));
    if (!r->resume_path[0] && *c->init_encoder)
        MN_CALL(check_ckpt_model(c->init_encoder, "train.init_encoder =", c, &d));
    return MN_OK;
}

/* The corpus checksum of the checkpoint to resume from must be the corpus's.  Rank 0; agreed by the caller. */
static mn_err check_resume_corpus(run *r)
{
    if (!r->resume_path[0]) return MN_OK;
    mn_ckpt_desc d;
    MN_CALL(mn_train_ckpt_describe(r->resume_path, &d));
    MN_CHECK(d.corpus_checksum == r->info->checksum, MN_ERR_CONFIG,
             "checkpoint %s was written for corpus %08x, but %s is corpus %08x\n"
             "---> HINT: use another train.out_dir, or the corpus it was trained on",
             r->resume_path, (unsigned)d.corpus_checksum, r->cfg.corpus, (unsigned)r->info->checksum);
    if (d.nranks != r->size)
        mn_log_warn("resuming %s written by %d ranks on %d ranks: shards are re-assigned, so the run does not "
                    "continue bit for bit", r->resume_path, d.nranks, r->size);
    return MN_OK;
}

/* The sampler over this rank's shard, with the importance weights of the sampling rule.  Local work. */
static mn_err setup_sampler(run *r)
{
    const run_cfg *c = &r->cfg;
    MN_CALL(mn_sampler_create(r->shard, &c->sampler, r->rank, &r->sampler));
    double *w = NULL;
    MN_CALL(mn_malloc(sizeof(double) * (size_t)r->shard->num_volumes, "sampling weights", (void **)&w));
    mn_err e = mn_sampler_weights(r->info, r->plan, r->rank, c->sampler.mixture, w);
    if (!e) e = mn_sampler_set_weights(r->sampler, w);
    mn_free(&w);
    MN_CALL(e);
    mn_sampler_config ecfg = c->sampler;
    ecfg.seed = c->sampler.seed + 0x5eedULL; /* evaluation crops: fixed, disjoint from the training stream */
    ecfg.jitter_scale = ecfg.jitter_shift = 0;
    MN_CALL(mn_sampler_create(r->shard, &ecfg, r->rank, &r->eval_sampler));
    size_t vox = (size_t)c->sampler.crop[0] * c->sampler.crop[1] * c->sampler.crop[2];
    MN_CALL(mn_malloc(sizeof(float) * vox * (size_t)c->batch, "evaluation batch", (void **)&r->x));
    MN_CALL(mn_malloc(sizeof(int32_t) * vox * (size_t)c->batch, "evaluation labels", (void **)&r->labels));
    MN_CALL(mn_malloc(sizeof(int32_t) * vox * (size_t)c->batch, "evaluation labels (logit size)",
                      (void **)&r->labels_small));
    MN_CALL(mn_malloc(sizeof(int) * (size_t)c->batch, "evaluation dataset ids", (void **)&r->ds));
    return MN_OK;
}

/* The datasets of the run and the trainer.  Collective on the world. */
static mn_err setup_trainer(run *r)
{
    const run_cfg *c = &r->cfg;
    int nd = r->info->num_datasets, n = 0;
    mn_trainer_dataset *ds = NULL;
    int *holders = NULL;
    mn_err e = mn_calloc(sizeof *ds * (size_t)(nd ? nd : 1), "run datasets", (void **)&ds);
    if (!e) e = mn_calloc(sizeof(int) * (size_t)(nd ? nd : 1) * (size_t)r->size, "holders", (void **)&holders);
    for (int d = 0; d < nd && !e; d++) {
        if (r->info->datasets[d].role != (mn_role)c->role) continue;
        int *h = holders + (size_t)n * r->size;
        for (int p = 0; p < r->size; p++) h[p] = mn_shard_plan_holds(r->plan, p, d);
        ds[n++] = (mn_trainer_dataset){d, r->info->datasets[d].name, r->info->datasets[d].num_classes, h};
    }
    e = mn_agree(r->comm, e);
    if (!e && c->trace) {
        char path[1200];
        snprintf(path, sizeof path, "%s/trace-rank%d.json", c->out, r->rank);
        e = mn_agree(r->comm, mn_trace_open(path, r->rank, &r->trace));
    }
    mn_trainer_config tc = {.model = c->model,
                            .optim = c->optim,
                            .head_lr_mult = c->head_lr_mult,
                            .micro_batches = (int)c->micro,
                            .sync_bn = c->sync_bn,
                            .nan_abort = c->nan_abort,
                            .bucket_mb = c->bucket_mb};
    if (!e) e = mn_trainer_create(r->comm, &tc, n, ds, nd, r->trace, &r->trainer);
    mn_free(&ds);
    mn_free(&holders);
    MN_CALL(e);
    r->parts = mn_trainer_parts(r->trainer);
    mn_model *m = mn_trainer_model(r->trainer);
    mn_model_memory mem = mn_model_memory_plan(m);
    mn_log_info("model: resnet%d, %s head, %zu parameters on rank 0 (encoder %zu), %.1f MiB planned per rank "
                "(activations %.1f MiB)",
                c->model.depth, c->model.head_kind == MN_HEAD_SEG ? "conv_seg" : "branch", mn_model_num_params(m),
                mn_model_param_range(m, -1).count, mem.total_bytes / 1048576.0, mem.activation_bytes / 1048576.0);
    return MN_OK;
}

static mn_err setup(run *r)
{
    const run_cfg *c = &r->cfg;
    /* The output folder, its lock, and the checkpoints named by the config: rank 0's local work, agreed. */
    MN_CALL(mn_agree(r->comm, r->rank == 0 ? mkdir_p1(c->out) : MN_OK));
    /* One run per output folder: a second job on it stops here, naming the holder (agreed). */
    MN_CALL(mn_outdir_lock(r->comm, c->out, &r->lock));
    MN_CALL(mn_agree(r->comm, r->rank == 0 ? check_checkpoints(r) : MN_OK));
    MN_MPI(MPI_Bcast(r->resume_path, (int)sizeof r->resume_path, MPI_CHAR, 0, r->comm));

    /* The corpus: metadata (agreed by mn_corpus_open), its identity against the checkpoint, the plan. */
    MN_CALL(mn_corpus_open(r->comm, c->corpus, &r->info));
    MN_CALL(mn_agree(r->comm, r->rank == 0 ? check_resume_corpus(r) : MN_OK));
    MN_CALL(mn_agree(r->comm, mn_shard_assign(r->info, r->size, (uint64_t)c->shard_seed, (mn_role)c->role,
                                              &r->plan)));
    if (r->rank == 0) {
        mn_corpus_print_summary(r->info, stdout);
        mn_shard_plan_print(r->plan, r->info, stdout);
        fflush(stdout);
    }
    /* The shard (collective reads; corruption is an agreed error), then the sampler (local, agreed). */
    MN_CALL(mn_shard_load(r->comm, r->info, r->plan, &r->shard));
    MN_CALL(mn_agree(r->comm, setup_sampler(r)));
    MN_CALL(setup_trainer(r));

    /* Resume, or initialise the encoder from a pre-training checkpoint (fine-tuning). */
    if (r->resume_path[0]) {
        MN_CALL(mn_train_ckpt_resume(r->trainer, r->resume_path, &r->step));
        mn_log_info("resumed from %s at step %ld", r->resume_path, r->step);
    } else if (*c->init_encoder) {
        MN_CALL(mn_train_ckpt_init_encoder(r->trainer, c->init_encoder));
        mn_log_info("encoder initialised from %s", c->init_encoder);
    }
    mn_err e = MN_OK;
    if (r->rank == 0) {
        char mpath[1200];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", c->out);
        r->metrics = fopen(mpath, "a");
        if (!r->metrics)
            e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot open '%s': %s", mpath,
                                strerror(errno));
    }
    MN_CALL(mn_agree(r->comm, e));
    return MN_OK;
}

/* ---- evaluation ----------------------------------------------------------------------------------------------- */

static double mean_finite(const double *v, int n)
{
    double s = 0;
    int c = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], c++;
    return c ? s / c : NAN;
}

/* Mean foreground Dice per dataset row over `eval_batches` fixed batches, with batch norm in eval mode.
 * dice[row] for rows 1.. (NaN if no holder evaluated it; dice[0] unused).  Collective on the world. */
static mn_err evaluate(run *r, double *dice)
{
    mn_parts *p = r->parts;
    mn_model *m = mn_trainer_model(r->trainer);
    int n = (int)r->cfg.batch;
    size_t vox = (size_t)r->cfg.sampler.crop[0] * r->cfg.sampler.crop[1] * r->cfg.sampler.crop[2];
    double *acc = NULL; /* [2*nrows]: sum of Dice, count */
    MN_CALL(mn_calloc(sizeof(double) * 2 * (size_t)p->nrows, "eval sums", (void **)&acc));
    mn_model_set_training(m, 0);
    mn_err e = MN_OK;
    mn_head_batch hb[MN_MODEL_MAX_HEADS];
    int rows[MN_MODEL_MAX_HEADS];
    for (long b = 0; b < r->cfg.eval_batches && !e; b++) {
        e = mn_sampler_next(r->eval_sampler, b, n, r->x, r->labels, r->ds);
        int nhb = 0;
        for (int i = 0; i < n && !e;) {
            int j = i;
            while (j < n && r->ds[j] == r->ds[i]) j++;
            rows[nhb] = mn_parts_row_of(p, r->ds[i]);
            hb[nhb] = (mn_head_batch){.head = p->row[rows[nhb]].head, .offset = i, .count = j - i};
            nhb++;
            i = j;
        }
        if (!e) e = mn_model_forward(m, r->x, hb, nhb);
        for (int i = 0; i < nhb && !e; i++) {
            mn_shape ls;
            const float *logits = mn_model_logits(m, i, &ls);
            const int32_t *lab = r->labels + (size_t)hb[i].offset * vox;
            mn_shape full = {hb[i].count, 1, r->cfg.sampler.crop[0], r->cfg.sampler.crop[1], r->cfg.sampler.crop[2]};
            if (ls.d != full.d || ls.h != full.h || ls.w != full.w) {
                mn_shape small = {ls.n, 1, ls.d, ls.h, ls.w};
                e = mn_labels_resize_nearest(&full, lab, &small, r->labels_small);
                lab = r->labels_small;
            }
            double dc[MN_CORPUS_MAX_CLASSES];
            if (!e) e = mn_dice_hard(&ls, logits, lab, MN_LABEL_IGNORE, dc);
            double s = 0;
            int cnt = 0;
            for (int cl = 1; cl < ls.c && !e; cl++)
                if (!isnan(dc[cl])) s += dc[cl], cnt++;
            if (cnt) acc[2 * rows[i]] += s / cnt, acc[2 * rows[i] + 1] += 1;
        }
    }
    mn_model_set_training(m, 1);
    /* A local failure here (a bad label) must not leave the others in the reduction: agree first. */
    e = mn_agree(p->dist->world, e);
    if (!e) e = mn_mpi_report_if(MPI_Allreduce(MPI_IN_PLACE, acc, 2 * p->nrows, MPI_DOUBLE, MPI_SUM, p->dist->world));
    for (int k = 1; k < p->nrows && !e; k++) dice[k] = acc[2 * k + 1] > 0 ? acc[2 * k] / acc[2 * k + 1] : NAN;
    dice[0] = e ? NAN : mean_finite(dice + 1, p->nrows - 1);
    mn_free(&acc);
    MN_CALL(e);
    return MN_OK;
}

static void log_dice(run *r, const char *when, const double *dice)
{
    if (r->rank != 0) return;
    mn_parts *p = r->parts;
    char line[2048];
    int o = snprintf(line, sizeof line, "eval (%s, step %ld): mean foreground Dice %.4f [", when, r->step, dice[0]);
    for (int k = 1; k < p->nrows && o < (int)sizeof line - 80; k++)
        o += snprintf(line + o, sizeof line - o, "%s%s %.4f", k > 1 ? ", " : "", p->row[k].name, dice[k]);
    snprintf(line + o, sizeof line - o, "]");
    mn_log_info("%s", line);
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %ld, \"eval\": \"%s\", \"dice\": {", r->step, when);
        for (int k = 1; k < p->nrows; k++)
            fprintf(r->metrics, "%s\"%s\": %.6g", k > 1 ? ", " : "", p->row[k].name, isfinite(dice[k]) ? dice[k] : -1.0);
        fprintf(r->metrics, "}, \"mean_dice\": %.6g}\n", dice[0]);
        fflush(r->metrics);
    }
}

/* ---- the loop ----------------------------------------------------------------------------------------------- */

/* The batch source of a run: the sampler over this rank's shard. */
static mn_err draw_batch(void *ctx, int64_t index, mn_batch *b)
{
    run *r = ctx;
    MN_CALL(mn_sampler_next_weighted(r->sampler, index, b->n, b->x, b->labels, b->dataset, b->weight));
    return MN_OK;
}

static void fmt_eta(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

/* Progress line on rank 0 and a JSON line in the metrics file: the objective (weighted mean loss over every
 * sample, row 0) and each dataset's.  Collective on the world (reduces the losses). */
static mn_err log_step(run *r, mn_step_stats *st, double step_time, double avg_step, mn_train_result *res)
{
    mn_parts *p = r->parts;
    MPI_Comm w = p->dist->world;
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, st->loss, p->nrows, MPI_DOUBLE, MPI_SUM, w));
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, st->weight, p->nrows, MPI_DOUBLE, MPI_SUM, w));
    double times[3] = {st->t_compute, st->t_comm, st->t_data};
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, times, 3, MPI_DOUBLE, MPI_MAX, w));
    if (r->rank != 0) return MN_OK;
    char heads[1500];
    int o = 0;
    heads[0] = 0;
    for (int k = 1; k < p->nrows; k++) {
        if (st->weight[k] <= 0) continue;
        if (o < (int)sizeof heads - 64)
            o += snprintf(heads + o, sizeof heads - o, "%s%s %.4f", o ? " " : "", p->row[k].name,
                          st->loss[k] / st->weight[k]);
    }
    double loss = st->weight[0] > 0 ? st->loss[0] / st->weight[0] : NAN;
    if (res->steps_done == 0 || !isfinite(res->first_loss)) res->first_loss = loss;
    res->last_loss = loss;
    double lr = mn_optim_lr(&r->cfg.optim, r->step);
    double gbatch = (double)r->cfg.batch * r->cfg.micro * r->size;
    char eta[32];
    fmt_eta(avg_step * (double)(r->cfg.steps - r->step - 1), eta, sizeof eta);
    mn_log_info("step %ld/%ld  loss %.4f [%s]  lr %.2e  %.1f samples/s  compute %.3fs comm %.3fs (%.0f%% hidden) "
                "data %.3fs  ETA %s%s",
                r->step + 1, r->cfg.steps, loss, heads, lr, gbatch / step_time, times[0], times[1],
                100.0 * st->hidden, times[2], eta, st->skipped ? "  (skipped: non-finite)" : "");
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %ld, \"loss\": %.6g, \"lr\": %.6g, \"samples_per_s\": %.4g, \"t_step\": %.4g, "
                            "\"t_compute\": %.4g, \"t_comm\": %.4g, \"t_data\": %.4g, \"hidden\": %.3f, \"skipped\": %d, "
                            "\"head_loss\": {",
                r->step + 1, isfinite(loss) ? loss : -1.0, lr, gbatch / step_time, step_time, times[0], times[1],
                times[2], st->hidden, st->skipped);
        int first = 1;
        for (int k = 1; k < p->nrows; k++) {
            if (st->weight[k] <= 0) continue;
            fprintf(r->metrics, "%s\"%s\": %.6g", first ? "" : ", ", p->row[k].name, st->loss[k] / st->weight[k]);
            first = 0;
        }
        fprintf(r->metrics, "}}\n");
        fflush(r->metrics);
    }
    return MN_OK;
}

static mn_err write_checkpoint(run *r)
{
    mn_ckpt_meta meta = {r->config_text, r->info->checksum, r->cfg.corpus, r->cfg.sampler.seed};
    MN_CALL(mn_train_ckpt_write(r->trainer, r->cfg.out, r->step, (int)r->cfg.keep, &meta));
    return MN_OK;
}

static mn_err train_loop(run *r, mn_train_result *res)
{
    const run_cfg *c = &r->cfg;
    mn_parts *p = r->parts;
    mn_model *m = mn_trainer_model(r->trainer);
    mn_step_stats st = {0};
    double *dice = NULL;
    MN_CALL(mn_calloc(sizeof(double) * (size_t)p->nrows, "step losses", (void **)&st.loss));
    mn_err e = mn_calloc(sizeof(double) * (size_t)p->nrows, "step weights", (void **)&st.weight);
    if (!e) e = mn_calloc(sizeof(double) * (size_t)p->nrows, "dice", (void **)&dice);
    e = mn_agree(p->dist->world, e);
    if (!e && c->eval_batches > 0) {
        e = evaluate(r, dice);
        if (!e) {
            log_dice(r, r->step == 0 ? "untrained" : "resumed", dice);
            res->dice_before = dice[0];
        }
    }
    double t_start = MPI_Wtime(), sum_step = 0;
    long nsteps = 0;
    while (!e && r->step < c->steps) {
        /* A caught signal (also one caught during set-up): agree, checkpoint what this run trained, leave with the
         * requeue status. */
        int sig = 0;
        e = mn_dist_agree_flag(p->dist->world, mn_signals_pending(), &sig);
        if (e) break;
        if (sig) {
            mn_log_info("caught %s at step %ld: %s and exiting for requeue (status %d)", mn_signals_name(sig),
                        r->step, nsteps ? "writing a checkpoint" : "nothing trained yet, no checkpoint",
                        MN_EXIT_REQUEUE);
            if (nsteps) e = write_checkpoint(r);
            res->exit_status = MN_EXIT_REQUEUE;
            break;
        }
        double t0 = MPI_Wtime();
        e = mn_trainer_step(r->trainer, r->step, draw_batch, r, &st);
        if (e) break;
        double dt = MPI_Wtime() - t0;
        sum_step += dt, nsteps++;
        if (r->fault_rank >= 0 && fault_is(r, "head_mismatch") && r->step == r->fault_step) {
            for (int k = 1; k < p->nrows; k++)
                if (p->row[k].held) {
                    mn_model_params(m)[p->row[k].params.offset] += 1.0f;
                    mn_log_warn("MEDNET_FAULT: perturbed head %s after step %ld", p->row[k].name, r->step + 1);
                    break;
                }
        }
        if (c->consistency_every > 0 && (r->step + 1) % c->consistency_every == 0) {
            e = mn_parts_check_replicas(p, mn_model_params(m));
            if (e) break;
        }
        if ((r->step + 1) % c->log_every == 0 || r->step + 1 == c->steps) e = log_step(r, &st, dt, sum_step / nsteps, res);
        r->step++;
        res->steps_done = r->step;
        if (e) break;
        if (c->eval_every > 0 && r->step % c->eval_every == 0 && r->step < c->steps && c->eval_batches > 0) {
            e = evaluate(r, dice);
            if (!e) log_dice(r, "during training", dice);
            if (e) break;
        }
        if (c->ckpt_every > 0 && r->step % c->ckpt_every == 0 && r->step < c->steps) e = write_checkpoint(r);
    }
    if (!e && res->exit_status == 0) {
        if (nsteps > 0) e = write_checkpoint(r);
        if (!e && c->eval_batches > 0) {
            e = evaluate(r, dice);
            if (!e) {
                log_dice(r, "trained", dice);
                res->dice_after = dice[0];
            }
        }
        if (!e)
            mn_log_info("done: %ld steps in %.1f s; checkpoints in %s/, metrics in %s/metrics.jsonl", nsteps,
                        MPI_Wtime() - t_start, c->out, c->out);
    }
    mn_free(&st.loss);
    mn_free(&st.weight);
    mn_free(&dice);
    MN_CALL(e);
    return MN_OK;
}

static void run_destroy(run *r)
{
    mn_trainer_destroy(&r->trainer);
    mn_trace_close(&r->trace);
    mn_sampler_destroy(&r->sampler);
    mn_sampler_destroy(&r->eval_sampler);
    mn_shard_destroy(&r->shard);
    mn_shard_plan_destroy(&r->plan);
    mn_corpus_info_destroy(&r->info);
    mn_config_destroy(&r->config);
    mn_free(&r->x);
    mn_free(&r->labels);
    mn_free(&r->labels_small);
    mn_free(&r->ds);
    free(r->config_text);
    if (r->metrics) fclose(r->metrics);
    mn_outdir_unlock(&r->lock);
}

mn_err mn_pretrain_run(MPI_Comm comm, const char *path, char **overrides, int noverrides, int finetune,
                       mn_train_result *res)
{
    memset(res, 0, sizeof *res);
    res->first_loss = res->last_loss = res->dice_before = res->dice_after = NAN;
    /* Signals first: a SIGUSR1/SIGTERM during set-up is seen by the loop's first agreement. */
    MN_CALL(mn_signals_install());
    run r;
    memset(&r, 0, sizeof r);
    r.comm = comm;
    mn_err e = mn_mpi_report_if(MPI_Comm_rank(comm, &r.rank));
    if (!e) e = mn_mpi_report_if(MPI_Comm_size(comm, &r.size));
    fault_parse(&r);
    if (!e && fault_is(&r, "signal_setup")) raise(SIGUSR1);
    /* The launch check reads the same environment on every rank; agreeing makes a wrong launch an exit 1. */
    if (!e) e = mn_agree(comm, mn_dist_check_launch(comm));
    if (!e) e = mn_train_config_load(comm, path, overrides, noverrides, &r.config);
    /* The whole configuration, validated before any heavy work (every rank parses the same text). */
    if (!e) e = mn_agree(comm, r.rank == 0 ? read_cfg(r.config, &r.cfg) : MN_OK); /* rank 0 reports */
    if (!e) e = mn_agree(comm, r.rank != 0 ? read_cfg(r.config, &r.cfg) : MN_OK);
    if (!e) e = mn_agree(comm, mn_config_dump(r.config, &r.config_text));
    if (!e) e = mn_agree(comm, mn_threads_init(mn_threads_resolve((int)r.cfg.threads)));
    if (!e) {
        mn_log_info("mednet %s %s: %d ranks x %d threads, BLIS kernels %s (%s)", MN_VERSION,
                    finetune ? "finetune" : "pretrain", r.size, mn_threads_count(), mn_blis_arch(),
                    mn_blis_arch_reason());
        e = setup(&r);
    }
    if (!e) e = train_loop(&r, res);
    mn_signals_restore();
    run_destroy(&r);
    MN_CALL(e);
    return MN_OK;
}
