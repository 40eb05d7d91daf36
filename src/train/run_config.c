/* run_config.c: a run configuration (src/train/train_impl.h): rank 0 reads the file and broadcasts its text, every
 * rank parses it; [corpus] and [train] are read here, [model], [optim] and [sampler] by their own modules; a key
 * nobody read is an error.  Validation happens here, before any heavy work. */
#include "train/train_impl.h"

#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/optim.h"
#include "mednet/safetensors.h"
#include "mednet/train.h"

#include <stdlib.h>
#include <string.h>

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

/* The [corpus], [data] and [train] sections; [model], [optim] and [sampler] are read by their own modules. */
mn_err mn_run_config_read(mn_config *c, run_cfg *r)
{
    memset(r, 0, sizeof *r);
    MN_CALL(mn_config_string(c, "corpus", "path", NULL, &r->corpus));
    MN_CHECK(r->corpus && *r->corpus, MN_ERR_CONFIG, "config %s: [corpus] path is required (the corpus.h5 to train on)",
             mn_config_origin(c));
    MN_CALL(mn_config_int(c, "corpus", "shard_seed", 0, 0, 1L << 40, &r->shard_seed));
    static const char *const roles[] = {"pretrain", "target", NULL};
    MN_CALL(mn_config_choice(c, "corpus", "role", "pretrain", roles, &r->role));
    MN_CALL(mn_config_string(c, "train", "init_encoder", "", &r->init_encoder));
    MN_CALL(mn_config_string(c, "corpus", "datasets", "", &r->datasets));

    MN_CALL(mn_model_config_read(c, "model", &r->model));
    MN_CALL(mn_sampler_config_read(c, "sampler", &r->sampler));
    MN_CALL(mn_config_double(c, "data", "cache_mb", 0, 0, 1e9, &r->cache_mb));
    MN_CALL(mn_config_bool(c, "data", "prefetch", 1, &r->prefetch));

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
    MN_CALL(mn_config_bool(c, "train", "freeze_encoder", 0, &r->freeze_encoder));
    MN_CALL(mn_config_int(c, "train", "head_warmup_steps", 0, 0, 1L << 40, &r->head_warmup_steps));
    static const char *const nan_policy[] = {"skip", "abort", NULL};
    MN_CALL(mn_config_choice(c, "train", "nan_policy", "skip", nan_policy, &r->nan_abort));
    MN_CALL(mn_config_bool(c, "train", "trace", 0, &r->trace));
    MN_CALL(mn_config_bool(c, "train", "sync_bn", 0, &r->sync_bn));
    MN_CALL(mn_config_bool(c, "train", "resume", 1, &r->resume));
    MN_CALL(mn_config_double(c, "train", "watchdog_s", 1800.0, 0.0, 1e7, &r->watchdog_s));
    static const char *const ckpt_failure[] = {"stop", "continue", NULL};
    MN_CALL(mn_config_choice(c, "train", "checkpoint_failure", "stop", ckpt_failure, &r->ckpt_continue));
    MN_CALL(mn_config_string(c, "train", "out_dir", "run", &r->out));
    MN_CHECK(*r->out, MN_ERR_CONFIG, "config %s: [train] out_dir is empty", mn_config_origin(c));

    MN_CALL(mn_optim_config_read(c, "optim", r->steps, &r->optim, &r->head_lr_mult));
    MN_CALL(mn_config_check_unused(c));
    r->model.input = (mn_shape){(int)r->batch, 1, r->sampler.crop[0], r->sampler.crop[1], r->sampler.crop[2]};
    return MN_OK;
}

static const char *depth_shortcut_name(int s) { return s == 1 ? "A" : s == 2 ? "B" : "default"; }

/* A safetensors file (e.g. MedicalNet's release, converted): well-formed, and its recorded depth (mednet's export and
 * the converter record it) is the configured one.  Tensor names and shapes are checked when the encoder is loaded. */
static mn_err check_safetensors_model(const char *path, const char *why, const run_cfg *c)
{
    mn_safetensors *st = NULL;
    mn_err e = mn_st_open(path, &st);
    MN_CHECK(e == MN_OK, e, "%s %s cannot be used", why, path);
    const char *depth = mn_st_metadata(st, "depth");
    long d = depth ? strtol(depth, NULL, 10) : c->model.depth;
    mn_st_close(&st);
    MN_CHECK(d == c->model.depth, MN_ERR_CONFIG,
             "%s %s holds a resnet%ld encoder; model.depth is %d\n---> HINT: set model.depth=%ld, or use weights of "
             "a resnet%d", why, path, d, c->model.depth, d, c->model.depth);
    return MN_OK;
}

mn_err mn_run_check_ckpt_model(const char *path, const char *why, const run_cfg *c)
{
    if (mn_train_is_safetensors(path)) return check_safetensors_model(path, why, c);
    mn_ckpt_desc dd, *d = &dd;
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
