/* test_reducer_pattern.c: the driver of test_reducer_pattern.sh, which checks the message pattern of the bucketed
 * reducer (src/parallel/reducer.c) with Open MPI's PML monitoring.
 *
 * It runs NSTEPS reducer steps over a 4 MiB gradient in four 1 MiB buckets, declared ready in 64 KiB "layers" from
 * the end with a progress call after each (as the backward pass does), and checks after each step that the range
 * holds the mean over the ranks of known per-rank data (exact: the data are multiples of 1/8) and that the stats
 * give 4 buckets and P samples.  The second step reuses the reducer, as training does.  Nothing else here moves
 * more than a few bytes (a communicator duplicate, a barrier, the reduction of the error), so the bytes the
 * monitoring counts are the reducer's: rank 0 prints "pattern: bytes B steps S" for the script to compare with.
 * Exits non-zero on a wrong result.  Runs on any number of ranks without monitoring too.
 */
#include "mednet/dist.h"
#include "mednet/mem.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

enum { NSTEPS = 2 };

static int rank, size;

/* Rank- and step-dependent data with an exactly representable sum: small integers times 1/8. */
static float value(size_t i, int r, int step)
{
    return (float)((i * 7 + (size_t)r * 13 + (size_t)step * 5) % 64) * 0.125f;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    /* The reducer on its own communicator, as in training. */
    MPI_Comm comm;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &comm) != MPI_SUCCESS) mn_mpi_abort(MPI_COMM_WORLD, MN_ERR_MPI);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    const size_t n = (size_t)1 << 20, bytes = n * sizeof(float), layer = (size_t)16 << 10;
    float *g = NULL;
    mn_reducer *r = NULL;
    mn_err e = mn_malloc(bytes, "test gradient", (void **)&g);
    if (!e) e = mn_reducer_create(comm, g, (mn_range){0, n}, (size_t)1 << 20, NULL, &r);
    if (e) mn_mpi_abort(MPI_COMM_WORLD, e);

    double worst = 0;
    for (int step = 0; step < NSTEPS; step++) {
        for (size_t i = 0; i < n; i++) g[i] = value(i, rank, step);
        mn_reducer_stats st;
        e = mn_reducer_start(r, 1.0);
        for (size_t hi = n; hi > 0 && !e; hi -= layer) {
            e = mn_reducer_ready(r, hi - layer, layer);
            if (!e) e = mn_reducer_progress(r);
        }
        if (!e) e = mn_reducer_finish(r, &st);
        if (e) mn_mpi_abort(MPI_COMM_WORLD, e);
        for (size_t i = 0; i < n; i++) {
            double want = 0;
            for (int p = 0; p < size; p++) want += value(i, p, step);
            double err = mn_test_relerr(g[i], want / size, 1e-3);
            if (err > worst) worst = err;
        }
        TEST_EXPECT(st.nbuckets == 4 && st.total_samples == size, "step %d stats: %d buckets, %g samples", step,
                    st.nbuckets, st.total_samples);
    }
    MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    TEST_EXPECT(worst < 1e-6, "reduced gradient differs from the mean over the ranks: rel err %.3g", worst);
    if (rank == 0)
        printf("pattern: bytes %zu steps %d buckets %d ranks %d; mean over the ranks correct to rel err %.1e\n",
               bytes, NSTEPS, mn_reducer_nbuckets(r), size, worst);

    mn_reducer_destroy(&r);
    mn_free(&g);
    MPI_Comm_free(&comm);
    int fails = mn_test_failures, any = 0;
    MPI_Allreduce(&fails, &any, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (any && !fails) {
        fprintf(stderr, "test_reducer_pattern: a check failed on another rank\n");
        return 1;
    }
    if (rank != 0 && !fails) return 0;
    return mn_test_finish("test_reducer_pattern");
}
