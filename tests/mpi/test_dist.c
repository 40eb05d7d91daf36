/* test_dist.c: src/parallel on 1..4 ranks.
 *
 * Checks: per-dataset communicators have exactly the holders, in world order, with the lowest holder as root;
 * parameter broadcast (encoder from rank 0, heads from their roots, non-holders untouched); the bucketed reducer
 * against MPI_Allreduce of the same data with uneven sample counts (one rank contributing none), with buckets cut
 * from the end and ready calls in a rank-dependent order; a local-only step (frozen encoder: count summed, gradient
 * kept as it is) and an ordinary step after it; the head reducer's mean and its zero-sample case;
 * averaging; flag agreement; the replica checksum (a flipped bit on one rank is found and named by world rank, on
 * the world and on a dataset communicator); the timeline file; reducer misuse errors.
 */
#include "mednet/dist.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

#include <stdlib.h>
#include <string.h>

static int rank, size;

/* Holder table used throughout: d0 all ranks; d1 rank 0 only; d2 the last rank (and rank 1 when P > 2);
 * d3 the odd ranks (rank 0 when P == 1). */
enum { NDS = 4 };
static int holds_ref(int ds, int r)
{
    switch (ds) {
    case 0: return 1;
    case 1: return r == 0;
    case 2: return r == size - 1 || (size > 2 && r == 1);
    default: return size == 1 ? r == 0 : r % 2 == 1;
    }
}

static void test_comms(const mn_dist *d)
{
    for (int ds = 0; ds < NDS; ds++) {
        int want = holds_ref(ds, rank), n = 0, root = -1;
        for (int r = 0; r < size; r++) {
            n += holds_ref(ds, r);
            if (root < 0 && holds_ref(ds, r)) root = r;
        }
        TEST_EXPECT(mn_dist_holds(d, ds) == want, "dataset %d: holds %d, expected %d", ds, mn_dist_holds(d, ds), want);
        TEST_EXPECT((d->dcomm[ds] != MPI_COMM_NULL) == want, "dataset %d: comm null-ness wrong", ds);
        TEST_EXPECT(mn_dist_nholders(d, ds) == n, "dataset %d: %d holders, expected %d", ds, mn_dist_nholders(d, ds),
                    n);
        TEST_EXPECT(mn_dist_root(d, ds) == root, "dataset %d: root %d, expected %d", ds, mn_dist_root(d, ds), root);
        if (!want) continue;
        int csize = 0, crank = 0;
        MPI_Comm_size(d->dcomm[ds], &csize);
        MPI_Comm_rank(d->dcomm[ds], &crank);
        TEST_EXPECT(csize == n, "dataset %d: comm size %d, expected %d", ds, csize, n);
        /* Members in world order: gather world ranks over the dataset comm. */
        int members[8] = {0};
        MPI_Allgather(&rank, 1, MPI_INT, members, 1, MPI_INT, d->dcomm[ds]);
        for (int i = 0, r = 0; i < csize; i++, r++) {
            while (r < size && !holds_ref(ds, r)) r++;
            TEST_EXPECT(members[i] == r, "dataset %d: member %d is world rank %d, expected %d", ds, i, members[i], r);
        }
    }
}

