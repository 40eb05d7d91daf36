/* setup.c: a run's set-up (src/train/train_impl.h), in the order pretrain.c's design note gives: every step is
 * either local work agreed over the world (a failure on one rank ends every rank with exit status 1) or a
 * collective whose own errors are agreed (corpus open, shard load, trainer creation). */
#include "train/train_impl.h"

#include "mednet/ckpt.h"
#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
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
        /* A checkpoint newer than `latest` is one whose writer died between its rename and the pointer update: it
         * is complete (renamed only after its fsync), but `latest` is the record of what the run finished, so it
         * stays the one to resume from; the newer file is replaced when the run reaches that step again. */
        long long newest = -1;
        MN_CALL(mn_ckpt_newest(c->out, &newest));
        const char *name = strrchr(r->resume_path, '/');
        long long at = found && name ? strtoll(name + 6, NULL, 10) : -1;
        if (newest > at)
            mn_log_warn("%s/ckpt-%lld.h5 is newer than %s/latest (%s): a checkpoint write was interrupted between "
                        "its rename and the update of 'latest'; resuming from %s as 'latest' says", c->out, newest,
                        c->out, found ? name + 1 : "absent", found ? r->resume_path : "nothing (a fresh start)");
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

/* corpus.datasets: the datasets of the run's role that it uses (the output of `mednet filter`).  With check = 1
 * (rank 0; agreed by the caller) every listed name must be a dataset of that role; with check = 0 the others are
 * marked MN_ROLE_EXCLUDED in this rank's corpus info (every rank, after the check).  Local work. */
static mn_err select_datasets(run *r, int check)
{
    const char *list = r->cfg.datasets;
    if (!*list) return MN_OK;
    mn_corpus_info *info = r->info;
    int nd = info->num_datasets;
    unsigned char *keep = NULL;
    MN_CALL(mn_calloc((size_t)nd + 1, "dataset selection", (void **)&keep));
    mn_err e = MN_OK;
    for (const char *p = list; *p && !e;) {
        while (*p == ',' || *p == ' ') p++;
        size_t n = strcspn(p, ", ");
        if (!n) break;
        int found = -1;
        for (int d = 0; d < nd; d++)
            if (strlen(info->datasets[d].name) == n && !strncmp(info->datasets[d].name, p, n)) found = d;
        if (check && (found < 0 || info->datasets[found].role != (mn_role)r->cfg.role))
            e = mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__,
                                "corpus.datasets names '%.*s', which is not a %s dataset of %s\n---> HINT: a run without "
                                "corpus.datasets prints the corpus summary: every dataset and its role", (int)n, p,
                                r->cfg.role == MN_ROLE_TARGET ? "target" : "pretrain", r->cfg.corpus);
        if (found >= 0) keep[found] = 1;
        p += n;
    }
    if (!e && !check)
        for (int d = 0; d < nd; d++)
            if (!keep[d] && info->datasets[d].role == (mn_role)r->cfg.role) info->datasets[d].role = MN_ROLE_EXCLUDED;
    mn_free(&keep);
    return e;
}

/* The shard reader, the I/O thread and the sampler over this rank's shard, with the importance weights of the
 * sampling rule.  Local work: no I/O yet (the reader opens the file at the first draw) and no MPI call. */
static mn_err setup_sampler(run *r)
{
    const run_cfg *c = &r->cfg;
    MN_CALL(mn_reader_create_file(r->info, r->plan, r->rank, (int64_t)(c->cache_mb * 1048576.0), &r->reader));
    MN_CALL(mn_prefetch_create(c->prefetch, (int)c->batch, c->sampler.crop, &r->pf));
    MN_CALL(mn_sampler_create_reader(r->reader, &c->sampler, r->rank, &r->sampler));
    int nv = mn_reader_num_volumes(r->reader);
    double *w = NULL;
    MN_CALL(mn_malloc(sizeof(double) * (size_t)nv, "sampling weights", (void **)&w));
    mn_err e = mn_sampler_weights(r->info, r->plan, r->rank, c->sampler.mixture, w);
    if (!e) e = mn_sampler_set_weights(r->sampler, w);
    mn_free(&w);
    MN_CALL(e);
    MN_CALL(mn_eval_create(r->reader, r->pf, &c->sampler, r->rank, (int)c->batch, &r->eval));
    return MN_OK;
}

