/* pretrain.c: the distributed multi-dataset pre-training loop (mednet/train.h).
 *
 * Data parallelism as DESIGN.md's contract says: every rank holds the encoder, the heads of the datasets of its
 * shard, and its shard of the corpus in memory.  Per step:
 *
 *   for each of `micro_batches` micro-batches: draw `batch` crops (sampler: deterministic from seed, rank and
 *     the global micro-batch index), forward the encoder over all of them and each held head over its dataset's
 *     contiguous sub-batch, loss per head, backward (gradients accumulate; each head's loss gradient is scaled by
 *     its sample count so that the sums below become means);
 *   encoder: during the backward pass of the LAST micro-batch the model reports finished gradient ranges to the
 *     bucketed reducer (mednet/dist.h), which starts an MPI_Iallreduce per 25 MiB bucket and is progressed between
 *     layers; finish divides by the global sample count;
 *   heads: one all-reduce per held dataset over the ranks that hold it, divided by the dataset's global sample
 *     count; a head with no sample this step is not updated at all;
 *   NaN/Inf in any loss or gradient: all ranks agree (MAX) and skip the update (or abort, per config), and the
 *     batch-norm buffers are restored to their state before the step;
 *   optimiser update on identical inputs on every replica; batch-norm running statistics averaged over the holders
 *     (world for the encoder, the dataset communicator for a head) so the replicas stay bitwise identical.
 *
 * Checkpoints (mednet/ckpt.h) are written by rank 0; each head is sent to rank 0 by the lowest rank that holds it.
 * On resume, rank 0 reads the encoder and broadcasts it over the world; the root of each dataset communicator reads
 * that head and broadcasts it to the other holders.  The sampler has no state besides (seed, rank, step), so the
 * step counter is all the RNG state there is, and a resumed run continues bit for bit.
 *
 * Rejected: all-gathering every head on every rank (memory grows with the number of datasets, against the contract
 * that a rank not holding d does not hold head d), and a communication thread for progress (MPI_THREAD_MULTIPLE is
 * not granted everywhere; testing between layers gives the overlap measured by bench_allreduce/bench_step).
 */
#include "mednet/train.h"

#include "mednet/ckpt.h"
#include "mednet/config.h"
#include "mednet/corpus.h"
#include "mednet/dist.h"
#include "mednet/layers.h"
#include "mednet/loss.h"
#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/optim.h"
#include "mednet/sampler.h"
#include "mednet/signals.h"
#include "mednet/threads.h"

#include <errno.h>
#include <math.h>
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
    int depth, shortcut, head_kind, loss_full_size;
    double ce_weight, dice_weight;
    long model_seed;
    mn_sampler_config sampler;
    long steps, batch, micro, threads, ckpt_every, keep, consistency_every, log_every, eval_every, eval_batches;
    double bucket_mb;
    int nan_abort, trace, resume, sync_bn;
    const char *out;
    mn_optim_config optim;
} run_cfg;

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
    MN_CHECK(len >= 0, MN_ERR_IO, "cannot read config file '%s' (see rank 0's message)", path);
    if (rank != 0) MN_CALL(mn_malloc((size_t)len + 1, "config text", (void **)&text));
    mn_err be = mn_mpi_report_if(MPI_Bcast(text, (int)len + 1, MPI_CHAR, 0, comm));
    if (be) {
        free(text);
        MN_CALL(be);
    }
    e = mn_config_parse(text, path, out);
    free(text);
    MN_CALL(e);
    for (int i = 0; i < noverrides; i++) {
        e = mn_config_override(*out, overrides[i]);
        if (e) {
            mn_config_destroy(out);
            MN_CALL(e);
        }
    }
    return MN_OK;
}

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

    long v;
    MN_CALL(mn_config_int(c, "model", "depth", 10, 10, 200, &v));
    r->depth = (int)v;
    static const char *const shortcuts[] = {"default", "A", "B", NULL};
    static const char *const heads[] = {"seg", "branch", NULL};
    MN_CALL(mn_config_choice(c, "model", "shortcut", "default", shortcuts, &r->shortcut));
    MN_CALL(mn_config_choice(c, "model", "head", "seg", heads, &r->head_kind));
    MN_CALL(mn_config_bool(c, "model", "loss_full_size", 0, &r->loss_full_size));
    MN_CALL(mn_config_double(c, "model", "ce_weight", 1.0, 0, 1e3, &r->ce_weight));
    MN_CALL(mn_config_double(c, "model", "dice_weight", 0.0, 0, 1e3, &r->dice_weight));
    MN_CALL(mn_config_int(c, "model", "seed", 1, 0, 1L << 40, &r->model_seed));

    MN_CALL(mn_sampler_config_read(c, "sampler", &r->sampler));

    MN_CALL(mn_config_int(c, "train", "steps", 100, 0, 1L << 40, &r->steps));
    MN_CALL(mn_config_int(c, "train", "batch", 2, 1, 4096, &r->batch));
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

    mn_optim_config *o = &r->optim;
    *o = mn_optim_defaults();
    static const char *const kinds[] = {"sgd", "adam", NULL};
    static const char *const scheds[] = {"constant", "exponential", "cosine", NULL};
    int k;
    MN_CALL(mn_config_choice(c, "optim", "kind", "sgd", kinds, &k));
    o->kind = (mn_optim_kind)k;
    MN_CALL(mn_config_double(c, "optim", "lr", o->lr, 1e-12, 1e3, &o->lr));
    MN_CALL(mn_config_double(c, "optim", "head_lr_mult", 1.0, 0, 1e6, &o->head_lr_mult));
    MN_CALL(mn_config_double(c, "optim", "momentum", o->momentum, 0, 0.999999, &o->momentum));
    MN_CALL(mn_config_bool(c, "optim", "nesterov", 0, &o->nesterov));
    MN_CALL(mn_config_double(c, "optim", "weight_decay", o->weight_decay, 0, 1, &o->weight_decay));
    MN_CALL(mn_config_double(c, "optim", "beta1", o->beta1, 0, 0.999999, &o->beta1));
    MN_CALL(mn_config_double(c, "optim", "beta2", o->beta2, 0, 0.999999999, &o->beta2));
    MN_CALL(mn_config_double(c, "optim", "eps", o->eps, 1e-30, 1, &o->eps));
    MN_CALL(mn_config_choice(c, "optim", "schedule", "exponential", scheds, &k));
    o->schedule = (mn_sched_kind)k;
    MN_CALL(mn_config_double(c, "optim", "gamma", o->gamma, 1e-9, 1, &o->gamma));
    MN_CALL(mn_config_int(c, "optim", "decay_steps", o->decay_steps, 1, 1L << 40, &o->decay_steps));
    MN_CALL(mn_config_int(c, "optim", "warmup_steps", 0, 0, 1L << 40, &o->warmup_steps));
    MN_CALL(mn_config_double(c, "optim", "min_lr", 0, 0, 1e3, &o->min_lr));
    o->total_steps = r->steps > 0 ? r->steps : 1;
    MN_CALL(mn_config_check_unused(c));
    return MN_OK;
}