/* The reducer against MPI_Allreduce of the same data: a flat buffer with a guard before and after the range. */
static void test_reducer(size_t n, size_t bucket_bytes, const char *tracepath)
{
    size_t pre = 13, post = 7, total_len = pre + n + post;
    float *g = malloc(total_len * sizeof(float)), *ref = malloc(total_len * sizeof(float));
    mn_test_rng rng = {0x1234 + (uint64_t)rank * 7919};
    mn_test_fill(&rng, g, total_len, 1.0f);
    memcpy(ref, g, total_len * sizeof(float));
    /* Uneven counts: rank r contributes r+1 samples, except rank 1 contributes none (when P > 1). */
    double local = (size > 1 && rank == 1) ? 0 : rank + 1, want_total = 0;
    for (int r = 0; r < size; r++) want_total += (size > 1 && r == 1) ? 0 : r + 1;

    mn_trace *tr = NULL;
    if (tracepath) TEST_EXPECT(mn_trace_open(tracepath, rank, &tr) == MN_OK, "trace open failed");
    mn_reducer *red = NULL;
    mn_range range = {pre, n};
    TEST_EXPECT(mn_reducer_create(MPI_COMM_WORLD, g, range, bucket_bytes, tr, &red) == MN_OK, "create failed");
    if (!red) return;
    /* Buckets: cut from the end, contiguous, covering the range. */
    size_t bf = (bucket_bytes ? bucket_bytes : MN_REDUCER_DEFAULT_BUCKET_BYTES) / sizeof(float), covered = 0;
    int nb = mn_reducer_nbuckets(red);
    TEST_EXPECT(nb == (int)((n + bf - 1) / bf), "nbuckets %d, expected %zu", nb, (n + bf - 1) / bf);
    for (int i = 0; i < nb; i++) {
        mn_range b = mn_reducer_bucket(red, i);
        TEST_EXPECT(b.offset + b.count == pre + n - covered, "bucket %d ends at %zu, expected %zu", i,
                    b.offset + b.count, pre + n - covered);
        TEST_EXPECT(i == nb - 1 ? b.count <= bf : b.count == bf, "bucket %d has %zu floats", i, b.count);
        covered += b.count;
    }
    TEST_EXPECT(covered == n, "buckets cover %zu floats, expected %zu", covered, n);

    /* Two steps: the second checks the state was reset.  "Layers" of rank-dependent sizes, from the end. */
    for (int step = 0; step < 2; step++) {
        if (step == 1) {
            mn_test_fill(&rng, g, total_len, 1.0f);
            memcpy(ref, g, total_len * sizeof(float));
        }
        TEST_EXPECT(mn_reducer_start(red, local) == MN_OK, "start failed");
        size_t hi = n, layer = 97 + 31 * (size_t)rank + 50 * (size_t)step;
        while (hi > 0) {
            size_t len = hi < layer ? hi : layer;
            TEST_EXPECT(mn_reducer_ready(red, pre + hi - len, len) == MN_OK, "ready failed");
            TEST_EXPECT(mn_reducer_progress(red) == MN_OK, "progress failed");
            hi -= len;
        }
        mn_reducer_stats st;
        TEST_EXPECT(mn_reducer_finish(red, &st) == MN_OK, "finish failed");
        TEST_EXPECT(st.total_samples == want_total, "total samples %g, expected %g", st.total_samples, want_total);
        TEST_EXPECT(st.nbuckets == nb && st.wait >= 0 && st.inflight >= 0 && st.hidden >= 0 && st.hidden <= 1,
                    "stats out of range: nb %d wait %g inflight %g hidden %g", st.nbuckets, st.wait, st.inflight,
                    st.hidden);
        MPI_Allreduce(MPI_IN_PLACE, ref + pre, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        float inv = (float)(1.0 / want_total);
        for (size_t i = 0; i < n; i++) ref[pre + i] *= inv;
        /* Summation order may differ between the two algorithms: relative error with an absolute floor. */
        double err = mn_test_max_relerr(g, ref, total_len, 1e-2);
        int guards_ok = 1;
        for (size_t i = 0; i < pre; i++) guards_ok &= g[i] == ref[i];
        for (size_t i = pre + n; i < total_len; i++) guards_ok &= g[i] == ref[i];
        TEST_EXPECT(err < 1e-5, "n=%zu bucket=%zu step %d: reducer vs MPI_Allreduce rel err %.3g", n, bucket_bytes,
                    step, err);
        TEST_EXPECT(guards_ok, "values outside the range were modified");
        TEST_EXPECT(mn_dist_check_replicas(MPI_COMM_WORLD, g + pre, n * sizeof(float), "reduced grads", NULL) ==
                        MN_OK,
                    "reduced gradients differ between ranks");
        if (rank == 0 && step == 1)
            printf("reducer n=%zu buckets=%d: max rel err vs MPI_Allreduce %.2g, total samples %g, hidden %.2f\n",
                   n, nb, err, st.total_samples, st.hidden);
    }
    /* A local-only step (a frozen encoder): the sample count is still summed, the gradient is neither summed nor
     * divided (each rank keeps its own, rank-dependent values), and the next ordinary step reduces again.  A reducer
     * of its own, without the timeline (whose events are counted below). */
    mn_reducer *lr = NULL;
    TEST_EXPECT(mn_reducer_create(MPI_COMM_WORLD, g, range, bucket_bytes, NULL, &lr) == MN_OK, "create failed");
    for (int step = 0; step < 2 && lr; step++) {
        mn_test_fill(&rng, g, total_len, 1.0f);
        for (size_t i = 0; i < total_len; i++) g[i] += (float)rank;
        memcpy(ref, g, total_len * sizeof(float));
        const int local_only = step == 0;
        TEST_EXPECT((local_only ? mn_reducer_start_local(lr, local) : mn_reducer_start(lr, local)) == MN_OK,
                    "start (local_only %d) failed", local_only);
        TEST_EXPECT(mn_reducer_ready(lr, pre, n) == MN_OK, "ready failed");
        mn_reducer_stats st;
        TEST_EXPECT(mn_reducer_finish(lr, &st) == MN_OK, "finish failed");
        TEST_EXPECT(st.total_samples == want_total, "local_only %d: total samples %g, expected %g", local_only,
                    st.total_samples, want_total);
        if (local_only) {
            TEST_EXPECT(!memcmp(g, ref, total_len * sizeof(float)), "local-only step changed the gradient");
        } else {
            MPI_Allreduce(MPI_IN_PLACE, ref + pre, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            float inv = (float)(1.0 / want_total);
            for (size_t i = 0; i < n; i++) ref[pre + i] *= inv;
            TEST_EXPECT(mn_test_max_relerr(g, ref, total_len, 1e-2) < 1e-5,
                        "the step after a local-only one is not the mean over ranks");
        }
    }
    mn_reducer_destroy(&lr);
    mn_reducer_destroy(&red);
    TEST_EXPECT(red == NULL, "destroy did not clear the pointer");
    if (tr) {
        TEST_EXPECT(mn_trace_close(&tr) == MN_OK, "trace close failed");
        FILE *f = fopen(tracepath, "r");
        TEST_EXPECT(f != NULL, "trace file missing");
        if (f) {
            char buf[1 << 16];
            size_t len = fread(buf, 1, sizeof buf - 1, f);
            buf[len] = 0;
            fclose(f);
            int nx = 0;
            for (char *s = buf; (s = strstr(s, "\"ph\":\"X\"")); s++) nx++;
            TEST_EXPECT(buf[0] == '[' && strstr(buf, "]\n") == buf + len - 2, "trace is not a closed JSON array");
            TEST_EXPECT(nx == 2 * nb, "trace has %d events, expected %d", nx, 2 * nb);
            TEST_EXPECT(strstr(buf, "\"name\":\"bucket 0\",\"cat\":\"allreduce\"") != NULL, "no bucket 0 event");
        }
    }
    free(g);
    free(ref);
}

/* Misuse is caught (on MPI_COMM_SELF, so a failing rank leaves no collective half-entered elsewhere). */
static void test_reducer_errors(void)
{
    float g[100] = {0};
    mn_reducer *red = NULL;
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_reducer_create(MPI_COMM_SELF, g, (mn_range){10, 80}, 40 * sizeof(float), NULL, &red) == MN_OK,
                "create failed");
    TEST_EXPECT(mn_reducer_ready(red, 10, 5) == MN_ERR_INTERNAL, "ready before start accepted");
    TEST_EXPECT(mn_reducer_start(red, 1) == MN_OK, "start failed");
    TEST_EXPECT(mn_reducer_ready(red, 5, 10) == MN_ERR_ARG, "range starting before the reducer's accepted");
    TEST_EXPECT(mn_reducer_ready(red, 80, 11) == MN_ERR_ARG, "range ending after the reducer's accepted");
    TEST_EXPECT(mn_reducer_ready(red, 60, 30) == MN_OK, "ready failed");
    TEST_EXPECT(mn_reducer_ready(red, 85, 5) == MN_ERR_INTERNAL, "range declared twice accepted");
    TEST_EXPECT(mn_reducer_ready(red, 55, 6) == MN_ERR_INTERNAL, "overlapping range accepted");
    TEST_EXPECT(mn_reducer_ready(red, 50, 10) == MN_OK, "ready failed");
    TEST_EXPECT(mn_reducer_start(red, 1) == MN_ERR_INTERNAL, "start twice accepted");
    TEST_EXPECT(mn_reducer_finish(red, NULL) == MN_ERR_INTERNAL, "finish with a missing bucket accepted");
    TEST_EXPECT(strstr(mn_error_last(), "bucket 1") != NULL, "missing-bucket message does not name bucket 1: %s",
                mn_error_last());
    TEST_EXPECT(mn_reducer_ready(red, 10, 40) == MN_OK, "ready failed");
    TEST_EXPECT(mn_reducer_finish(red, NULL) == MN_OK, "finish failed");
    /* Through the hook adapters: a bad range is kept and returned by finish. */
    TEST_EXPECT(mn_reducer_start(red, 1) == MN_OK, "start failed");
    mn_reducer_hook_ready(red, 50, 40);
    mn_reducer_hook_progress(red);
    mn_reducer_hook_ready(red, 0, 5); /* outside the range */
    mn_reducer_hook_ready(red, 10, 40);
    TEST_EXPECT(mn_reducer_finish(red, NULL) == MN_ERR_ARG, "hook error not returned by finish");
    mn_error_set_quiet(0);
    mn_reducer_destroy(&red);
}

/* The bucketed reducer also works on a dataset communicator. */
static void test_heads(const mn_dist *d)
{
    /* The bucketed reducer also works on a dataset communicator (non-blocking heads): dataset 2's holders, none
     * of which has a sample this step -> total 0, gradients left as the (zero) sum. */
    if (mn_dist_holds(d, 2)) {
        float hg[300] = {0};
        mn_reducer *hr = NULL;
        mn_reducer_stats st;
        TEST_EXPECT(mn_reducer_create(d->dcomm[2], hg, (mn_range){0, 300}, 100 * sizeof(float), NULL, &hr) == MN_OK,
                    "head reducer create failed");
        if (hr) {
            TEST_EXPECT(mn_reducer_start(hr, 0) == MN_OK && mn_reducer_ready(hr, 0, 300) == MN_OK &&
                            mn_reducer_finish(hr, &st) == MN_OK,
                        "head reducer step failed");
            TEST_EXPECT(st.total_samples == 0 && st.nbuckets == 3, "head reducer: total %g, %d buckets",
                        st.total_samples, st.nbuckets);
            mn_reducer_destroy(&hr);
        }
    }
}

static void test_flags(const mn_dist *d)
{
    int global = -1;
    TEST_EXPECT(mn_dist_agree_flag(d->world, rank == size - 1, &global) == MN_OK && global == 1,
                "flag raised on the last rank not agreed: %d", global);
    TEST_EXPECT(mn_dist_agree_flag(d->world, 0, &global) == MN_OK && global == 0, "no flag agreed as %d", global);
}

/* The node count from MPI_COMM_TYPE_SHARED: every rank of this test runs on this one machine, so one node holding all
 * of them; a sub-communicator of one rank is one node of one.  (The multi-node count is checked under the Slurm
 * harness's namespaced nodes, tests/slurm/test_slurm_multinode.sh.) */
static void test_nodes(const mn_dist *d)
{
    int nodes = -1, most = -1;
    TEST_EXPECT(mn_dist_node_count(d->world, &nodes, &most) == MN_OK && nodes == 1 && most == size,
                "node count on one machine: %d nodes, at most %d ranks on one (expected 1, %d)", nodes, most, size);
    TEST_EXPECT(mn_dist_node_count(MPI_COMM_SELF, &nodes, NULL) == MN_OK && nodes == 1, "self: %d nodes", nodes);
    TEST_EXPECT(mn_dist_node_count(d->world, NULL, NULL) != MN_OK, "NULL nodes accepted");
}

static void test_checksum(const mn_dist *d)
{
    /* Known XXH64 value of the empty input with seed 0, and single-bit sensitivity. */
    TEST_EXPECT(mn_hash64("", 0) == 0xEF46DB3751D8E999ULL, "hash of empty input %016llx",
                (unsigned long long)mn_hash64("", 0));
    unsigned char buf[203];
    for (int i = 0; i < 203; i++) buf[i] = (unsigned char)(i * 7);
    uint64_t h0 = mn_hash64(buf, sizeof buf);
    int same = 0;
    for (int bit = 0; bit < 203 * 8; bit += 13) {
        buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        same += mn_hash64(buf, sizeof buf) == h0;
        buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    }
    TEST_EXPECT(same == 0, "%d single-bit flips left the hash unchanged", same);
    for (size_t len = 0; len < 40; len++) same += mn_hash64(buf, len) == mn_hash64(buf, len + 1);
    TEST_EXPECT(same == 0, "prefixes of different length hash equal");

    float p[1000];
    for (int i = 0; i < 1000; i++) p[i] = (float)i * 0.5f;
    int nbad = -1;
    TEST_EXPECT(mn_dist_check_replicas(d->world, p, sizeof p, "encoder", &nbad) == MN_OK && nbad == 0,
                "identical replicas reported as different (%d)", nbad);
    if (size < 2) return;
    /* Flip one bit on the last rank: every rank must get the error, naming that rank. */
    if (rank == size - 1) ((unsigned char *)p)[1234] ^= 0x10;
    mn_error_set_quiet(1);
    mn_err e = mn_dist_check_replicas(d->world, p, sizeof p, "encoder", &nbad);
    mn_error_set_quiet(0);
    char want[64];
    snprintf(want, sizeof want, "world rank(s) %d ", size - 1);
    TEST_EXPECT(e == MN_ERR_INTERNAL && nbad == 1, "mismatch not detected: %s, %d bad", mn_err_name(e), nbad);
    TEST_EXPECT(strstr(mn_error_last(), want) && strstr(mn_error_last(), "encoder"),
                "message does not name rank %d and 'encoder': %s", size - 1, mn_error_last());
    if (rank == 0) printf("mismatch message: %s\n", mn_error_last());
    /* With 3+ ranks the majority decides: rank 0 alone differing is named, not the others. */
    if (size >= 3) {
        if (rank == size - 1) ((unsigned char *)p)[1234] ^= 0x10; /* undo */
        if (rank == 0) ((unsigned char *)p)[7] ^= 0x01;
        mn_error_set_quiet(1);
        e = mn_dist_check_replicas(d->world, p, sizeof p, "encoder", &nbad);
        mn_error_set_quiet(0);
        TEST_EXPECT(e == MN_ERR_INTERNAL && nbad == 1 && strstr(mn_error_last(), "world rank(s) 0 "),
                    "rank 0 as the odd one out: %s (%d bad)", mn_error_last(), nbad);
        if (rank == 0) ((unsigned char *)p)[7] ^= 0x01;
        if (rank == size - 1) ((unsigned char *)p)[1234] ^= 0x10; /* back to the state the head check expects */
    }
    /* On dataset 2's communicator, whose members are not world-ordered from 0: the flip is on world rank size-1. */
    if (mn_dist_holds(d, 2) && mn_dist_nholders(d, 2) > 2) {
        mn_error_set_quiet(1);
        e = mn_dist_check_replicas(d->dcomm[2], p, sizeof p, "head 2", &nbad);
        mn_error_set_quiet(0);
        TEST_EXPECT(e == MN_ERR_INTERNAL && strstr(mn_error_last(), want), "head 2 mismatch: %s",
                    mn_error_last());
    }
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int holders[NDS * 8];
    for (int ds = 0; ds < NDS; ds++)
        for (int r = 0; r < size; r++) holders[ds * size + r] = holds_ref(ds, r);
    mn_dist *d = NULL;
    TEST_EXPECT(mn_dist_create(MPI_COMM_WORLD, NDS, holders, &d) == MN_OK, "mn_dist_create failed");
    if (!d) mn_mpi_abort(MPI_COMM_WORLD, MN_ERR_INTERNAL);
    TEST_EXPECT(d->rank == rank && d->size == size, "world dup rank/size wrong");

    test_comms(d);
    char tracepath[256];
    snprintf(tracepath, sizeof tracepath, "test_dist_trace_np%d_r%d.json", size, rank);
    test_reducer(10007, 1000 * sizeof(float), tracepath);
    test_reducer(4096, 1024 * sizeof(float), NULL);   /* exact multiple of the bucket size */
    test_reducer(3000, 0, NULL);                      /* default 25 MiB: one bucket */
    remove(tracepath);
    test_reducer_errors();
    test_heads(d);
    test_flags(d);
    test_nodes(d);
    test_checksum(d);

    /* A holder table with an empty dataset is rejected on every rank. */
    int empty[2 * 8] = {0};
    for (int r = 0; r < size; r++) empty[r] = 1;
    mn_dist *d2 = NULL;
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_dist_create(MPI_COMM_WORLD, 2, empty, &d2) == MN_ERR_ARG && d2 == NULL,
                "dataset without holders accepted");
    mn_error_set_quiet(0);
    TEST_EXPECT(mn_dist_destroy(&d) == MN_OK && d == NULL, "destroy failed");

    int fails = 0;
    MPI_Allreduce(&mn_test_failures, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mn_test_failures = fails;
    MPI_Finalize();
    return rank == 0 ? mn_test_finish("test_dist") : (fails ? 1 : 0);
}
