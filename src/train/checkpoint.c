/* checkpoint.c: checkpoints of a trainer over its part table (src/train/train_impl.h).
 *
 * Every part (row of the part table) is stored under one prefix, "encoder" or "heads/<dataset name>", as the
 * arrays params, bn, optim<i> (one per optimiser state buffer) and updates.  One function lists a part's arrays
 * (part_arrays); the writer, the sender and the reader all use it, and a part sent to rank 0 travels with its
 * array names and types, so the receiving side builds its list from what arrives: there is no second table to keep
 * in step with the first.
 *
 * File format and atomicity: mednet/ckpt.h.  Identity attributes: config (the whole run config), corpus_checksum,
 * corpus_path, nranks, sampler_seed, steps_done, and preprocessing (what inference repeats of prep for each dataset
 * of the run, mednet/corpus.h).
 */
#include "train/train_impl.h"

#include "mednet/ckpt.h"
#include "mednet/config.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"
#include "mednet/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_PART = 7100, MAX_ARRAYS = 8, NAME_LEN = 128 };

/* The header that travels in front of each array of a part sent to rank 0. */
typedef struct wire_header {
    char name[NAME_LEN];
    int32_t type;
    int64_t count;
} wire_header;

/* The arrays of one held part of this rank's trainer, named under its prefix.  Returns the count. */
static int part_arrays(mn_trainer *t, int row, char names[][NAME_LEN], mn_ckpt_array *a)
{
    mn_model *m = mn_trainer_model(t);
    mn_optim *o = mn_trainer_optim(t);
    mn_part *r = &mn_trainer_parts(t)->row[row];
    char prefix[NAME_LEN - 16];
    if (row == 0)
        snprintf(prefix, sizeof prefix, "encoder");
    else
        snprintf(prefix, sizeof prefix, "heads/%s", r->name);
    int n = 0;
    snprintf(names[n], NAME_LEN, "%s/params", prefix);
    a[n] = (mn_ckpt_array){names[n], MN_CKPT_F32, mn_model_params(m) + r->params.offset, r->params.count};
    n++;
    snprintf(names[n], NAME_LEN, "%s/bn", prefix);
    a[n] = (mn_ckpt_array){names[n], MN_CKPT_F32, mn_model_bn_buffers(m) + r->bn.offset, r->bn.count};
    n++;
    for (int i = 0; i < mn_optim_state_count(o) && n < MAX_ARRAYS - 1; i++) {
        size_t len;
        float *s = mn_optim_state(o, i, &len);
        snprintf(names[n], NAME_LEN, "%s/optim%d", prefix, i);
        a[n] = (mn_ckpt_array){names[n], MN_CKPT_F32, s + r->params.offset, r->params.count};
        n++;
    }
    snprintf(names[n], NAME_LEN, "%s/updates", prefix);
    a[n] = (mn_ckpt_array){names[n], MN_CKPT_I64, &r->updates, 1};
    n++;
    return n;
}

static MPI_Datatype mpi_type(mn_ckpt_type t) { return t == MN_CKPT_F32 ? MPI_FLOAT : MPI_INT64_T; }
static size_t type_size(mn_ckpt_type t) { return t == MN_CKPT_F32 ? sizeof(float) : sizeof(int64_t); }

/* Send the arrays of part `row` to world rank 0: their number, then per array its header and its data. */
static mn_err send_part(mn_trainer *t, int row, MPI_Comm world)
{
    char names[MAX_ARRAYS][NAME_LEN];
    mn_ckpt_array a[MAX_ARRAYS];
    int32_t n = part_arrays(t, row, names, a);
    MN_MPI(MPI_Send(&n, 1, MPI_INT32_T, 0, TAG_PART, world));
    for (int i = 0; i < n; i++) {
        wire_header h;
        memset(&h, 0, sizeof h);
        snprintf(h.name, sizeof h.name, "%s", a[i].name);
        h.type = (int32_t)a[i].type;
        h.count = (int64_t)a[i].count;
        MN_CHECK(a[i].count <= (size_t)1 << 30, MN_ERR_ARG, "checkpoint: array %s of %zu elements is too large to "
                 "send in one message", a[i].name, a[i].count);
        MN_MPI(MPI_Send(&h, (int)sizeof h, MPI_BYTE, 0, TAG_PART, world));
        MN_MPI(MPI_Send(a[i].data, (int)a[i].count, mpi_type(a[i].type), 0, TAG_PART, world));
    }
    return MN_OK;
}

