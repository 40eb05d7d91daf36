/* trainer.c: one data-parallel training step over the part table (mednet/trainer.h).
 *
 * The trainer holds what a step touches: the model, the optimiser, the part table and the batch buffers (sized
 * once).  Sampling is not here: a batch source fills each micro-batch, which is how `mednet pretrain` plugs in the
 * sampler and the equivalence tests plug in their synthetic batches, so both run this very code.
 *
 * Rejected: a communication thread to progress the encoder buckets (MPI_THREAD_MULTIPLE is not granted
 * everywhere; the backward pass calls the reducer between layers instead), and all-gathering heads on every rank
 * (memory grows with the datasets, against the contract that a rank not holding d does not hold head d).
 */
#include "mednet/trainer.h"

#include "mednet/mem.h"
#include "mednet/mpicheck.h"

#include <math.h>
#include <string.h>

struct mn_trainer {
    mn_trainer_config cfg;
    mn_parts *parts;
    mn_model *model;
    mn_optim *optim;
    mn_trace *trace;
    int batch;
    size_t vox;              /* voxels of one crop */
    mn_batch b;              /* the micro-batch buffers */
    double *sample_loss;     /* [batch] */
    int32_t *classes;        /* [batch]: a classification head batch's classes, one per sample (compacted) */
    float *bn_saved;         /* BN buffers before the step (restored when the step is skipped) */
    double bn_buf[MN_MODEL_BN_SYNC_MAX + 1];
};

/* SyncBN: one all-reduce of a layer's per-channel sums and voxel count over the world (mn_model_set_bn_sync). */
static mn_err bn_sync(void *ctx, double *sums, int n, double *count)
{
    mn_trainer *t = ctx;
    memcpy(t->bn_buf, sums, sizeof(double) * (size_t)n);
    t->bn_buf[n] = *count;
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, t->bn_buf, n + 1, MPI_DOUBLE, MPI_SUM, t->parts->dist->world));
    memcpy(sums, t->bn_buf, sizeof(double) * (size_t)n);
    *count = t->bn_buf[n];
    return MN_OK;
}

