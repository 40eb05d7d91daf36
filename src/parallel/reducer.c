/* reducer.c: bucketed, non-blocking all-reduce of a gradient range, overlapped with the backward pass, and the
 * blocking reduction of the per-dataset heads.
 *
 * As in PyTorch DDP: the range is cut into fixed-size buckets from its end (the backward pass produces the last
 * layers' gradients first), the backward pass declares ranges final with mn_reducer_ready, and each complete
 * bucket starts an MPI_Iallreduce.  Buckets are started strictly in index order, so that every rank
 * issues the collectives in the same order even if its ready calls arrive in a different order.  Open MPI (4.1,
 * libnbc) advances a non-blocking collective only inside MPI calls, so mn_reducer_progress tests the outstanding
 * requests; the model calls it between layers.  A progress thread was rejected: it needs MPI_THREAD_MULTIPLE and
 * takes a core from the compute threads on small nodes.
 *
 * Out of place, through a staging buffer.  Open MPI's libnbc (the coll component behind MPI_Iallreduce) chooses
 * its algorithm in nbc_allreduce_init (ompi/mca/coll/libnbc/nbc_iallreduce.c, the same test in v4.1.4 and on the
 * main branch): with no forced algorithm it takes NBC_ARED_BINOMIAL when
 *     p < 4 || size * count < 65536 || !ompi_op_is_commute(op) || inplace
 * and otherwise reduce-scatter + all-gather (Rabenseifner) when count >= the largest power of two <= p.  The
 * binomial schedule (allred_sched_diss) is a binomial-tree reduce to rank 0 followed by a binomial broadcast from
 * it: every round moves the whole bucket, log2(P) rounds each way, and all the additions happen on the tree's
 * inner ranks, rank 0 last.  At P = 4 ranks 0 and 1 send 2x the bucket and ranks 0 and 2 receive 2x, against
 * 2(P-1)/P = 1.5x for reduce-scatter + all-gather (tests/mpi/test_reducer_pattern.sh measures exactly these
 * figures).  MPI_IN_PLACE alone forces the tree.  So each bucket is reduced out of place, from the gradient buffer
 * into its slot of `stage` (a twin of the whole range, allocated and touched once at create: page faults are
 * expensive here and a step must not allocate), and the scaling by 1 / total samples, which reads every float
 * anyway, writes stage * (1 / total) back into the gradient buffer: no extra pass over the data.  (Copying the
 * bucket into a send buffer first would add one; libnbc's reduce-scatter already copies send into receive buffer.)
 * A per-bucket staging area reused across buckets was rejected: buckets are in flight together, so reuse would
 * serialise them.  Below 4 ranks libnbc takes the tree either way; at P = 2 it moves the same bytes as a ring.
 *
 * Readiness is tracked per float in a bitmap (1 bit per gradient: 1.7 MiB for a 56 MiB encoder, cleared once per
 * step) so that a range declared twice is caught exactly, and per bucket as a count that starts the bucket when it
 * reaches the bucket's size; finish checks that every bucket was completed.
 *
 * The sample count is reduced by its own MPI_Iallreduce (one double), started in mn_reducer_start, so the
 * gradient buffer needs no spare slot.  The mean is formed by multiplying with the float reciprocal of the total:
 * the same operation on the same bits on every rank, so replicas stay bitwise identical.  Since the count is
 * known early, a bucket whose reduction is seen complete in a progress call is scaled right there, behind the
 * rest of backward; finish scales only what is left.
 *
 * Timing: "inflight" is the union of the intervals during which at least one bucket was outstanding (completion is
 * seen when a test or wait returns, so it is as fine as the progress calls); "wait" is the time blocked in
 * finish; "busy" the time inside start/ready/progress, where, without network offload, the libnbc rounds copy and
 * sum the data.  hidden = (inflight - wait - busy) / inflight is the share of communication truly overlapped with
 * the caller's compute (counting only wait would credit the work done inside progress calls as hidden).
 */
#include "mednet/dist.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

struct mn_reducer {
    MPI_Comm comm;
    float *grad;
    mn_range range;
    size_t bucket_floats;
    int nb;
    mn_range *bucket;     /* [nb] absolute float ranges, bucket 0 = end of the range */
    float *stage;         /* [range.count] receive buffers: stage[i] stands for grad[range.offset + i] */
    size_t *nready;       /* [nb] floats declared ready this step */
    unsigned char *scaled;/* [nb] bucket's mean already written back into grad this step */
    uint64_t *bits;       /* [(range.count + 63) / 64] ready bitmap, bit i = float range.offset + i */
    size_t nwords;
    MPI_Request *req;     /* [nb] */
    double *t_start, *t_done;
    int next_start;       /* lowest bucket index not started yet */
    int in_step;
    int local_only; /* this step: buckets complete without communication (mn_reducer_start_local) */
    double local_samples, total_samples;
    MPI_Request count_req;
    int outstanding;      /* started, completion not yet seen */
    double union_t0, inflight;
    double busy;          /* seconds inside start/ready/progress this step */
    mn_trace *trace;
    mn_err hook_err;      /* first error inside a hook adapter this step */
    mn_reducer_stats last;
};