/* Receive a part from `src` into newly allocated arrays appended to (names, a, bufs) at *na. */
static mn_err recv_part(int src, MPI_Comm world, char (*names)[NAME_LEN], mn_ckpt_array *a, void **bufs, int *na,
                        int cap)
{
    int32_t n = 0;
    MN_MPI(MPI_Recv(&n, 1, MPI_INT32_T, src, TAG_PART, world, MPI_STATUS_IGNORE));
    MN_CHECK(n > 0 && n <= MAX_ARRAYS && *na + n <= cap, MN_ERR_INTERNAL, "checkpoint: rank %d sends %d arrays",
             src, (int)n);
    for (int i = 0; i < n; i++) {
        wire_header h;
        MN_MPI(MPI_Recv(&h, (int)sizeof h, MPI_BYTE, src, TAG_PART, world, MPI_STATUS_IGNORE));
        h.name[NAME_LEN - 1] = 0;
        MN_CHECK(h.type == MN_CKPT_F32 || h.type == MN_CKPT_I64, MN_ERR_INTERNAL, "checkpoint: bad type from rank %d",
                 src);
        int k = (*na)++;
        mn_ckpt_type ty = (mn_ckpt_type)h.type;
        MN_CALL(mn_malloc(type_size(ty) * (size_t)(h.count ? h.count : 1), "received part", &bufs[k]));
        MN_MPI(MPI_Recv(bufs[k], (int)h.count, mpi_type(ty), src, TAG_PART, world, MPI_STATUS_IGNORE));
        memcpy(names[k], h.name, NAME_LEN);
        a[k] = (mn_ckpt_array){names[k], ty, bufs[k], (size_t)h.count};
    }
    return MN_OK;
}

mn_err mn_train_ckpt_write(mn_trainer *t, const char *dir, long step, int keep, const mn_ckpt_meta *meta)
{
    mn_parts *p = mn_trainer_parts(t);
    MPI_Comm world = p->dist->world;
    int rank = p->dist->rank, cap = p->nrows * MAX_ARRAYS;
    char(*names)[NAME_LEN] = NULL;
    mn_ckpt_array *a = NULL;
    void **bufs = NULL;
    int na = 0;
    mn_err e = mn_calloc(sizeof(*names) * (size_t)cap, "checkpoint names", (void **)&names);
    if (!e) e = mn_calloc(sizeof *a * (size_t)cap, "checkpoint arrays", (void **)&a);
    if (!e) e = mn_calloc(sizeof *bufs * (size_t)cap, "checkpoint buffers", (void **)&bufs);
    e = mn_agree(world, e);
    /* Gather (collective work): every part's root hands its arrays to rank 0, in row order. */
    for (int i = 0; i < p->nrows && !e; i++) {
        mn_part *r = &p->row[i];
        if (rank == 0 && r->root == 0)
            na += part_arrays(t, i, names + na, a + na);
        else if (rank == r->root)
            e = send_part(t, i, world);
        else if (rank == 0)
            e = recv_part(r->root, world, names, a, bufs, &na, cap);
    }
    if (!e) {
        /* The write (rank 0's local work, agreed): a full disk stops every rank cleanly. */
        mn_err we = MN_OK;
        if (rank == 0) {
            char sum[32], nranks[16], seed[32], steps[32], path[1400];
            snprintf(sum, sizeof sum, "%08x", (unsigned)meta->corpus_checksum);
            snprintf(nranks, sizeof nranks, "%d", p->dist->size);
            snprintf(seed, sizeof seed, "%llu", (unsigned long long)meta->sampler_seed);
            snprintf(steps, sizeof steps, "%ld", step);
            mn_ckpt_attr attrs[] = {{"config", meta->config_text}, {"corpus_checksum", sum},
                                    {"corpus_path", meta->corpus_path}, {"nranks", nranks},
                                    {"sampler_seed", seed}, {"steps_done", steps},
                                    {"preprocessing", meta->prep_text ? meta->prep_text : ""}};
            we = mn_ckpt_write(dir, step, a, na, attrs, (int)(sizeof attrs / sizeof attrs[0]), keep, path,
                               sizeof path);
            if (!we) mn_log_info("checkpoint: %s (step %ld)", path, step);
        }
        e = mn_agree(world, we);
    }
    for (int i = 0; bufs && i < cap; i++) mn_free(&bufs[i]);
    mn_free(&bufs);
    mn_free(&a);
    mn_free(&names);
    MN_CALL(e);
    return MN_OK;
}

/* Read part `row` of this rank's trainer from an open checkpoint. */
static mn_err read_part(mn_trainer *t, mn_ckpt *ck, int row)
{
    char names[MAX_ARRAYS][NAME_LEN];
    mn_ckpt_array a[MAX_ARRAYS];
    int n = part_arrays(t, row, names, a);
    MN_CALL(mn_ckpt_read(ck, a, n));
    return MN_OK;
}

/* Broadcast part `row` (parameters, BN, optimiser state, update count) from its comm's rank 0. */
static mn_err bcast_part(mn_trainer *t, int row)
{
    char names[MAX_ARRAYS][NAME_LEN];
    mn_ckpt_array a[MAX_ARRAYS];
    int n = part_arrays(t, row, names, a);
    MPI_Comm comm = mn_trainer_parts(t)->row[row].comm;
    for (int i = 0; i < n; i++) {
        if (a[i].type == MN_CKPT_F32)
            MN_CALL(mn_dist_bcast_floats(comm, a[i].data, a[i].count, 0));
        else
            MN_MPI(MPI_Bcast(a[i].data, (int)a[i].count, MPI_INT64_T, 0, comm));
    }
    return MN_OK;
}