mn_err mn_trainer_create(MPI_Comm comm, const mn_trainer_config *cfg, int ndatasets, const mn_trainer_dataset *ds,
                         int ncorpus, mn_trace *trace, mn_trainer **out)
{
    MN_CHECK(cfg && out && (ndatasets == 0 || ds), MN_ERR_ARG, "trainer: bad arguments");
    MN_CHECK(cfg->micro_batches >= 1, MN_ERR_ARG, "trainer: micro_batches must be >= 1, got %d", cfg->micro_batches);
    *out = NULL;
    int size = 0;
    MN_MPI(MPI_Comm_size(comm, &size));
    mn_trainer *t = NULL;
    MN_CALL(mn_calloc(sizeof *t, "trainer", (void **)&t));
    t->cfg = *cfg;
    t->trace = trace;
    t->batch = cfg->model.input.n;

    /* The part table (collective). */
    int *corpus = NULL, *holders = NULL;
    const char **names = NULL;
    mn_err e = mn_calloc(sizeof(int) * (size_t)(ndatasets + 1), "dataset list", (void **)&corpus);
    if (!e) e = mn_calloc(sizeof(char *) * (size_t)(ndatasets + 1), "dataset names", (void **)&names);
    if (!e) e = mn_calloc(sizeof(int) * (size_t)(ndatasets + 1) * (size_t)size, "holder table", (void **)&holders);
    for (int k = 0; k < ndatasets && !e; k++) {
        corpus[k] = ds[k].corpus_index;
        names[k] = ds[k].name;
        for (int r = 0; r < size; r++) holders[(size_t)k * size + r] = ds[k].holders[r] != 0;
    }
    e = mn_agree(comm, e);
    if (!e) e = mn_parts_create(comm, ndatasets, corpus, names, ncorpus, holders, &t->parts);
    mn_free(&corpus);
    mn_free(&holders);
    mn_free(&names);
    if (e) {
        mn_trainer_destroy(&t);
        MN_CALL(e);
    }
    mn_parts *p = t->parts;

    /* Local work, agreed: the model with the heads this rank holds, the optimiser, the buffers. */
    mn_head_spec specs[MN_MODEL_MAX_HEADS];
    int nheads = 0;
    for (int i = 1; i < p->nrows && !e; i++) {
        if (!p->row[i].held) continue;
        if (nheads >= MN_MODEL_MAX_HEADS) {
            e = mn_error_report(MN_ERR_ARG, __FILE__, __LINE__, __func__, "a rank can hold at most %d heads",
                                MN_MODEL_MAX_HEADS);
            break;
        }
        specs[nheads].id = p->row[i].dataset;
        specs[nheads].classes = ds[i - 1].classes;
        nheads++;
    }
    mn_model_config mc = cfg->model;
    mc.nheads = nheads;
    mc.heads = specs;
    mc.prefix_heads = 1;
    if (!e) e = mn_model_create(&mc, &t->model);
    if (!e) e = mn_optim_create(&cfg->optim, mn_model_num_params(t->model), &t->optim);
    if (!e) {
        mn_shape in = cfg->model.input;
        t->vox = (size_t)in.d * (size_t)in.h * (size_t)in.w;
        t->b.n = t->batch;
        e = mn_malloc(sizeof(float) * t->vox * (size_t)t->batch, "input batch", (void **)&t->b.x);
        if (!e) e = mn_malloc(sizeof(int32_t) * t->vox * (size_t)t->batch, "label batch", (void **)&t->b.labels);
        if (!e) e = mn_malloc(sizeof(int) * (size_t)t->batch, "dataset ids", (void **)&t->b.dataset);
        if (!e) e = mn_malloc(sizeof(float) * (size_t)t->batch, "sample weights", (void **)&t->b.weight);
        if (!e) e = mn_malloc(sizeof(double) * (size_t)t->batch, "sample losses", (void **)&t->sample_loss);
        if (!e) e = mn_malloc(sizeof(int32_t) * (size_t)t->batch, "sample classes", (void **)&t->classes);
        if (!e)
            e = mn_malloc(sizeof(float) * (mn_model_num_bn_buffers(t->model) + 1), "saved BN buffers",
                          (void **)&t->bn_saved);
    }
    e = mn_agree(comm, e);
    if (e) {
        mn_trainer_destroy(&t);
        MN_CALL(e);
    }
    mn_parts_set_ranges(p, 0, mn_model_param_range(t->model, -1), mn_model_bn_range(t->model, -1));
    for (int i = 1; i < p->nrows; i++)
        if (p->row[i].held)
            mn_parts_set_ranges(p, i, mn_model_param_range(t->model, p->row[i].head),
                                mn_model_bn_range(t->model, p->row[i].head));
    if (cfg->sync_bn) mn_model_set_bn_sync(t->model, bn_sync, t);

    /* Every replica starts from world rank 0's encoder and each head root's head (row order). */
    for (int i = 0; i < p->nrows && !e; i++)
        if (p->row[i].held)
            e = mn_dist_bcast_floats(p->row[i].comm, mn_model_params(t->model) + p->row[i].params.offset,
                                     p->row[i].params.count, 0);
    if (!e)
        e = mn_parts_start_reducer(p, mn_model_grads(t->model), (size_t)(cfg->bucket_mb * 1048576.0), trace);
    if (e) {
        mn_trainer_destroy(&t);
        MN_CALL(e);
    }
    *out = t;
    return MN_OK;
}

void mn_trainer_destroy(mn_trainer **pt)
{
    if (!pt || !*pt) return;
    mn_trainer *t = *pt;
    mn_parts_destroy(&t->parts);
    mn_optim_destroy(&t->optim);
    mn_model_destroy(&t->model);
    mn_free(&t->b.x);
    mn_free(&t->b.labels);
    mn_free(&t->b.dataset);
    mn_free(&t->b.weight);
    mn_free(&t->sample_loss);
    mn_free(&t->classes);
    mn_free(&t->bn_saved);
    mn_free(pt);
}