mn_err mn_reducer_create(MPI_Comm comm, float *grad, mn_range range, size_t bucket_bytes, mn_trace *trace,
                         mn_reducer **out)
{
    MN_CHECK(out && grad, MN_ERR_ARG, "NULL grad or out");
    *out = NULL;
    MN_CHECK(comm != MPI_COMM_NULL, MN_ERR_ARG, "reducer needs a communicator, got MPI_COMM_NULL");
    if (bucket_bytes == 0) bucket_bytes = MN_REDUCER_DEFAULT_BUCKET_BYTES;
    size_t bf = bucket_bytes / sizeof(float);
    MN_CHECK(bf >= 1 && bf <= (size_t)INT_MAX, MN_ERR_ARG,
             "bucket size %zu bytes must hold between 1 and INT_MAX floats", bucket_bytes);
    mn_reducer *r = NULL;
    MN_CALL(mn_calloc(sizeof *r, "reducer", (void **)&r));
    r->comm = comm;
    r->grad = grad;
    r->range = range;
    r->bucket_floats = bf;
    r->trace = trace;
    r->count_req = MPI_REQUEST_NULL;
    r->nb = (int)((range.count + bf - 1) / bf);
    size_t nb = r->nb ? (size_t)r->nb : 1;
    mn_err e = mn_calloc(nb * sizeof(mn_range), "reducer buckets", (void **)&r->bucket);
    if (!e) e = mn_calloc(nb * sizeof(size_t), "reducer ready counts", (void **)&r->nready);
    if (!e) e = mn_calloc(nb, "reducer scaled flags", (void **)&r->scaled);
    if (!e) e = mn_calloc(nb * sizeof(MPI_Request), "reducer requests", (void **)&r->req);
    r->nwords = (range.count + 63) / 64;
    if (!e) e = mn_calloc((r->nwords ? r->nwords : 1) * sizeof(uint64_t), "reducer ready bitmap", (void **)&r->bits);
    if (!e) e = mn_calloc(nb * sizeof(double), "reducer start times", (void **)&r->t_start);
    if (!e) e = mn_calloc(nb * sizeof(double), "reducer done times", (void **)&r->t_done);
    /* Touched now (memset, not calloc's lazy zero pages) so that the first step pays no page faults either. */
    if (!e) e = mn_malloc((range.count ? range.count : 1) * sizeof(float), "reducer staging buffer",
                          (void **)&r->stage);
    if (!e) memset(r->stage, 0, (range.count ? range.count : 1) * sizeof(float));
    if (e) {
        int nbuckets = r->nb;
        mn_reducer_destroy(&r);
        MN_FAIL(e, "cannot allocate a reducer of %d buckets", nbuckets);
    }
    for (int i = 0; i < r->nb; i++) {
        size_t hi = range.count - (size_t)i * bf;
        size_t lo = hi > bf ? hi - bf : 0;
        r->bucket[i].offset = range.offset + lo;
        r->bucket[i].count = hi - lo;
        r->req[i] = MPI_REQUEST_NULL;
    }
    *out = r;
    return MN_OK;
}

void mn_reducer_destroy(mn_reducer **pr)
{
    if (!pr || !*pr) return;
    mn_reducer *r = *pr;
    mn_free(&r->bucket);
    mn_free(&r->nready);
    mn_free(&r->scaled);
    mn_free(&r->bits);
    mn_free(&r->req);
    mn_free(&r->t_start);
    mn_free(&r->t_done);
    mn_free(&r->stage);
    mn_free(pr);
}

int mn_reducer_nbuckets(const mn_reducer *r) { return r ? r->nb : 0; }

mn_range mn_reducer_bucket(const mn_reducer *r, int i)
{
    mn_range none = {0, 0};
    if (!r || i < 0 || i >= r->nb) return none;
    return r->bucket[i];
}