/* ---- the run state ------------------------------------------------------------------------------------------ */

typedef struct run {
    run_cfg cfg;
    mn_config *config;
    MPI_Comm comm;
    int rank, size;
    mn_corpus_info *info;
    mn_shard_plan *plan;
    mn_shard *shard;
    mn_sampler *sampler, *eval_sampler;
    int npd;            /* number of pre-training datasets */
    int *pd;            /* [npd] corpus index of the k-th pre-training dataset */
    int *kidx;          /* [num_datasets] k of a corpus dataset, -1 if not pre-training */
    int *hidx;          /* [num_datasets] head index in the model, -1 if not held */
    mn_dist *dist;      /* datasets indexed by k */
    mn_model *model;
    mn_optim *optim;
    mn_reducer *reducer;
    mn_trace *trace;
    mn_err hook_err;
    double bn_buf[MN_MODEL_BN_SYNC_MAX + 1]; /* SyncBN: sums and count, all-reduced together */
    long step;          /* the next step to run */
    int64_t enc_updates;
    int64_t *head_updates; /* [nheads] */
    double *head_total;    /* [npd] global sample count of each dataset in the current step */
    size_t vox;         /* voxels of one crop */
    float *x, *bn_saved;
    int32_t *labels, *labels_small;
    int *ds;
    FILE *metrics;
    char *config_text;
} run;

static void hook_ready(void *ctx, size_t off, size_t count)
{
    run *r = ctx;
    if (!r->hook_err) r->hook_err = mn_reducer_ready(r->reducer, off, count);
}

/* SyncBN: one all-reduce of a layer's per-channel sums and voxel count over the world (see mn_model_set_bn_sync). */
static mn_err bn_sync(void *ctx, double *sums, int n, double *count)
{
    run *r = ctx;
    memcpy(r->bn_buf, sums, sizeof(double) * (size_t)n);
    r->bn_buf[n] = *count;
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, r->bn_buf, n + 1, MPI_DOUBLE, MPI_SUM, r->dist->world));
    memcpy(sums, r->bn_buf, sizeof(double) * (size_t)n);
    *count = r->bn_buf[n];
    return MN_OK;
}

static void hook_progress(void *ctx)
{
    run *r = ctx;
    if (!r->hook_err) r->hook_err = mn_reducer_progress(r->reducer);
}

/* Group the samples of one draw into head batches (samples are sorted by dataset). */
static int head_batches(const run *r, const int *ds, int n, mn_head_batch *hb)
{
    int nhb = 0;
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && ds[j] == ds[i]) j++;
        hb[nhb].head = r->hidx[ds[i]];
        hb[nhb].offset = i;
        hb[nhb].count = j - i;
        nhb++;
        i = j;
    }
    return nhb;
}

static mn_err mkdir_p1(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        MN_FAIL(MN_ERR_IO, "cannot create output directory '%s': %s", dir, strerror(errno));
    return MN_OK;
}

/* ---- setup -------------------------------------------------------------------------------------------------- */

static mn_err setup_data(run *r, mn_train_result *res)
{
    const run_cfg *c = &r->cfg;
    MN_CALL(mn_corpus_open(r->comm, c->corpus, &r->info));
    MN_CALL(mn_shard_assign(r->info, r->size, (uint64_t)c->shard_seed, (mn_role)c->role, &r->plan));
    if (r->rank == 0) {
        mn_corpus_print_summary(r->info, stdout);
        mn_shard_plan_print(r->plan, r->info, stdout);
        fflush(stdout);
    }
    int nd = r->info->num_datasets;
    MN_CALL(mn_calloc(sizeof(int) * (size_t)nd, "dataset map", (void **)&r->pd));
    MN_CALL(mn_malloc(sizeof(int) * (size_t)nd, "dataset map", (void **)&r->kidx));
    MN_CALL(mn_malloc(sizeof(int) * (size_t)nd, "head map", (void **)&r->hidx));
    for (int d = 0; d < nd; d++) {
        r->kidx[d] = r->hidx[d] = -1;
        if (r->info->datasets[d].role == (mn_role)c->role) {
            r->kidx[d] = r->npd;
            r->pd[r->npd++] = d;
        }
    }
    /* From here on an error may be seen by some ranks only. */
    res->agreed = 0;
    MN_CALL(mn_shard_load(r->comm, r->info, r->plan, &r->shard));
    MN_CALL(mn_sampler_create(r->shard, &c->sampler, r->rank, &r->sampler));
    mn_sampler_config ecfg = c->sampler;
    ecfg.seed = c->sampler.seed + 0x5eedULL; /* evaluation crops: fixed, disjoint from the training stream */
    ecfg.jitter_scale = ecfg.jitter_shift = 0;
    MN_CALL(mn_sampler_create(r->shard, &ecfg, r->rank, &r->eval_sampler));

    int *holders = NULL;
    MN_CALL(mn_calloc(sizeof(int) * (size_t)(r->npd ? r->npd : 1) * (size_t)r->size, "holder table",
                      (void **)&holders));
    for (int k = 0; k < r->npd; k++)
        for (int p = 0; p < r->size; p++) holders[(size_t)k * r->size + p] = mn_shard_plan_holds(r->plan, p, r->pd[k]);
    mn_err e = mn_dist_create(r->comm, r->npd, holders, &r->dist);
    mn_free(&holders);
    MN_CALL(e);
    return MN_OK;
}