mn_model *mn_trainer_model(mn_trainer *t) { return t ? t->model : NULL; }
mn_optim *mn_trainer_optim(mn_trainer *t) { return t ? t->optim : NULL; }
mn_parts *mn_trainer_parts(mn_trainer *t) { return t ? t->parts : NULL; }

/* Group the samples of a micro-batch into head batches (samples are sorted by dataset) and add their weights to
 * the rows.  A sample of a dataset this rank does not hold is a broken batch source: MN_ERR_INTERNAL. */
static mn_err head_batches(mn_trainer *t, const mn_batch *b, mn_head_batch *hb, int *rows, int *nhb)
{
    mn_parts *p = t->parts;
    int n = 0;
    for (int i = 0; i < b->n;) {
        int j = i;
        while (j < b->n && b->dataset[j] == b->dataset[i]) j++;
        int row = mn_parts_row_of(p, b->dataset[i]);
        MN_CHECK(row > 0 && p->row[row].held, MN_ERR_INTERNAL,
                 "batch: sample %d is of corpus dataset %d, which this rank does not train", i, b->dataset[i]);
        MN_CHECK(n < MN_MODEL_MAX_HEADS, MN_ERR_INTERNAL, "batch: samples are not grouped by dataset");
        for (int k = 0; k < n; k++)
            MN_CHECK(rows[k] != row, MN_ERR_INTERNAL, "batch: samples of dataset %d are not contiguous",
                     b->dataset[i]);
        hb[n] = (mn_head_batch){.head = p->row[row].head, .offset = i, .count = j - i};
        rows[n++] = row;
        for (int k = i; k < j; k++) {
            MN_CHECK(isfinite(b->weight[k]) && b->weight[k] > 0, MN_ERR_INTERNAL, "batch: sample %d has weight %g",
                     k, b->weight[k]);
            p->row[row].weight += b->weight[k];
            p->row[row].samples += 1;
            p->row[0].weight += b->weight[k];
            p->row[0].samples += 1;
        }
        i = j;
    }
    *nhb = n;
    return MN_OK;
}