/* Rank 0: what the cache bound means for the shards of every rank (from the plan and metadata alone). */
static void print_data_plan(const run *r)
{
    double lo = 1e300, hi = 0;
    int streaming = 0;
    for (int p = 0; p < r->plan->nranks; p++) {
        double b = 0;
        for (int i = r->plan->offset[p]; i < r->plan->offset[p + 1]; i++) {
            const int64_t *sh = r->info->volumes[r->plan->items[i].volume].shape;
            b += 5.0 * (double)(sh[0] * sh[1] * sh[2]);
        }
        b /= 1048576.0;
        lo = b < lo ? b : lo, hi = b > hi ? b : hi;
        if (r->cfg.cache_mb > 0 && b > r->cfg.cache_mb) streaming++;
    }
    char cache[64];
    if (r->cfg.cache_mb > 0) snprintf(cache, sizeof cache, "%.2f MiB", r->cfg.cache_mb);
    else snprintf(cache, sizeof cache, "unbounded");
    char what[160];
    if (streaming)
        snprintf(what, sizeof what, "%d of %d rank(s) stream their shard (crops read from the corpus while training)",
                 streaming, r->plan->nranks);
    else
        snprintf(what, sizeof what, "every shard fits (each chunk read once, then served from memory)");
    mn_log_info("data: shards of %.1f..%.1f MiB per rank, cache %s per rank: %s; prefetch %s", lo, hi, cache, what,
                r->cfg.prefetch ? "on (I/O thread)" : "off");
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
    /* The head kind must suit every dataset's task: a classifier (model.head = cls) for classification datasets,
     * a segmentation head for the others.  Every rank reads the same metadata: rank 0 reports, all agree. */
    const int want_cls = c->model.head_kind == MN_HEAD_CLS;
    for (int d = 0; d < nd && !e; d++) {
        const mn_corpus_dataset *cd = &r->info->datasets[d];
        if (cd->role != (mn_role)c->role || (cd->task == MN_TASK_CLS) == want_cls) continue;
        if (r->rank) break; /* the others take rank 0's word in the agreement below */
        e = r->rank ? MN_OK
                    : mn_error_report(MN_ERR_CONFIG, __FILE__, __LINE__, __func__, "dataset '%s' of %s is a %s "
                                      "dataset, but model.head = %s\n---> HINT: %s", cd->name, c->corpus,
                                      cd->task == MN_TASK_CLS ? "classification" : "segmentation",
                                      want_cls ? "cls (a classifier)" : c->model.head_kind == MN_HEAD_SEG ? "seg" : "branch",
                                      cd->task == MN_TASK_CLS ? "set model.head = cls" : "set model.head = seg or "
                                      "branch, or corpus.datasets to the classification datasets");
    }
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
                            .bucket_mb = c->bucket_mb,
                            .freeze_steps = c->freeze_encoder ? LONG_MAX : c->head_warmup_steps};
    if (!e) e = mn_trainer_create(r->comm, &tc, n, ds, nd, r->trace, &r->trainer);
    mn_free(&ds);
    mn_free(&holders);
    MN_CALL(e);
    r->parts = mn_trainer_parts(r->trainer);
    mn_model *m = mn_trainer_model(r->trainer);
    if (c->freeze_encoder) mn_log_info("encoder frozen (train.freeze_encoder): only the heads train");
    else if (c->head_warmup_steps > 0)
        mn_log_info("head warm-up: steps 1-%ld train the heads only (train.head_warmup_steps)", c->head_warmup_steps);
    mn_model_memory mem = mn_model_memory_plan(m);
    mn_log_info("model: resnet%d, %s head, %zu parameters on rank 0 (encoder %zu), %.1f MiB planned per rank "
                "(activations %.1f MiB)",
                c->model.depth, want_cls ? "fc (classification)" : c->model.head_kind == MN_HEAD_SEG ? "conv_seg" : "branch",
                mn_model_num_params(m),
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
    MN_CALL(mn_agree(r->comm, r->rank == 0 ? select_datasets(r, 1) : MN_OK));
    MN_CALL(select_datasets(r, 0));
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
        print_data_plan(r);
        fflush(stdout);
    }
    /* The reader and the sampler: local work, agreed.  No voxel is read here and no collective is issued per
     * volume: each rank reads its own chunks on its I/O thread, from the first draw on. */
    MN_CALL(mn_agree(r->comm, setup_sampler(r)));
    MN_CALL(setup_trainer(r));

    /* Resume, or initialise the encoder from a pre-training checkpoint (fine-tuning). */
    if (r->resume_path[0]) {
        MN_CALL(mn_train_ckpt_resume(r->trainer, r->resume_path, &r->step));
        mn_log_info("resumed from %s at step %ld", r->resume_path, r->step);
    } else if (*c->init_encoder) {
        MN_CALL(mn_train_ckpt_init_encoder(r->trainer, c->init_encoder));
        mn_log_info("encoder initialised from %s", c->init_encoder);
    } else if (c->freeze_encoder || c->head_warmup_steps > 0) {
        mn_log_info("warning: train.%s on a randomly initialised encoder (train.init_encoder is empty)",
                    c->freeze_encoder ? "freeze_encoder" : "head_warmup_steps");
    }
    /* Ranks hold different volumes, often of one class each: batch norm over one rank's samples then normalises
     * the class away (measured: held-out accuracy at chance on 2 ranks, 0.95 with synchronised batch norm). */
    if (c->model.head_kind == MN_HEAD_CLS && r->size > 1 && !c->sync_bn)
        mn_log_info("warning: a classifier on %d ranks with per-rank batch norm: each rank's statistics come from "
                    "its own volumes, which may all be of one class; set train.sync_bn = true", r->size);
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