static mn_err setup_model(run *r)
{
    const run_cfg *c = &r->cfg;
    mn_head_spec specs[MN_MODEL_MAX_HEADS];
    int nheads = 0;
    for (int k = 0; k < r->npd; k++) {
        int d = r->pd[k];
        if (!mn_dist_holds(r->dist, k)) continue;
        MN_CHECK(nheads < MN_MODEL_MAX_HEADS, MN_ERR_ARG, "a rank can hold at most %d heads", MN_MODEL_MAX_HEADS);
        r->hidx[d] = nheads;
        specs[nheads].id = d;
        specs[nheads].classes = r->info->datasets[d].num_classes;
        nheads++;
    }
    mn_model_config mc = mn_model_config_default();
    mc.depth = c->depth;
    mc.shortcut = c->shortcut == 0 ? MN_SHORTCUT_DEFAULT : c->shortcut == 1 ? MN_SHORTCUT_A : MN_SHORTCUT_B;
    mc.head_kind = c->head_kind == 0 ? MN_HEAD_SEG : MN_HEAD_BRANCH;
    mc.nheads = nheads;
    mc.heads = specs;
    mc.prefix_heads = 1;
    mc.input = (mn_shape){(int)c->batch, 1, c->sampler.crop[0], c->sampler.crop[1], c->sampler.crop[2]};
    mc.loss_full_size = c->loss_full_size;
    mc.loss.ce_weight = (float)c->ce_weight;
    mc.loss.dice_weight = (float)c->dice_weight;
    mc.loss.ignore_label = MN_LABEL_IGNORE;
    mc.seed = (uint64_t)c->model_seed;
    MN_CALL(mn_model_create(&mc, &r->model));
    if (c->sync_bn) mn_model_set_bn_sync(r->model, bn_sync, r);
    mn_model_memory mem = mn_model_memory_plan(r->model);
    mn_log_info("model: resnet%d, %s head, %zu parameters on rank 0 (encoder %zu), %.1f MiB planned per rank "
                "(activations %.1f MiB)",
                c->depth, c->head_kind == 0 ? "conv_seg" : "branch", mn_model_num_params(r->model),
                mn_model_param_range(r->model, -1).count, mem.total_bytes / 1048576.0,
                mem.activation_bytes / 1048576.0);

    MN_CALL(mn_optim_create(&c->optim, mn_model_num_params(r->model), &r->optim));
    MN_CALL(mn_calloc(sizeof(int64_t) * (size_t)(nheads ? nheads : 1), "head update counts",
                      (void **)&r->head_updates));
    MN_CALL(mn_calloc(sizeof(double) * (size_t)(r->npd ? r->npd : 1), "head totals", (void **)&r->head_total));

    /* Every replica starts from rank 0's encoder and each head root's head. */
    mn_range *hr = NULL;
    if (r->npd > 0) {
        MN_CALL(mn_calloc(sizeof(mn_range) * (size_t)r->npd, "head ranges", (void **)&hr));
        for (int k = 0; k < r->npd; k++)
            if (r->hidx[r->pd[k]] >= 0) hr[k] = mn_model_param_range(r->model, r->hidx[r->pd[k]]);
    }
    mn_err e = mn_dist_bcast_params(r->dist, mn_model_params(r->model), mn_model_param_range(r->model, -1), hr);
    mn_free(&hr);
    MN_CALL(e);

    r->vox = (size_t)c->sampler.crop[0] * c->sampler.crop[1] * c->sampler.crop[2];
    MN_CALL(mn_malloc(sizeof(float) * r->vox * (size_t)c->batch, "input batch", (void **)&r->x));
    MN_CALL(mn_malloc(sizeof(int32_t) * r->vox * (size_t)c->batch, "label batch", (void **)&r->labels));
    MN_CALL(mn_malloc(sizeof(int32_t) * r->vox * (size_t)c->batch, "label batch (logit size)",
                      (void **)&r->labels_small));
    MN_CALL(mn_malloc(sizeof(int) * (size_t)c->batch, "dataset ids", (void **)&r->ds));
    MN_CALL(mn_malloc(sizeof(float) * (mn_model_num_bn_buffers(r->model) + 1), "saved BN buffers",
                      (void **)&r->bn_saved));
    if (c->trace) {
        char path[1200];
        snprintf(path, sizeof path, "%s/trace-rank%d.json", c->out, r->rank);
        MN_CALL(mn_trace_open(path, r->rank, &r->trace));
    }
    MN_CALL(mn_reducer_create(r->dist->world, mn_model_grads(r->model), mn_model_param_range(r->model, -1),
                              (size_t)(c->bucket_mb * 1048576.0), r->trace, &r->reducer));
    return MN_OK;
}

/* ---- checkpoints -------------------------------------------------------------------------------------------- */

enum { TAG_HEAD = 7100 };

/* The arrays of one part (encoder: part -1, or a held head) of this rank's model. */
static int part_arrays(run *r, int part, const char *prefix, char names[][128], mn_ckpt_array *a, int64_t *updates)
{
    mn_range pr = mn_model_param_range(r->model, part), br = mn_model_bn_range(r->model, part);
    int n = 0;
    snprintf(names[n], 128, "%s/params", prefix);
    a[n] = (mn_ckpt_array){names[n], MN_CKPT_F32, mn_model_params(r->model) + pr.offset, pr.count};
    n++;
    snprintf(names[n], 128, "%s/bn", prefix);
    a[n] = (mn_ckpt_array){names[n], MN_CKPT_F32, mn_model_bn_buffers(r->model) + br.offset, br.count};
    n++;
    for (int i = 0; i < mn_optim_state_count(r->optim); i++) {
        size_t len;
        float *s = mn_optim_state(r->optim, i, &len);
        snprintf(names[n], 128, "%s/optim%d", prefix, i);
        a[n] = (mn_ckpt_array){names[n], MN_CKPT_F32, s + pr.offset, pr.count};
        n++;
    }
    snprintf(names[n], 128, "%s/updates", prefix);
    a[n] = (mn_ckpt_array){names[n], MN_CKPT_I64, updates, 1};
    n++;
    return n;
}

