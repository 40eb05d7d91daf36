/* bench_allreduce.c: bus bandwidth of the bucketed gradient reducer (src/parallel/reducer.c) next to one plain
 * MPI_Allreduce of the same bytes, and the overlap the reducer gets behind a simulated backward pass.
 *
 *   mpirun -n 2 build/benchmarks/bench_allreduce [MiB ...]        (default sizes: 1 16 56; 56 MiB = ResNet-10)
 *
 * Bandwidth as nccl-tests define it: algbw = bytes / time, busbw = algbw * 2 (P - 1) / P (the bytes each link must
 * carry in a ring all-reduce), time = the slowest rank's median over the timed iterations.  The reducer's time runs
 * from mn_reducer_start to the end of mn_reducer_finish (division by the sample count included; the plain
 * all-reduce is timed with the same division), with the whole buffer declared ready in 1 MiB "layers" from the
 * end and a progress call after each, as the backward pass does.
 * Before timing, each variant's result is checked against MPI_Allreduce (relative error printed).
 * The reducer's buckets are reduced out of place: with MPI_IN_PLACE Open MPI's libnbc runs a binomial tree through
 * rank 0 (see src/parallel/reducer.c), which shows here at 4 or more ranks as a bucketed busbw well below the blocking
 * one.  The header line says when the ranks of a node outnumber its cores: the figures are then set by the
 * scheduler as much as by the memory system, so compare the two paths of one run, not runs with each other.
 *
 * The overlap run declares the layers ready with a busy-wait of `compute_ms` per layer before each (the backward
 * compute of that layer), then reports the time of the step not spent computing against the plain all-reduce
 * (hidden = 1 - ratio) and the reducer's own in-flight statistic (an upper bound, see dist.h).
 *
 *   mpirun -n 2 build/benchmarks/bench_allreduce --model [DEPTH [EDGE [BATCH [BUCKET_MIB]]]]   (10 48 1 25)
 *
 * measures a real training step of the MedicalNet ResNet (one conv_seg head, input BATCH x 1 x EDGE^3 per rank,
 * random data): (A) backward with the reducer on the model's hooks, so buckets start during backward, then finish;
 * (B) the same backward without hooks followed by one blocking MPI_Allreduce of the encoder gradient.  The
 * exposed communication of each is the time from the end of the SLOWEST rank's backward to the end of the
 * reduction (MPI_Wtime is one clock on one node), so load imbalance between ranks is not counted as communication.
 * A also spends time inside the reducer's hooks during backward (starting and testing the reductions; without
 * network offload the libnbc rounds copy and add the data right there), which lengthens its backward.  Two shares
 * hidden behind backward are printed, medians: optimistic 1 - tail(A) / exposed(B), and conservative
 * 1 - (tail(A) + hooks(A)) / exposed(B).  (Differencing whole step times drowns in the compute noise of a shared
 * machine.)  A's gradient must equal B's.
 */
#include "mednet/dist.h"
#include "mednet/mem.h"
#include "mednet/model.h"
#include "mednet/mpicheck.h"
#include "mednet/threads.h"

#include <math.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

