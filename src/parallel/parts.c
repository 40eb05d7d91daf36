/* parts.c: the part table and the gradient path over it (mednet/parts.h).
 *
 * The communicators come from mn_dist (world duplicate, one split per dataset).  Every collective below walks the
 * rows in one order, so the blocking head reductions on overlapping dataset communicators cannot deadlock.
 * Weighted batch-norm averaging multiplies a holder's buffer by its sample count, sums, and divides by the total:
 * one all-reduce per part, and the division is the same operation on the same bits on every replica.
 */
#include "mednet/parts.h"

#include "mednet/mem.h"
#include "mednet/mpicheck.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

mn_err mn_parts_create(MPI_Comm comm, int ndatasets, const int *corpus_index, const char *const *names,
                       int ncorpus, const int *holders, mn_parts **out)
{
    MN_CHECK(out && ndatasets >= 0 && ncorpus >= ndatasets, MN_ERR_ARG, "parts: bad arguments");
    *out = NULL;
    mn_parts *p = NULL;
    MN_CALL(mn_calloc(sizeof *p, "part table", (void **)&p));
    mn_err e = mn_dist_create(comm, ndatasets, holders, &p->dist);
    p->nrows = 1 + ndatasets;
    p->ncorpus = ncorpus;
    if (!e) e = mn_calloc(sizeof(mn_part) * (size_t)p->nrows, "part rows", (void **)&p->row);
    if (!e) e = mn_malloc(sizeof(int) * (size_t)(ncorpus ? ncorpus : 1), "part map", (void **)&p->row_of);
    if (e) {
        mn_parts_destroy(&p);
        MN_CALL(e);
    }
    for (int d = 0; d < ncorpus; d++) p->row_of[d] = -1;
    mn_dist *dist = p->dist;
    mn_part *enc = &p->row[0];
    snprintf(enc->name, sizeof enc->name, "encoder");
    enc->dataset = enc->head = -1;
    enc->held = 1;
    enc->comm = dist->world;
    enc->root = 0;
    enc->nholders = dist->size;
    int nheads = 0;
    for (int k = 0; k < ndatasets; k++) {
        mn_part *r = &p->row[1 + k];
        snprintf(r->name, sizeof r->name, "%s", names[k]);
        r->dataset = corpus_index[k];
        r->held = mn_dist_holds(dist, k);
        r->head = r->held ? nheads++ : -1;
        r->comm = dist->dcomm[k];
        r->root = mn_dist_root(dist, k);
        r->nholders = mn_dist_nholders(dist, k);
        if (corpus_index[k] >= 0 && corpus_index[k] < ncorpus) p->row_of[corpus_index[k]] = 1 + k;
    }
    *out = p;
    return MN_OK;
}

void mn_parts_destroy(mn_parts **pp)
{
    if (!pp || !*pp) return;
    mn_parts *p = *pp;
    mn_reducer_destroy(&p->reducer);
    if (p->dist) mn_dist_destroy(&p->dist);
    mn_free(&p->row);
    mn_free(&p->row_of);
    mn_free(pp);
}

int mn_parts_row_of(const mn_parts *p, int d) { return p && d >= 0 && d < p->ncorpus ? p->row_of[d] : -1; }

int mn_parts_nheads(const mn_parts *p)
{
    int n = 0;
    for (int i = 1; p && i < p->nrows; i++) n += p->row[i].held;
    return n;
}

void mn_parts_set_ranges(mn_parts *p, int row, mn_range params, mn_range bn)
{
    if (!p || row < 0 || row >= p->nrows) return;
    p->row[row].params = params;
    p->row[row].bn = bn;
}

mn_err mn_parts_start_reducer(mn_parts *p, float *grads, size_t bucket_bytes, mn_trace *trace)
{
    MN_CHECK(p && grads, MN_ERR_ARG, "parts: NULL table or gradients");
    mn_reducer_destroy(&p->reducer);
    MN_CALL(mn_reducer_create(p->dist->world, grads, p->row[0].params, bucket_bytes, trace, &p->reducer));
    return MN_OK;
}

void mn_parts_begin_step(mn_parts *p)
{
    for (int i = 0; i < p->nrows; i++) {
        mn_part *r = &p->row[i];
        r->weight = r->samples = r->total_weight = r->total_samples = 0;
    }
}