/* Write a checkpoint of the state after `step` completed steps.  Collective on the world: each head's root sends
 * its head to rank 0, which writes the file. */
static mn_err write_checkpoint(run *r)
{
    int nparts = 1 + r->npd, per = 3 + mn_optim_state_count(r->optim);
    char(*names)[128] = NULL;
    mn_ckpt_array *arrays = NULL;
    float **recv = NULL;
    int64_t *upd = NULL;
    mn_err e = MN_OK;
    MN_CALL(mn_calloc(sizeof(*names) * (size_t)nparts * per, "checkpoint names", (void **)&names));
    e = mn_calloc(sizeof *arrays * (size_t)nparts * per, "checkpoint arrays", (void **)&arrays);
    if (!e) e = mn_calloc(sizeof *recv * (size_t)nparts * per, "checkpoint buffers", (void **)&recv);
    if (!e) e = mn_calloc(sizeof *upd * (size_t)nparts, "checkpoint counters", (void **)&upd);
    int na = 0;
    if (!e) {
        upd[0] = r->enc_updates;
        na = part_arrays(r, -1, "encoder", names, arrays, &upd[0]);
    }
    /* Heads: the root of each dataset sends params, bn, optimiser state and its update count to rank 0. */
    for (int k = 0; k < r->npd && !e; k++) {
        int d = r->pd[k], root = mn_dist_root(r->dist, k), h = r->hidx[d];
        char prefix[96];
        snprintf(prefix, sizeof prefix, "heads/%s", r->info->datasets[d].name);
        if (r->rank == root && root == 0) {
            upd[1 + k] = r->head_updates[h];
            na += part_arrays(r, h, prefix, names + na, arrays + na, &upd[1 + k]);
        } else if (r->rank == root) {
            mn_ckpt_array a[8];
            char nm[8][128];
            int64_t u = r->head_updates[h];
            int n = part_arrays(r, h, prefix, nm, a, &u);
            for (int i = 0; i < n && !e; i++) {
                long cnt = (long)a[i].count;
                e = mn_mpi_report_if(MPI_Send(&cnt, 1, MPI_LONG, 0, TAG_HEAD, r->dist->world));
                if (!e)
                    e = mn_mpi_report_if(MPI_Send(a[i].data, (int)a[i].count,
                                                  a[i].type == MN_CKPT_F32 ? MPI_FLOAT : MPI_INT64_T, 0, TAG_HEAD,
                                                  r->dist->world));
            }
        } else if (r->rank == 0) {
            mn_ckpt_array a[8];
            char nm[8][128];
            int n = 0;
            /* Same names and order as part_arrays, sizes from the sender. */
            const char *suffix[8] = {"params", "bn", "optim0", "optim1", NULL, NULL, NULL, NULL};
            int nopt = mn_optim_state_count(r->optim);
            for (int i = 0; i < 2 + nopt; i++) {
                snprintf(nm[n], 128, "%s/%s", prefix, suffix[i]);
                a[n].type = MN_CKPT_F32;
                n++;
            }
            snprintf(nm[n], 128, "%s/updates", prefix);
            a[n].type = MN_CKPT_I64;
            n++;
            for (int i = 0; i < n && !e; i++) {
                long cnt = 0;
                e = mn_mpi_report_if(MPI_Recv(&cnt, 1, MPI_LONG, root, TAG_HEAD, r->dist->world, MPI_STATUS_IGNORE));
                if (e) break;
                size_t bytes = (size_t)cnt * (a[i].type == MN_CKPT_F32 ? sizeof(float) : sizeof(int64_t));
                int slot = na + i;
                e = mn_malloc(bytes, "received head", (void **)&recv[slot]);
                if (!e)
                    e = mn_mpi_report_if(MPI_Recv(recv[slot], (int)cnt,
                                                  a[i].type == MN_CKPT_F32 ? MPI_FLOAT : MPI_INT64_T, root, TAG_HEAD,
                                                  r->dist->world, MPI_STATUS_IGNORE));
                memcpy(names[slot], nm[i], 128);
                arrays[slot] = (mn_ckpt_array){names[slot], a[i].type, recv[slot], (size_t)cnt};
            }
            na += n;
        }
    }
    if (!e && r->rank == 0) {
        char corpus_sum[32], nranks[16], sseed[32], step[32];
        snprintf(corpus_sum, sizeof corpus_sum, "%08x", (unsigned)r->info->checksum);
        snprintf(nranks, sizeof nranks, "%d", r->size);
        snprintf(sseed, sizeof sseed, "%llu", (unsigned long long)r->cfg.sampler.seed);
        snprintf(step, sizeof step, "%ld", r->step);
        mn_ckpt_attr attrs[] = {{"config", r->config_text},
                                {"corpus_checksum", corpus_sum},
                                {"corpus_path", r->cfg.corpus},
                                {"nranks", nranks},
                                {"sampler_seed", sseed},
                                {"steps_done", step}};
        char path[1400];
        e = mn_ckpt_write(r->cfg.out, r->step, arrays, na, attrs, (int)(sizeof attrs / sizeof attrs[0]),
                          (int)r->cfg.keep, path, sizeof path);
        if (!e) mn_log_info("checkpoint: %s (step %ld)", path, r->step);
    }
    for (int i = 0; i < nparts * per && recv; i++) mn_free(&recv[i]);
    mn_free(&recv);
    mn_free(&upd);
    mn_free(&arrays);
    mn_free(&names);
    MN_CALL(e);
    /* Nobody continues before the checkpoint is on disk: a signal-triggered exit must not race the write. */
    MN_MPI(MPI_Barrier(r->dist->world));
    return MN_OK;
}

/* Read one part (encoder or a held head) from an open checkpoint into this rank's model. */
static mn_err read_part(run *r, mn_ckpt *ck, int part, const char *prefix, int64_t *updates)
{
    mn_ckpt_array a[8];
    char nm[8][128];
    int n = part_arrays(r, part, prefix, nm, a, updates);
    MN_CALL(mn_ckpt_read(ck, a, n));
    return MN_OK;
}