mn_err mn_train_ckpt_resume(mn_trainer *t, const char *path, long *step)
{
    mn_parts *p = mn_trainer_parts(t);
    MPI_Comm world = p->dist->world;
    long s = 0;
    /* Local work: each part's root (rank 0 of its communicator) reads the part. */
    mn_err e = MN_OK;
    mn_ckpt *ck = NULL;
    for (int i = 0; i < p->nrows && !e; i++) {
        mn_part *r = &p->row[i];
        if (!r->held || p->dist->rank != r->root) continue;
        if (!ck) e = mn_ckpt_open(path, &ck);
        if (!e) e = read_part(t, ck, i);
        if (!e && i == 0) s = (long)mn_ckpt_step(ck);
    }
    mn_ckpt_close(&ck);
    MN_CALL(mn_agree(world, e));
    MN_MPI(MPI_Bcast(&s, 1, MPI_LONG, 0, world));
    for (int i = 0; i < p->nrows; i++)
        if (p->row[i].held) MN_CALL(bcast_part(t, i));
    *step = s;
    return MN_OK;
}

int mn_train_is_safetensors(const char *path)
{
    size_t n = strlen(path), k = strlen(".safetensors");
    return n > k && !strcmp(path + n - k, ".safetensors");
}

mn_err mn_train_ckpt_init_encoder(mn_trainer *t, const char *path)
{
    mn_parts *p = mn_trainer_parts(t);
    mn_model *m = mn_trainer_model(t);
    mn_part *enc = &p->row[0];
    mn_err e = MN_OK;
    if (p->dist->rank == 0) {
        if (mn_train_is_safetensors(path)) {
            mn_import_report rep;
            e = mn_model_load_safetensors_encoder(m, path, &rep);
            if (!e)
                mn_log_info("%s: %d encoder tensors loaded, %d other tensors skipped", path, rep.loaded, rep.skipped);
        } else {
            mn_ckpt *ck = NULL;
            e = mn_ckpt_open(path, &ck);
            mn_ckpt_array a[2] = {
                {"encoder/params", MN_CKPT_F32, mn_model_params(m) + enc->params.offset, enc->params.count},
                {"encoder/bn", MN_CKPT_F32, mn_model_bn_buffers(m) + enc->bn.offset, enc->bn.count}};
            if (!e) e = mn_ckpt_read(ck, a, 2);
            mn_ckpt_close(&ck);
        }
    }
    MN_CALL(mn_agree(p->dist->world, e));
    MN_CALL(mn_dist_bcast_floats(p->dist->world, mn_model_params(m) + enc->params.offset, enc->params.count, 0));
    MN_CALL(mn_dist_bcast_floats(p->dist->world, mn_model_bn_buffers(m) + enc->bn.offset, enc->bn.count, 0));
    return MN_OK;
}

mn_err mn_train_ckpt_describe(const char *path, mn_ckpt_desc *d)
{
    memset(d, 0, sizeof *d);
    mn_ckpt *ck = NULL;
    MN_CALL(mn_ckpt_open(path, &ck));
    char *text = NULL, *sum = NULL, *np = NULL;
    mn_config *cfg = NULL;
    mn_err e = mn_ckpt_attr_get(ck, "config", &text);
    if (!e) e = mn_ckpt_attr_get(ck, "corpus_checksum", &sum);
    if (!e) e = mn_ckpt_attr_get(ck, "nranks", &np);
    if (!e) {
        d->step = mn_ckpt_step(ck);
        d->corpus_checksum = (uint32_t)strtoul(sum, NULL, 16);
        d->nranks = atoi(np);
        e = mn_config_parse(text, path, &cfg);
    }
    long depth = 10;
    static const char *const shortcuts[] = {"default", "A", "B", NULL};
    static const char *const heads[] = {"seg", "branch", "cls", NULL};
    if (!e) e = mn_config_int(cfg, "model", "depth", 10, 0, 100000, &depth);
    if (!e) e = mn_config_choice(cfg, "model", "shortcut", "default", shortcuts, &d->shortcut);
    if (!e) e = mn_config_choice(cfg, "model", "head", "seg", heads, &d->head_kind);
    d->depth = (int)depth;
    mn_config_destroy(&cfg);
    mn_free(&text);
    mn_free(&sum);
    mn_free(&np);
    mn_ckpt_close(&ck);
    MN_CHECK(e == MN_OK, e, "'%s' is not a mednet training checkpoint (its identity attributes are missing or "
             "unreadable)", path);
    return MN_OK;
}