mn_err mn_trainer_step(mn_trainer *t, long step, mn_batch_fn fn, void *ctx, mn_step_stats *st)
{
    MN_CHECK(t && fn && st, MN_ERR_ARG, "trainer: bad arguments");
    const mn_trainer_config *c = &t->cfg;
    mn_model *m = t->model;
    mn_parts *p = t->parts;
    memset(st->loss, 0, sizeof(double) * (size_t)p->nrows);
    memset(st->weight, 0, sizeof(double) * (size_t)p->nrows);
    st->t_data = st->t_compute = st->t_comm = st->t_update = st->hidden = 0;
    st->t_busy = st->t_wait = st->t_inflight = 0;
    st->skipped = 0;
    int bad = 0;
    memcpy(t->bn_saved, mn_model_bn_buffers(m), sizeof(float) * mn_model_num_bn_buffers(m));
    /* Fine-tuning recipes: a function of the step alone, so a resumed run freezes exactly where it would have. */
    int frozen = step < c->freeze_steps;
    mn_model_set_encoder_frozen(m, frozen);
    MN_CALL(mn_model_zero_grad(m));
    mn_parts_begin_step(p);
    mn_head_batch hb[MN_MODEL_MAX_HEADS];
    int rows[MN_MODEL_MAX_HEADS];
    for (int mb = 0; mb < c->micro_batches; mb++) {
        double t0 = MPI_Wtime();
        t->b.n = t->batch;
        MN_CALL(fn(ctx, (int64_t)step * c->micro_batches + mb, &t->b));
        double t1 = MPI_Wtime();
        st->t_data += t1 - t0;
        mn_trace_event(t->trace, "data", "data", t0, t1 - t0, 0);
        int nhb = 0;
        MN_CALL(head_batches(t, &t->b, hb, rows, &nhb));
        int last = mb == c->micro_batches - 1;
        /* The encoder buckets start during the LAST backward pass, once every local weight is known. */
        if (last) MN_CALL(mn_parts_start_step(p, frozen));
        mn_model_set_hooks(m, last ? mn_reducer_hook_ready : NULL, last ? mn_reducer_hook_progress : NULL,
                           p->reducer);
        MN_CALL(mn_model_forward(m, t->b.x, hb, nhb));
        for (int i = 0; i < nhb; i++) {
            int off = hb[i].offset;
            const int32_t *lab = t->b.labels + (size_t)off * t->vox;
            /* A classification head takes one class per sample: the first label voxel of each crop (the sampler
             * fills a classification crop with its class). */
            if (c->model.head_kind == MN_HEAD_CLS) {
                for (int j = 0; j < hb[i].count; j++) t->classes[j] = lab[(size_t)j * t->vox];
                lab = t->classes;
            }
            MN_CALL(mn_model_loss_samples(m, i, lab, t->b.weight + off, t->sample_loss));
            for (int j = 0; j < hb[i].count; j++) {
                double l = t->sample_loss[j], w = t->b.weight[off + j];
                if (!isfinite(l)) bad = 1;
                st->loss[rows[i]] += w * l;
                st->weight[rows[i]] += w;
                st->loss[0] += w * l;
                st->weight[0] += w;
            }
        }
        MN_CALL(mn_model_backward(m));
        double t2 = MPI_Wtime();
        st->t_compute += t2 - t1;
        mn_trace_event(t->trace, "forward+backward", "compute", t1, t2 - t1, 0);
    }
    mn_model_set_hooks(m, NULL, NULL, NULL);

    /* The gradient path: encoder buckets, heads, agreement on numerical trouble. */
    double t3 = MPI_Wtime();
    mn_reducer_stats rs;
    int skip = 0;
    MN_CALL(mn_parts_reduce(p, mn_model_grads(m), mn_model_num_params(m), bad, &skip, &rs));
    st->hidden = rs.hidden;
    st->t_busy = rs.busy;
    st->t_wait = rs.wait;
    st->t_inflight = rs.inflight;
    st->skipped = skip;
    double t_upd = MPI_Wtime();
    if (skip) {
        memcpy(mn_model_bn_buffers(m), t->bn_saved, sizeof(float) * mn_model_num_bn_buffers(m));
        if (c->nan_abort) {
            /* Every rank took this branch from the same all-reduced flag: world rank 0 reports, the stop is agreed
             * (the other ranks carry MN_ERR_REMOTE and stay silent). */
            mn_err ne = MN_OK;
            if (p->dist->rank == 0)
                ne = mn_error_report(MN_ERR_NUMERIC, __FILE__, __LINE__, __func__,
                                     "non-finite loss or gradient at step %ld (train.nan_policy = abort)", step + 1);
            return mn_agree(p->dist->world, ne);
        }
        mn_log_info("warning: non-finite loss or gradient at step %ld: update skipped (train.nan_policy = skip)",
                    step + 1);
    } else {
        double lr = mn_optim_lr(&c->optim, step);
        for (int i = 0; i < p->nrows; i++) {
            mn_part *r = &p->row[i];
            if (!r->held || r->total_weight <= 0) continue; /* no sample of this dataset anywhere: head untouched */
            if (i == 0 && frozen) continue;                 /* a frozen encoder: no step, no decay, no count */
            MN_CALL(mn_optim_update(t->optim, mn_model_params(m), mn_model_grads(m), r->params.offset,
                                    r->params.count, i ? lr * c->head_lr_mult : lr, ++r->updates));
        }
        st->t_update = MPI_Wtime() - t_upd;
        MN_CALL(mn_parts_average_bn(p, mn_model_bn_buffers(m)));
        /* The weighted average of equal replicas need not return the same bits: a frozen encoder's statistics are
         * put back exactly. */
        if (frozen) {
            mn_range eb = p->row[0].bn;
            memcpy(mn_model_bn_buffers(m) + eb.offset, t->bn_saved + eb.offset, sizeof(float) * eb.count);
        }
    }
    double t4 = MPI_Wtime();
    st->t_comm = t4 - t3 - st->t_update; /* the optimiser's arithmetic is not communication */
    mn_trace_event(t->trace, "reduce+update", "allreduce", t3, t4 - t3, 0);
    return MN_OK;
}