/* Broadcast one part from `root` over comm. */
static mn_err bcast_part(run *r, MPI_Comm comm, int root, int part, int64_t *updates)
{
    mn_range pr = mn_model_param_range(r->model, part), br = mn_model_bn_range(r->model, part);
    MN_CALL(mn_dist_bcast_floats(comm, mn_model_params(r->model) + pr.offset, pr.count, root));
    MN_CALL(mn_dist_bcast_floats(comm, mn_model_bn_buffers(r->model) + br.offset, br.count, root));
    for (int i = 0; i < mn_optim_state_count(r->optim); i++) {
        size_t len;
        float *s = mn_optim_state(r->optim, i, &len);
        MN_CALL(mn_dist_bcast_floats(comm, s + pr.offset, pr.count, root));
    }
    MN_MPI(MPI_Bcast(updates, 1, MPI_INT64_T, root, comm));
    return MN_OK;
}

/* Resume from the newest checkpoint of the output directory, if any.  Collective on the world. */
static mn_err resume(run *r)
{
    char path[1400] = "";
    int found = 0;
    long step = 0;
    mn_err e = MN_OK;
    if (r->rank == 0) e = mn_ckpt_latest(r->cfg.out, path, sizeof path, &found);
    MN_CALL(e);
    MN_MPI(MPI_Bcast(&found, 1, MPI_INT, 0, r->dist->world));
    if (!found && *r->cfg.init_encoder) {
        /* Fine-tuning: a fresh run whose encoder (parameters and BN statistics) comes from a pre-training
         * checkpoint; heads, optimiser state and step start afresh. */
        if (r->rank == 0) {
            mn_ckpt *ck = NULL;
            MN_CALL(mn_ckpt_open(r->cfg.init_encoder, &ck));
            mn_range pr = mn_model_param_range(r->model, -1), br = mn_model_bn_range(r->model, -1);
            mn_ckpt_array a[2] = {{"encoder/params", MN_CKPT_F32, mn_model_params(r->model) + pr.offset, pr.count},
                                  {"encoder/bn", MN_CKPT_F32, mn_model_bn_buffers(r->model) + br.offset, br.count}};
            e = mn_ckpt_read(ck, a, 2);
            mn_ckpt_close(&ck);
            MN_CALL(e);
        }
        mn_range pr = mn_model_param_range(r->model, -1), br = mn_model_bn_range(r->model, -1);
        MN_CALL(mn_dist_bcast_floats(r->dist->world, mn_model_params(r->model) + pr.offset, pr.count, 0));
        MN_CALL(mn_dist_bcast_floats(r->dist->world, mn_model_bn_buffers(r->model) + br.offset, br.count, 0));
        mn_log_info("encoder initialised from %s", r->cfg.init_encoder);
        return MN_OK;
    }
    if (!found) return MN_OK;
    MN_MPI(MPI_Bcast(path, (int)sizeof path, MPI_CHAR, 0, r->dist->world));

    /* Rank 0: the encoder, the step, and the identity checks. */
    if (r->rank == 0) {
        mn_ckpt *ck = NULL;
        MN_CALL(mn_ckpt_open(path, &ck));
        char *sum = NULL, *np = NULL;
        e = mn_ckpt_attr_get(ck, "corpus_checksum", &sum);
        if (!e) e = mn_ckpt_attr_get(ck, "nranks", &np);
        char want[32];
        snprintf(want, sizeof want, "%08x", (unsigned)r->info->checksum);
        if (!e && strcmp(sum, want) != 0)
            e = mn_error_report(MN_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                "checkpoint %s was written for corpus %s, but %s is corpus %s\n"
                                "---> HINT: use another train.out_dir, or the corpus it was trained on",
                                path, sum, r->cfg.corpus, want);
        if (!e && atoi(np) != r->size)
            mn_log_warn("resuming %s written by %s ranks on %d ranks: encoder and heads are reloaded and shards "
                        "re-assigned, so the run does not continue bit for bit",
                        path, np, r->size);
        if (!e) step = (long)mn_ckpt_step(ck);
        if (!e) e = read_part(r, ck, -1, "encoder", &r->enc_updates);
        mn_free(&sum);
        mn_free(&np);
        mn_ckpt_close(&ck);
        MN_CALL(e);
    }
    MN_MPI(MPI_Bcast(&step, 1, MPI_LONG, 0, r->dist->world));
    MN_CALL(bcast_part(r, r->dist->world, 0, -1, &r->enc_updates));
    /* Each head: its root reads it, the other holders receive it. */
    for (int k = 0; k < r->npd; k++) {
        int d = r->pd[k], h = r->hidx[d];
        if (h < 0) continue;
        MPI_Comm dc = r->dist->dcomm[k];
        int drank = 0;
        MN_MPI(MPI_Comm_rank(dc, &drank));
        if (drank == 0) {
            mn_ckpt *ck = NULL;
            char prefix[96];
            snprintf(prefix, sizeof prefix, "heads/%s", r->info->datasets[d].name);
            MN_CALL(mn_ckpt_open(path, &ck));
            e = read_part(r, ck, h, prefix, &r->head_updates[h]);
            mn_ckpt_close(&ck);
            MN_CALL(e);
        }
        MN_CALL(bcast_part(r, dc, 0, h, &r->head_updates[h]));
    }
    r->step = step;
    mn_log_info("resumed from %s at step %ld", path, step);
    return MN_OK;
}

/* ---- evaluation ----------------------------------------------------------------------------------------------- */

/* Mean foreground Dice per pre-training dataset over `eval_batches` fixed batches, with batch norm in eval mode.
 * dice[k] for k < npd (NaN if no holder evaluated it).  Collective on the world. */
