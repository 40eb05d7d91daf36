/* setup.c: a run's set-up (src/train/train_impl.h), in the order pretrain.c's design note gives: every step is
 * either local work agreed over the world (a failure on one rank ends every rank with exit status 1) or a
 * collective whose own errors are agreed (corpus open, shard load, trainer creation). */
#include "train/train_impl.h"

#include "mednet/ckpt.h"
#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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
    if (r->resume_path[0]) MN_CALL(mn_run_check_ckpt_model(r->resume_path, "the checkpoint to resume from,", c));
    if (!r->resume_path[0] && *c->init_encoder)
        MN_CALL(mn_run_check_ckpt_model(c->init_encoder, "train.init_encoder =", c));
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
    MN_CALL(mn_eval_create(r->shard, &c->sampler, r->rank, (int)c->batch, &r->eval));
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

mn_err mn_run_setup(run *r)
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
    /* What inference must repeat of prep for each dataset of the run: written into every checkpoint. */
    mn_err pe = MN_OK;
    for (int d = 0; d < r->info->num_datasets && !pe; d++) {
        if (r->info->datasets[d].role != (mn_role)c->role) continue;
        mn_prep_record rec;
        mn_prep_record_of(r->info, d, &rec);
        pe = mn_prep_record_append(&rec, &r->prep_text);
    }
    MN_CALL(mn_agree(r->comm, pe));
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