static int rank, size;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Slowest rank's median. */
static double median_max(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double m = t[n / 2], worst = 0;
    MPI_Allreduce(&m, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}

static void busy_wait(double seconds)
{
    double t0 = MPI_Wtime();
    while (MPI_Wtime() - t0 < seconds) {
    }
}

static void fill(float *g, size_t n, int step)
{
    for (size_t i = 0; i < n; i++) g[i] = (float)((i * 2654435761u + (size_t)rank * 97 + (size_t)step) % 1000) * 1e-3f;
}

/* One reducer step over g[0..n): layers of `layer` floats from the end, compute_s of busy work before each. */
static mn_err reducer_step(mn_reducer *r, size_t n, size_t layer, double compute_s, mn_reducer_stats *st,
                           double *compute_measured)
{
    double tc = 0;
    MN_CALL(mn_reducer_start(r, 1.0));
    for (size_t hi = n; hi > 0;) {
        size_t len = hi < layer ? hi : layer;
        if (compute_s > 0) {
            double t0 = MPI_Wtime();
            busy_wait(compute_s);
            tc += MPI_Wtime() - t0; /* more than compute_s when the OS takes the core away (shared machines) */
        }
        MN_CALL(mn_reducer_ready(r, hi - len, len));
        MN_CALL(mn_reducer_progress(r));
        hi -= len;
    }
    MN_CALL(mn_reducer_finish(r, st));
    if (compute_measured) *compute_measured = tc;
    return MN_OK;
}

static mn_err bench_size(double mib, size_t bucket_bytes)
{
    size_t n = (size_t)(mib * 1024 * 1024 / sizeof(float)), bytes = n * sizeof(float);
    size_t layer = (1u << 20) / sizeof(float);
    float *g = NULL, *ref = NULL;
    MN_CALL(mn_malloc(bytes, "bench grads", (void **)&g));
    MN_CALL(mn_malloc(bytes, "bench reference", (void **)&ref));
    mn_reducer *r = NULL;
    MN_CALL(mn_reducer_create(MPI_COMM_WORLD, g, (mn_range){0, n}, bucket_bytes, NULL, &r));

    /* Validate: reducer vs MPI_Allreduce, mean over P samples (one per rank). */
    fill(g, n, 0);
    memcpy(ref, g, bytes);
    mn_reducer_stats st;
    MN_CALL(reducer_step(r, n, layer, 0, &st, NULL));
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, ref, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    double worst = 0;
    float inv = 1.0f / (float)size;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)g[i] - (double)(ref[i] * inv)) / fmax(fabs((double)(ref[i] * inv)), 1e-3);
        if (e > worst) worst = e;
    }
    MN_MPI(MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    MN_CHECK(worst < 1e-5, MN_ERR_NUMERIC, "reducer differs from MPI_Allreduce: rel err %.3g", worst);

    int iters = mib <= 4 ? 20 : mib <= 20 ? 8 : 5;
    double tp[20], tb[20];
    for (int it = -1; it < iters; it++) { /* it = -1: warm-up */
        fill(g, n, it);
        MN_MPI(MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        MN_MPI(MPI_Allreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
        for (size_t i = 0; i < n; i++) g[i] *= inv; /* the mean, as the reducer forms it */
        if (it >= 0) tp[it] = MPI_Wtime() - t0;
        fill(g, n, it);
        MN_MPI(MPI_Barrier(MPI_COMM_WORLD));
        t0 = MPI_Wtime();
        MN_CALL(reducer_step(r, n, layer, 0, &st, NULL));
        if (it >= 0) tb[it] = MPI_Wtime() - t0;
    }
    double t_plain = median_max(tp, iters), t_buck = median_max(tb, iters);
    double f = 2.0 * (size - 1) / size, gb = (double)bytes / 1e9;
    if (rank == 0)
        printf("%9.3f MiB  bucket %5.1f MiB x %3d | MPI_Allreduce %8.3f ms algbw %6.2f GB/s busbw %6.2f GB/s | "
               "bucketed %8.3f ms algbw %6.2f GB/s busbw %6.2f GB/s | ratio %.2f | check rel err %.1e\n",
               mib, (double)(bucket_bytes ? bucket_bytes : MN_REDUCER_DEFAULT_BUCKET_BYTES) / (1 << 20),
               mn_reducer_nbuckets(r), t_plain * 1e3, gb / t_plain, gb / t_plain * f, t_buck * 1e3, gb / t_buck,
               gb / t_buck * f, t_plain / t_buck, worst);

    /* Overlap behind a simulated backward: per-layer compute sized so that total compute ~ 2x the plain
     * all-reduce time (a communication-light step), then ~ equal (a communication-heavy one). */
    for (int k = 0; k < 2; k++) {
        double nlayers = ceil((double)n / (double)layer);
        double compute_s = (k == 0 ? 2.0 : 1.0) * t_plain / nlayers;
        double ts[5], hid[5], wt[5], bz[5], cm[5];
        for (int it = 0; it < 5; it++) {
            fill(g, n, it);
            MN_MPI(MPI_Barrier(MPI_COMM_WORLD));
            double t0 = MPI_Wtime();
            MN_CALL(reducer_step(r, n, layer, compute_s, &st, &cm[it]));
            ts[it] = MPI_Wtime() - t0;
            ts[it] -= cm[it]; /* exposed time: the step minus the compute this rank actually got to do */
            hid[it] = st.hidden;
            wt[it] = st.wait;
            bz[it] = st.busy;
        }
        double t_exposed = median_max(ts, 5);
        qsort(hid, 5, sizeof *hid, cmp_double);
        qsort(wt, 5, sizeof *wt, cmp_double);
        qsort(bz, 5, sizeof *bz, cmp_double);
        double compute = compute_s * nlayers;
        if (rank == 0)
            printf("           overlap, compute %6.1f ms in %3.0f layers: %6.1f ms of the step not computing "
                   "(plain all-reduce %6.1f ms): %3.0f%% hidden; reducer: wait %6.1f ms, busy %6.1f ms, in-flight "
                   "hidden share %.2f\n",
                   compute * 1e3, nlayers, t_exposed * 1e3, t_plain * 1e3,
                   100 * (t_exposed < t_plain ? 1 - t_exposed / t_plain : 0), wt[2] * 1e3, bz[2] * 1e3, hid[2]);
    }
    mn_reducer_destroy(&r);
    mn_free(&g);
    mn_free(&ref);
    return MN_OK;
}

static mn_err bench_model(int depth, int edge, int batch, double bucket_mib)
{
    mn_head_spec spec = {0, 2};
    mn_model_config cfg = mn_model_config_default();
    cfg.depth = depth;
    cfg.nheads = 1;
    cfg.heads = &spec;
    cfg.input = (mn_shape){batch, 1, edge, edge, edge};
    mn_model *m = NULL;
    MN_CALL(mn_model_create(&cfg, &m));
    size_t vox = (size_t)batch * edge * edge * edge;
    float *x = NULL, *gref = NULL;
    int32_t *labels = NULL;
    mn_range enc = mn_model_param_range(m, -1);
    MN_CALL(mn_malloc(vox * sizeof(float), "input", (void **)&x));
    MN_CALL(mn_malloc(vox * sizeof(int32_t), "labels", (void **)&labels));
    MN_CALL(mn_malloc(enc.count * sizeof(float), "reference grads", (void **)&gref));
    for (size_t i = 0; i < vox; i++) {
        x[i] = (float)(((i * 2654435761u) >> 7) % 1000) * 1e-3f - 0.5f + 0.1f * (float)rank;
        labels[i] = (int32_t)((i / 97 + (size_t)rank) % 2);
    }
    mn_head_batch hb = {0, 0, batch};
    mn_reducer *r = NULL;
    MN_CALL(mn_reducer_create(MPI_COMM_WORLD, mn_model_grads(m), enc, (size_t)(bucket_mib * (1 << 20)), NULL, &r));
    if (rank == 0)
        printf("model step: resnet%d, %d x 1 x %d^3 per rank, %d ranks, encoder %.1f MiB in %d bucket(s) of %.1f MiB\n",
               depth, batch, edge, size, (double)enc.count * 4 / (1 << 20), mn_reducer_nbuckets(r), bucket_mib);
    enum { NIT = 4 };
    double a_step[NIT], a_wait[NIT], a_busy[NIT], a_hid[NIT], a_exp[NIT], a_cons[NIT], b_bwd[NIT], b_ar[NIT];
    double loss = 0;
    for (int it = -1; it < NIT; it++) { /* it = -1: warm-up */
        /* (B) backward, then one blocking all-reduce */
        mn_model_set_hooks(m, NULL, NULL, NULL);
        MN_CALL(mn_model_zero_grad(m));
        MN_CALL(mn_model_forward(m, x, &hb, 1));
        MN_CALL(mn_model_loss(m, 0, labels, 1.0f, &loss));
        MN_MPI(MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        MN_CALL(mn_model_backward(m));
        double t1 = MPI_Wtime();
        float *g = mn_model_grads(m) + enc.offset;
        MN_MPI(MPI_Allreduce(MPI_IN_PLACE, g, (int)enc.count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
        float inv = (float)(1.0 / ((double)batch * size));
        for (size_t i = 0; i < enc.count; i++) g[i] *= inv;
        double t2 = MPI_Wtime();
        memcpy(gref, g, enc.count * sizeof(float));
        /* (A) backward with the reducer on the hooks */
        mn_model_set_hooks(m, mn_reducer_hook_ready, mn_reducer_hook_progress, r);
        MN_CALL(mn_model_zero_grad(m));
        MN_CALL(mn_model_forward(m, x, &hb, 1));
        MN_CALL(mn_model_loss(m, 0, labels, 1.0f, &loss));
        MN_MPI(MPI_Barrier(MPI_COMM_WORLD));
        double t3 = MPI_Wtime();
        MN_CALL(mn_reducer_start(r, batch));
        MN_CALL(mn_model_backward(m));
        double t35 = MPI_Wtime();
        mn_reducer_stats st;
        MN_CALL(mn_reducer_finish(r, &st));
        double t4 = MPI_Wtime();
        double worst = 0;
        for (size_t i = 0; i < enc.count; i++) {
            double e = fabs((double)g[i] - gref[i]) / fmax(fabs((double)gref[i]), 1e-6);
            if (e > worst) worst = e;
        }
        MN_CHECK(worst < 1e-4, MN_ERR_NUMERIC, "overlapped gradient differs from the blocking one: rel err %.3g",
                 worst);
        /* Ends of the slowest backward, taken after the reductions so that this collective cannot progress them. */
        double ends[2] = {t1, t35};
        MN_MPI(MPI_Allreduce(MPI_IN_PLACE, ends, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
        if (it < 0) continue;
        b_bwd[it] = t1 - t0;
        b_ar[it] = t2 - ends[0];
        a_step[it] = t4 - t3;
        a_wait[it] = st.wait;
        a_busy[it] = st.busy;
        a_hid[it] = st.hidden;
        a_exp[it] = t4 - ends[1];
        a_cons[it] = a_exp[it] + st.busy;
    }
    double bb = median_max(b_bwd, NIT), ba = median_max(b_ar, NIT), as = median_max(a_step, NIT);
    double aw = median_max(a_wait, NIT), ab = median_max(a_busy, NIT), ah = median_max(a_hid, NIT);
    double ae = median_max(a_exp, NIT), ac = median_max(a_cons, NIT);
    double hidden = ba > 0 ? 1.0 - ae / ba : 1.0, hidden_cons = ba > 0 ? 1.0 - ac / ba : 1.0;
    if (rank == 0) {
        printf("  (B) backward %8.1f ms, then blocking all-reduce: %7.1f ms exposed after the slowest backward\n",
               bb * 1e3, ba * 1e3);
        printf("  (A) backward with overlapped buckets, incl. finish: %8.1f ms; %.1f ms exposed after the slowest "
               "backward (finish wait %.1f ms; inside start/ready/progress %.1f ms; reducer's in-flight hidden share "
               "%.2f)\n",
               as * 1e3, ae * 1e3, aw * 1e3, ab * 1e3, ah);
        printf("  communication hidden behind backward: %.0f%% optimistic (1 - tail(A) / exposed(B)), %.0f%% "
               "conservative (1 - (tail(A) + hooks(A)) / exposed(B)); loss %.4f\n",
               100 * hidden, 100 * hidden_cons, loss);
    }
    mn_reducer_destroy(&r);
    mn_free(&x);
    mn_free(&labels);
    mn_free(&gref);
    mn_model_destroy(&m);
    return MN_OK;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    /* BLIS kernels (they matter for --model) are chosen and reported like in every mednet program. */
    if (mn_threads_init_comm(mn_threads_resolve(0), MPI_COMM_WORLD) != MN_OK) mn_mpi_abort(MPI_COMM_WORLD, MN_ERR_ARG);
    if (rank == 0) printf("BLIS kernels: %s (%s), %d thread(s) per rank\n", mn_blis_arch(), mn_blis_arch_reason(),
                          mn_threads_count());
    if (argc > 1 && !strcmp(argv[1], "--model")) {
        int depth = argc > 2 ? atoi(argv[2]) : 10, edge = argc > 3 ? atoi(argv[3]) : 48;
        int batch = argc > 4 ? atoi(argv[4]) : 1;
        double bucket = argc > 5 ? atof(argv[5]) : 25;
        mn_err e = bench_model(depth, edge, batch, bucket);
        if (e) mn_mpi_abort(MPI_COMM_WORLD, e);
        MPI_Finalize();
        return 0;
    }
    double sizes[16] = {1, 16, 56};
    int ns = 3;
    if (argc > 1) {
        ns = 0;
        for (int i = 1; i < argc && ns < 16; i++) sizes[ns++] = atof(argv[i]);
    }
    /* Ranks sharing this node against its online cores (the launcher may oversubscribe). */
    MPI_Comm node;
    int node_ranks = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &node_ranks);
        MPI_Comm_free(&node);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (rank == 0)
        printf("bench_allreduce: %d ranks (%d on this node of %ld online cores%s), busbw = algbw * 2(P-1)/P, "
               "slowest rank's median\n",
               size, node_ranks, cores, (long)node_ranks > cores ? ": OVERSUBSCRIBED" : "");
    for (int i = 0; i < ns; i++) {
        mn_err e = bench_size(sizes[i], 0);
        if (!e && sizes[i] > 4) e = bench_size(sizes[i], (size_t)4 << 20);
        if (e) mn_mpi_abort(MPI_COMM_WORLD, e);
    }
    MPI_Finalize();
    return 0;
}