static mn_err evaluate(run *r, double *dice)
{
    int n = (int)r->cfg.batch;
    double *acc = NULL; /* [2*npd]: sum of Dice, count */
    MN_CALL(mn_calloc(sizeof(double) * 2 * (size_t)(r->npd ? r->npd : 1), "eval sums", (void **)&acc));
    mn_model_set_training(r->model, 0);
    mn_model_set_hooks(r->model, NULL, NULL, NULL);
    mn_err e = MN_OK;
    mn_head_batch hb[MN_MODEL_MAX_HEADS];
    for (long b = 0; b < r->cfg.eval_batches && !e; b++) {
        e = mn_sampler_next(r->eval_sampler, b, n, r->x, r->labels, r->ds);
        int nhb = e ? 0 : head_batches(r, r->ds, n, hb);
        if (!e) e = mn_model_forward(r->model, r->x, hb, nhb);
        for (int i = 0; i < nhb && !e; i++) {
            mn_shape ls;
            const float *logits = mn_model_logits(r->model, i, &ls);
            const int32_t *lab = r->labels + (size_t)hb[i].offset * r->vox;
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
            int k = r->kidx[r->ds[hb[i].offset]];
            if (cnt) acc[2 * k] += s / cnt, acc[2 * k + 1] += 1;
        }
    }
    mn_model_set_training(r->model, 1);
    if (!e) e = mn_mpi_report_if(MPI_Allreduce(MPI_IN_PLACE, acc, 2 * r->npd, MPI_DOUBLE, MPI_SUM, r->dist->world));
    for (int k = 0; k < r->npd && !e; k++) dice[k] = acc[2 * k + 1] > 0 ? acc[2 * k] / acc[2 * k + 1] : NAN;
    mn_free(&acc);
    MN_CALL(e);
    return MN_OK;
}

static double mean_finite(const double *v, int n)
{
    double s = 0;
    int c = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], c++;
    return c ? s / c : NAN;
}

static void log_dice(run *r, const char *when, const double *dice)
{
    if (r->rank != 0) return;
    char line[2048];
    int o = snprintf(line, sizeof line, "eval (%s, step %ld): mean foreground Dice %.4f [", when, r->step,
                     mean_finite(dice, r->npd));
    for (int k = 0; k < r->npd && o < (int)sizeof line - 80; k++)
        o += snprintf(line + o, sizeof line - o, "%s%s %.4f", k ? ", " : "", r->info->datasets[r->pd[k]].name, dice[k]);
    snprintf(line + o, sizeof line - o, "]");
    mn_log_info("%s", line);
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %ld, \"eval\": \"%s\", \"dice\": {", r->step, when);
        for (int k = 0; k < r->npd; k++)
            fprintf(r->metrics, "%s\"%s\": %.6g", k ? ", " : "", r->info->datasets[r->pd[k]].name,
                    isfinite(dice[k]) ? dice[k] : -1.0);
        fprintf(r->metrics, "}, \"mean_dice\": %.6g}\n", mean_finite(dice, r->npd));
        fflush(r->metrics);
    }
}

/* ---- one training step ---------------------------------------------------------------------------------------- */

typedef struct step_stats {
    double t_data, t_compute, t_comm, hidden;
    double *loss;   /* [2*npd]: loss * samples, samples (local, then reduced at log time) */
    int skipped;
} step_stats;

static int all_finite(const float *v, size_t n)
{
    int ok = 1;
#pragma omp parallel for reduction(&& : ok) schedule(static)
    for (size_t i = 0; i < n; i++) ok = ok && isfinite(v[i]);
    return ok;
}

static mn_err train_step(run *r, step_stats *st)
{
    const run_cfg *c = &r->cfg;
    mn_model *m = r->model;
    int n = (int)c->batch;
    double *cnt = st->loss; /* reuse: samples per dataset at odd slots */
    memset(st->loss, 0, sizeof(double) * 2 * (size_t)r->npd);
    st->t_data = st->t_compute = st->t_comm = 0;
    int bad = 0;
    memcpy(r->bn_saved, mn_model_bn_buffers(m), sizeof(float) * mn_model_num_bn_buffers(m));
    MN_CALL(mn_model_zero_grad(m));
    MN_CALL(mn_reducer_start(r->reducer, (double)n * (double)c->micro));
    mn_head_batch hb[MN_MODEL_MAX_HEADS];
    for (long mb = 0; mb < c->micro; mb++) {
        double t0 = MPI_Wtime();
        MN_CALL(mn_sampler_next(r->sampler, r->step * c->micro + mb, n, r->x, r->labels, r->ds));
        double t1 = MPI_Wtime();
        st->t_data += t1 - t0;
        mn_trace_event(r->trace, "data", "data", t0, t1 - t0, 0);
        int nhb = head_batches(r, r->ds, n, hb);
        int last = mb == c->micro - 1;
        mn_model_set_hooks(m, last ? hook_ready : NULL, last ? hook_progress : NULL, r);
        MN_CALL(mn_model_forward(m, r->x, hb, nhb));
        for (int i = 0; i < nhb; i++) {
            double l = 0;
            /* Non-finite logits are MN_ERR_NUMERIC from the loss: numerical trouble is state, not an error here.
             * That head batch then contributes no gradient, and the ranks agree below to skip the step. */
            mn_error_set_quiet(1);
            mn_err le = mn_model_loss(m, i, r->labels + (size_t)hb[i].offset * r->vox, (float)hb[i].count, &l);
            mn_error_set_quiet(0);
            if (le == MN_ERR_NUMERIC) {
                l = NAN;
            } else if (le) {
                MN_CALL(mn_model_loss(m, i, r->labels + (size_t)hb[i].offset * r->vox, (float)hb[i].count, &l));
            }
            int k = r->kidx[r->ds[hb[i].offset]];
            if (!isfinite(l)) bad = 1;
            st->loss[2 * k] += l * hb[i].count;
            cnt[2 * k + 1] += hb[i].count;
        }
        r->hook_err = MN_OK;
        MN_CALL(mn_model_backward(m));
        MN_CALL(r->hook_err);
        double t2 = MPI_Wtime();
        st->t_compute += t2 - t1;
        mn_trace_event(r->trace, "forward+backward", "compute", t1, t2 - t1, 0);
    }
    /* Encoder: wait for the buckets; heads: reduce over their holders. */
    double t3 = MPI_Wtime();
    mn_reducer_stats rs;
    MN_CALL(mn_reducer_finish(r->reducer, &rs));
    st->hidden = rs.hidden;
    double *total = r->head_total;
    memset(total, 0, sizeof(double) * (size_t)r->npd);
    mn_err e = MN_OK;
    for (int k = 0; k < r->npd && !e; k++) {
        int h = r->hidx[r->pd[k]];
        if (h < 0) continue;
        e = mn_dist_reduce_head(r->dist, k, mn_model_grads(m), mn_model_param_range(m, h), cnt[2 * k + 1], &total[k]);
    }
    /* NaN/Inf anywhere: every rank takes the same branch. */
    if (!e && !bad) bad = !all_finite(mn_model_grads(m), mn_model_num_params(m));
    int any_bad = 0;
    if (!e) e = mn_dist_agree_flag(r->dist->world, bad, &any_bad);
    st->skipped = any_bad;
    if (!e && any_bad) {
        if (c->nan_abort) {
            MN_FAIL(MN_ERR_NUMERIC, "non-finite loss or gradient at step %ld (train.nan_policy = abort)", r->step);
        }
        mn_log_info("warning: non-finite loss or gradient at step %ld: update skipped (train.nan_policy = skip)",
                    r->step);
        memcpy(mn_model_bn_buffers(m), r->bn_saved, sizeof(float) * mn_model_num_bn_buffers(m));
    }
    if (!e && !any_bad) {
        double lr = mn_optim_lr(&c->optim, r->step);
        mn_range er = mn_model_param_range(m, -1);
        e = mn_optim_update(r->optim, mn_model_params(m), mn_model_grads(m), er.offset, er.count, lr, ++r->enc_updates);
        for (int k = 0; k < r->npd && !e; k++) {
            int h = r->hidx[r->pd[k]];
            if (h < 0 || total[k] <= 0) continue; /* no sample of this dataset anywhere: head untouched */
            mn_range hr = mn_model_param_range(m, h);
            e = mn_optim_update(r->optim, mn_model_params(m), mn_model_grads(m), hr.offset, hr.count,
                                lr * c->optim.head_lr_mult, ++r->head_updates[h]);
        }
        /* Batch-norm running statistics: averaged over the holders so the replicas stay identical. */
        mn_range eb = mn_model_bn_range(m, -1);
        if (!e) e = mn_dist_average(r->dist->world, mn_model_bn_buffers(m) + eb.offset, eb.count);
        for (int k = 0; k < r->npd && !e; k++) {
            int h = r->hidx[r->pd[k]];
            if (h < 0) continue;
            mn_range hb2 = mn_model_bn_range(m, h);
            e = mn_dist_average(r->dist->dcomm[k], mn_model_bn_buffers(m) + hb2.offset, hb2.count);
        }
    }
    MN_CALL(e);
    double t4 = MPI_Wtime();
    st->t_comm = t4 - t3;
    mn_trace_event(r->trace, "reduce+update", "allreduce", t3, t4 - t3, 0);
    return MN_OK;
}