mn_err mn_reducer_start(mn_reducer *r, double local_samples)
{
    MN_CHECK(r, MN_ERR_ARG, "NULL reducer");
    MN_CHECK(!r->in_step, MN_ERR_INTERNAL, "mn_reducer_start called twice without mn_reducer_finish");
    MN_CHECK(local_samples >= 0, MN_ERR_ARG, "negative sample count %g", local_samples);
    for (int i = 0; i < r->nb; i++) {
        r->nready[i] = 0;
        r->scaled[i] = 0;
        r->t_start[i] = r->t_done[i] = 0;
    }
    memset(r->bits, 0, r->nwords * sizeof(uint64_t));
    r->next_start = 0;
    r->outstanding = 0;
    r->inflight = 0;
    r->busy = 0;
    double t0 = MPI_Wtime();
    r->local_samples = local_samples;
    r->total_samples = 0;
    r->hook_err = MN_OK;
    r->local_only = 0;
    MN_MPI(MPI_Iallreduce(&r->local_samples, &r->total_samples, 1, MPI_DOUBLE, MPI_SUM, r->comm, &r->count_req));
    r->in_step = 1;
    r->busy += MPI_Wtime() - t0;
    return MN_OK;
}

mn_err mn_reducer_start_local(mn_reducer *r, double local_samples)
{
    MN_CALL(mn_reducer_start(r, local_samples));
    r->local_only = 1;
    return MN_OK;
}

/* Record that request i completed now (seen by a test or a wait). */
static void mark_done(mn_reducer *r, int i, double now)
{
    r->t_done[i] = now;
    if (--r->outstanding == 0) r->inflight += now - r->union_t0;
}

/* Write bucket i's all-reduced sum (in its staging slot; request complete) divided by the all-reduced sample count
 * (count request complete) into the gradient buffer, unless done already; a zero total copies the sum as is. */
static void scale_bucket(mn_reducer *r, int i)
{
    if (r->scaled[i]) return;
    r->scaled[i] = 1;
    float *g = r->grad + r->bucket[i].offset;
    const float *s = r->stage + (r->bucket[i].offset - r->range.offset);
    if (r->total_samples <= 0) {
        memcpy(g, s, r->bucket[i].count * sizeof(float));
        return;
    }
    float inv = (float)(1.0 / r->total_samples);
    for (size_t k = 0; k < r->bucket[i].count; k++) g[k] = s[k] * inv;
}

/* Mask of bits [lo, hi) within one 64-bit word, 0 <= lo < hi <= 64. */
static inline uint64_t word_mask(size_t lo, size_t hi)
{
    uint64_t m = hi == 64 ? ~(uint64_t)0 : (((uint64_t)1 << hi) - 1);
    return m & ~(((uint64_t)1 << lo) - 1);
}

/* Index of the first set bit in [a, b), or b if none. */
static size_t first_set(const uint64_t *bits, size_t a, size_t b)
{
    while (a < b) {
        size_t w = a / 64, lo = a % 64, hi = (b - w * 64) < 64 ? b - w * 64 : 64;
        uint64_t hit = bits[w] & word_mask(lo, hi);
        if (hit) return w * 64 + (size_t)__builtin_ctzll(hit);
        a = w * 64 + hi;
    }
    return b;
}

static void set_bits(uint64_t *bits, size_t a, size_t b)
{
    while (a < b) {
        size_t w = a / 64, lo = a % 64, hi = (b - w * 64) < 64 ? b - w * 64 : 64;
        bits[w] |= word_mask(lo, hi);
        a = w * 64 + hi;
    }
}

/* Start every bucket that is complete and whose predecessors have all been started: reduce it out of place, from
 * the gradient buffer into its staging slot (see the note at the top). */
static mn_err start_ready_buckets(mn_reducer *r)
{
    while (r->next_start < r->nb && r->nready[r->next_start] == r->bucket[r->next_start].count) {
        int i = r->next_start;
        if (r->local_only) { /* the gradient stays as it is: nothing to send, nothing to scale */
            r->t_start[i] = r->t_done[i] = MPI_Wtime();
            r->scaled[i] = 1;
            r->next_start++;
            continue;
        }
        float *g = r->grad + r->bucket[i].offset, *s = r->stage + (r->bucket[i].offset - r->range.offset);
        double now = MPI_Wtime();
        if (r->outstanding++ == 0) r->union_t0 = now;
        r->t_start[i] = now;
        MN_MPI(MPI_Iallreduce(g, s, (int)r->bucket[i].count, MPI_FLOAT, MPI_SUM, r->comm, &r->req[i]));
        r->next_start++;
    }
    return MN_OK;
}