mn_err mn_parts_start_step(mn_parts *p, int encoder_frozen)
{
    MN_CHECK(p && p->reducer, MN_ERR_ARG, "parts: no reducer (call mn_parts_start_reducer)");
    if (encoder_frozen)
        MN_CALL(mn_reducer_start_local(p->reducer, p->row[0].weight));
    else
        MN_CALL(mn_reducer_start(p->reducer, p->row[0].weight));
    return MN_OK;
}

/* 1 if every float of v[0..n) is finite. */
static int all_finite(const float *v, size_t n)
{
    int ok = 1;
#pragma omp parallel for reduction(&& : ok) schedule(static)
    for (size_t i = 0; i < n; i++) ok = ok && isfinite(v[i]);
    return ok;
}

/* Sum n floats over comm in place (pieces of at most 2^30: MPI counts are int). */
static mn_err allreduce_floats(MPI_Comm comm, float *buf, size_t n)
{
    const size_t chunk = (size_t)1 << 30;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        MN_MPI(MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_FLOAT, MPI_SUM, comm));
    }
    return MN_OK;
}

mn_err mn_parts_reduce(mn_parts *p, float *grads, size_t ngrads, int local_bad, int *skip, mn_reducer_stats *stats)
{
    MN_CHECK(p && p->reducer && grads && skip, MN_ERR_ARG, "parts: bad arguments");
    mn_reducer_stats rs;
    MN_CALL(mn_reducer_finish(p->reducer, &rs));
    if (stats) *stats = rs;
    mn_part *enc = &p->row[0];
    enc->total_weight = rs.total_samples;
    /* Encoder sample count, for the BN weights: one small all-reduce. */
    MN_MPI(MPI_Allreduce(&enc->samples, &enc->total_samples, 1, MPI_DOUBLE, MPI_SUM, p->dist->world));
    for (int i = 1; i < p->nrows; i++) {
        mn_part *r = &p->row[i];
        if (!r->held) continue;
        double in[2] = {r->weight, r->samples}, tot[2] = {0, 0};
        MN_MPI(MPI_Allreduce(in, tot, 2, MPI_DOUBLE, MPI_SUM, r->comm));
        r->total_weight = tot[0];
        r->total_samples = tot[1];
        if (r->total_weight <= 0) continue; /* no sample of this dataset anywhere: the head is left alone */
        float *g = grads + r->params.offset;
        MN_CALL(allreduce_floats(r->comm, g, r->params.count));
        float inv = (float)(1.0 / r->total_weight);
        for (size_t j = 0; j < r->params.count; j++) g[j] *= inv;
    }
    int bad = local_bad || !all_finite(grads, ngrads), any = 0;
    MN_MPI(MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, p->dist->world));
    *skip = any;
    return MN_OK;
}

mn_err mn_parts_average_bn(mn_parts *p, float *bn)
{
    MN_CHECK(p && bn, MN_ERR_ARG, "parts: NULL table or BN buffer");
    for (int i = 0; i < p->nrows; i++) {
        mn_part *r = &p->row[i];
        if (!r->held || r->bn.count == 0) continue;
        /* total_samples is the same on every holder: all skip or all reduce. */
        if (r->total_samples <= 0) continue;
        float *b = bn + r->bn.offset;
        float w = (float)r->samples;
        for (size_t j = 0; j < r->bn.count; j++) b[j] *= w;
        MN_CALL(allreduce_floats(r->comm, b, r->bn.count));
        float inv = (float)(1.0 / r->total_samples);
        for (size_t j = 0; j < r->bn.count; j++) b[j] *= inv;
    }
    return MN_OK;
}

mn_err mn_parts_check_replicas(mn_parts *p, const float *params)
{
    MN_CHECK(p && params, MN_ERR_ARG, "parts: NULL table or parameters");
    /* Every rank checks every part it holds (each check is collective on the part's holders and returns the same
     * verdict on all of them), then the verdict is agreed over the world: a mismatch anywhere ends every rank. */
    mn_err local = MN_OK;
    for (int i = 0; i < p->nrows; i++) {
        mn_part *r = &p->row[i];
        if (!r->held) continue;
        char what[MN_PART_NAME_LEN + 32];
        snprintf(what, sizeof what, "%s%s parameters", i ? "head " : "", r->name);
        mn_err e = mn_dist_check_replicas(r->comm, params + r->params.offset, r->params.count * sizeof(float), what,
                                          NULL);
        if (e && !local) local = e;
    }
    MN_CALL(mn_agree(p->dist->world, local));
    return MN_OK;
}