/* Replica consistency: the encoder over the world, each head over its holders.  Collective on the world. */
static mn_err check_replicas(run *r)
{
    mn_model *m = r->model;
    mn_range er = mn_model_param_range(m, -1);
    MN_CALL(mn_dist_check_replicas(r->dist->world, mn_model_params(m) + er.offset, er.count * sizeof(float),
                                   "encoder parameters", NULL));
    for (int k = 0; k < r->npd; k++) {
        int h = r->hidx[r->pd[k]];
        if (h < 0) continue;
        mn_range hr = mn_model_param_range(m, h);
        char what[128];
        snprintf(what, sizeof what, "head '%s' parameters", r->info->datasets[r->pd[k]].name);
        MN_CALL(mn_dist_check_replicas(r->dist->dcomm[k], mn_model_params(m) + hr.offset, hr.count * sizeof(float),
                                       what, NULL));
    }
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

/* Progress line on rank 0 and a JSON line in the metrics file.  Collective on the world (reduces the losses). */
static mn_err log_step(run *r, step_stats *st, double step_time, double avg_step, mn_train_result *res)
{
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, st->loss, 2 * r->npd, MPI_DOUBLE, MPI_SUM, r->dist->world));
    double times[3] = {st->t_compute, st->t_comm, st->t_data};
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, times, 3, MPI_DOUBLE, MPI_MAX, r->dist->world));
    if (r->rank != 0) return MN_OK;
    double sum = 0;
    int nl = 0;
    char heads[1500];
    int o = 0;
    heads[0] = 0;
    for (int k = 0; k < r->npd; k++) {
        if (st->loss[2 * k + 1] <= 0) continue;
        double l = st->loss[2 * k] / st->loss[2 * k + 1];
        sum += l, nl++;
        if (o < (int)sizeof heads - 64)
            o += snprintf(heads + o, sizeof heads - o, "%s%s %.4f", o ? " " : "", r->info->datasets[r->pd[k]].name, l);
    }
    double mean = nl ? sum / nl : NAN;
    if (res->steps_done == 0 || !isfinite(res->first_loss)) res->first_loss = mean;
    res->last_loss = mean;
    double lr = mn_optim_lr(&r->cfg.optim, r->step);
    double gbatch = (double)r->cfg.batch * r->cfg.micro * r->size;
    char eta[32];
    fmt_eta(avg_step * (double)(r->cfg.steps - r->step - 1), eta, sizeof eta);
    mn_log_info("step %ld/%ld  loss %.4f [%s]  lr %.2e  %.1f samples/s  compute %.3fs comm %.3fs (%.0f%% hidden) "
                "data %.3fs  ETA %s%s",
                r->step + 1, r->cfg.steps, mean, heads, lr, gbatch / step_time, times[0], times[1],
                100.0 * st->hidden, times[2], eta, st->skipped ? "  (skipped: non-finite)" : "");
    if (r->metrics) {
        fprintf(r->metrics, "{\"step\": %ld, \"loss\": %.6g, \"lr\": %.6g, \"samples_per_s\": %.4g, \"t_step\": %.4g, "
                            "\"t_compute\": %.4g, \"t_comm\": %.4g, \"t_data\": %.4g, \"hidden\": %.3f, \"skipped\": %d, "
                            "\"head_loss\": {",
                r->step + 1, isfinite(mean) ? mean : -1.0, lr, gbatch / step_time, step_time, times[0], times[1],
                times[2], st->hidden, st->skipped);
        int first = 1;
        for (int k = 0; k < r->npd; k++) {
            if (st->loss[2 * k + 1] <= 0) continue;
            fprintf(r->metrics, "%s\"%s\": %.6g", first ? "" : ", ", r->info->datasets[r->pd[k]].name,
                    st->loss[2 * k] / st->loss[2 * k + 1]);
            first = 0;
        }
        fprintf(r->metrics, "}}\n");
        fflush(r->metrics);
    }
    return MN_OK;
}