mn_err mn_reducer_ready(mn_reducer *r, size_t offset, size_t count)
{
    MN_CHECK(r, MN_ERR_ARG, "NULL reducer");
    MN_CHECK(r->in_step, MN_ERR_INTERNAL, "mn_reducer_ready called outside a step (call mn_reducer_start first)");
    if (count == 0) return MN_OK;
    MN_CHECK(offset >= r->range.offset && count <= r->range.count && offset - r->range.offset <= r->range.count - count,
             MN_ERR_ARG, "ready range [%zu, %zu) is outside the reducer's range [%zu, %zu)", offset, offset + count,
             r->range.offset, r->range.offset + r->range.count);
    /* Relative interval [a, b) and the buckets it touches: bucket i covers [n - (i+1)bf, n - i bf) clipped at 0. */
    size_t n = r->range.count, bf = r->bucket_floats;
    size_t a = offset - r->range.offset, b = a + count;
    int first = (int)((n - b) / bf), last = (int)((n - a - 1) / bf);
    size_t dup = first_set(r->bits, a, b);
    MN_CHECK(dup == b, MN_ERR_INTERNAL,
             "gradient range [%zu, %zu) declared ready twice this step (float %zu was already declared)", offset,
             offset + count, r->range.offset + dup);
    double t0 = MPI_Wtime();
    set_bits(r->bits, a, b);
    for (int i = first; i <= last; i++) {
        size_t lo = r->bucket[i].offset - r->range.offset, hi = lo + r->bucket[i].count;
        r->nready[i] += (b < hi ? b : hi) - (a > lo ? a : lo);
    }
    MN_CALL(start_ready_buckets(r));
    r->busy += MPI_Wtime() - t0;
    return MN_OK;
}

mn_err mn_reducer_progress(mn_reducer *r)
{
    MN_CHECK(r, MN_ERR_ARG, "NULL reducer");
    if (!r->in_step) return MN_OK;
    double t0 = MPI_Wtime();
    int flag = 0;
    if (r->count_req != MPI_REQUEST_NULL) MN_MPI(MPI_Test(&r->count_req, &flag, MPI_STATUS_IGNORE));
    for (int i = 0; i < r->next_start; i++) {
        if (r->req[i] != MPI_REQUEST_NULL) {
            MN_MPI(MPI_Test(&r->req[i], &flag, MPI_STATUS_IGNORE));
            if (flag) mark_done(r, i, MPI_Wtime());
        }
        if (r->req[i] == MPI_REQUEST_NULL && r->count_req == MPI_REQUEST_NULL) scale_bucket(r, i);
    }
    r->busy += MPI_Wtime() - t0;
    return MN_OK;
}

mn_err mn_reducer_finish(mn_reducer *r, mn_reducer_stats *stats)
{
    MN_CHECK(r, MN_ERR_ARG, "NULL reducer");
    MN_CHECK(r->in_step, MN_ERR_INTERNAL, "mn_reducer_finish called without mn_reducer_start");
    MN_CHECK(r->hook_err == MN_OK, r->hook_err, "a gradient-ready hook failed during backward (first error above)");
    if (r->next_start < r->nb) {
        int i = r->next_start;
        MN_FAIL(MN_ERR_INTERNAL,
                "bucket %d (floats [%zu, %zu)) was never completed: only %zu of its %zu gradients were declared "
                "ready this step",
                i, r->bucket[i].offset, r->bucket[i].offset + r->bucket[i].count, r->nready[i], r->bucket[i].count);
    }
    double t0 = MPI_Wtime();
    for (int i = 0; i < r->nb; i++) {
        if (r->req[i] == MPI_REQUEST_NULL) continue;
        MN_MPI(MPI_Wait(&r->req[i], MPI_STATUS_IGNORE));
        mark_done(r, i, MPI_Wtime());
    }
    MN_MPI(MPI_Wait(&r->count_req, MPI_STATUS_IGNORE));
    double wait = MPI_Wtime() - t0;
    r->in_step = 0;

    /* The mean over every sample of every rank (buckets not yet scaled in a progress call). */
    for (int i = 0; i < r->nb; i++) scale_bucket(r, i);
    for (int i = 0; i < r->nb; i++) {
        char name[32];
        snprintf(name, sizeof name, "bucket %d", i);
        MN_CALL(mn_trace_event(r->trace, name, "allreduce", r->t_start[i], r->t_done[i] - r->t_start[i], 1));
    }
    r->last.nbuckets = r->nb;
    r->last.inflight = r->inflight;
    r->last.wait = wait;
    r->last.busy = r->busy;
    r->last.hidden = r->inflight > 0 ? (r->inflight - wait - r->busy) / r->inflight : 1.0;
    if (r->last.hidden < 0) r->last.hidden = 0;
    if (r->last.hidden > 1) r->last.hidden = 1;
    r->last.total_samples = r->total_samples;
    if (stats) *stats = r->last;
    return MN_OK;
}

void mn_reducer_hook_ready(void *ctx, size_t offset, size_t count)
{
    mn_reducer *r = ctx;
    if (!r || r->hook_err != MN_OK) return;
    r->hook_err = mn_reducer_ready(r, offset, count);
}

void mn_reducer_hook_progress(void *ctx)
{
    mn_reducer *r = ctx;
    if (!r || r->hook_err != MN_OK) return;
    r->hook_err = mn_reducer_progress(r);
}