/* ---- the run -------------------------------------------------------------------------------------------------- */

static void run_destroy(run *r)
{
    mn_reducer_destroy(&r->reducer);
    mn_trace_close(&r->trace);
    mn_optim_destroy(&r->optim);
    mn_model_destroy(&r->model);
    if (r->dist) mn_dist_destroy(&r->dist);
    mn_sampler_destroy(&r->sampler);
    mn_sampler_destroy(&r->eval_sampler);
    mn_shard_destroy(&r->shard);
    mn_shard_plan_destroy(&r->plan);
    mn_corpus_info_destroy(&r->info);
    mn_config_destroy(&r->config);
    mn_free(&r->pd);
    mn_free(&r->kidx);
    mn_free(&r->hidx);
    mn_free(&r->head_updates);
    mn_free(&r->head_total);
    mn_free(&r->x);
    mn_free(&r->labels);
    mn_free(&r->labels_small);
    mn_free(&r->ds);
    mn_free(&r->bn_saved);
    free(r->config_text);
    if (r->metrics) fclose(r->metrics);
}

static mn_err train_loop(run *r, mn_train_result *res)
{
    const run_cfg *c = &r->cfg;
    step_stats st = {0};
    double *dice = NULL;
    MN_CALL(mn_calloc(sizeof(double) * 2 * (size_t)(r->npd ? r->npd : 1), "step losses", (void **)&st.loss));
    mn_err e = mn_calloc(sizeof(double) * (size_t)(r->npd ? r->npd : 1), "dice", (void **)&dice);
    if (!e && c->eval_batches > 0) {
        e = evaluate(r, dice);
        if (!e) {
            log_dice(r, r->step == 0 ? "untrained" : "resumed", dice);
            res->dice_before = mean_finite(dice, r->npd);
        }
    }
    double t_start = MPI_Wtime(), sum_step = 0;
    long nsteps = 0;
    while (!e && r->step < c->steps) {
        double t0 = MPI_Wtime();
        e = train_step(r, &st);
        if (e == MN_ERR_NUMERIC) res->agreed = 1; /* nan_policy = abort: every rank took that branch together */
        if (e) break;
        double dt = MPI_Wtime() - t0;
        sum_step += dt, nsteps++;
        if (c->consistency_every > 0 && (r->step + 1) % c->consistency_every == 0) {
            e = check_replicas(r);
            if (e) {
                res->agreed = 1; /* every rank saw the same gathered hashes */
                break;
            }
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
        /* A caught signal: agree, checkpoint, leave with the requeue status. */
        int sig = 0;
        e = mn_dist_agree_flag(r->dist->world, mn_signals_pending(), &sig);
        if (e) break;
        if (sig) {
            mn_log_info("caught %s: writing a checkpoint at step %ld and exiting for requeue (status %d)",
                        mn_signals_name(sig), r->step, MN_EXIT_REQUEUE);
            e = write_checkpoint(r);
            res->exit_status = MN_EXIT_REQUEUE;
            break;
        }
        if (c->ckpt_every > 0 && r->step % c->ckpt_every == 0 && r->step < c->steps) e = write_checkpoint(r);
    }
    if (!e && res->exit_status == 0) {
        if (nsteps > 0) e = write_checkpoint(r);
        if (!e && c->eval_batches > 0) {
            e = evaluate(r, dice);
            if (!e) {
                log_dice(r, "trained", dice);
                res->dice_after = mean_finite(dice, r->npd);
            }
        }
        if (!e)
            mn_log_info("done: %ld steps in %.1f s; checkpoints in %s/, metrics in %s/metrics.jsonl", nsteps,
                        MPI_Wtime() - t_start, c->out, c->out);
    }
    mn_free(&st.loss);
    mn_free(&dice);
    MN_CALL(e);
    return MN_OK;
}

mn_err mn_pretrain_run(MPI_Comm comm, const char *path, char **overrides, int noverrides, int finetune,
                       mn_train_result *res)
{
    memset(res, 0, sizeof *res);
    res->first_loss = res->last_loss = res->dice_before = res->dice_after = NAN;
    res->agreed = 1; /* until the shards are loaded, every rank fails alike */
    run r;
    memset(&r, 0, sizeof r);
    r.comm = comm;
    MN_MPI(MPI_Comm_rank(comm, &r.rank));
    MN_MPI(MPI_Comm_size(comm, &r.size));
    MN_CALL(mn_dist_check_launch(comm));
    MN_CALL(mn_train_config_load(comm, path, overrides, noverrides, &r.config));
    mn_err e = read_cfg(r.config, &r.cfg);
    if (!e) e = mn_config_dump(r.config, &r.config_text);
    if (!e) e = mn_threads_init(mn_threads_resolve((int)r.cfg.threads));
    if (!e) {
        mn_log_info("mednet %s %s: %d ranks x %d threads, BLIS kernels %s (%s)", MN_VERSION,
                    finetune ? "finetune" : "pretrain", r.size,
                    mn_threads_count(), mn_blis_arch(), mn_blis_arch_reason());
        if (r.rank == 0) e = mkdir_p1(r.cfg.out);
        e = mn_mpi_agree(comm, e);
    }
    if (!e) e = setup_data(&r, res);
    if (!e) e = setup_model(&r);
    if (!e && r.cfg.resume) e = resume(&r);
    if (!e && r.rank == 0) {
        char mpath[1200];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r.cfg.out);
        r.metrics = fopen(mpath, "a");
        if (!r.metrics) e = mn_error_report(MN_ERR_IO, __FILE__, __LINE__, __func__, "cannot open '%s': %s", mpath,
                                            strerror(errno));
    }
    if (!e) e = mn_signals_install();
    if (!e) e = train_loop(&r, res);
    mn_signals_restore();
    run_destroy(&r);
    MN_CALL(e);
    return MN_OK;
}
