/* test_corpus_open_fault DIR (under mpiexec -n 3): a corpus file that only some ranks cannot open ends the open on
 * every rank with an agreed error, quickly, instead of leaving the others waiting inside a collective open.
 * DIR holds np1.h5 (written by test_corpus_np1).  Each case gives one rank a bad path and checks that every rank
 * returns from mn_corpus_open (or mn_shard_load) with the same code, agreed (mn_err_is_agreed), with
 * MN_ERR_REMOTE on the ranks that could open the file, and within MAX_SECONDS:
 *   - rank 1 passes a path that does not exist (ENOENT);
 *   - rank 0 passes a path that does not exist (the rank that would read the metadata);
 *   - rank 2 passes a directory (EISDIR);
 *   - rank 1 passes a file that is not HDF5 (no signature);
 *   - rank 2 passes another, smaller HDF5 file (the ranks do not see the same file);
 *   - the corpus opens on every rank, then rank 1's copy of the path goes wrong before mn_shard_load
 *     (the collective MPI-IO open of the shard load).
 * The ctest TIMEOUT turns a hang into a failure.  Prints the time from the call to the return, per case. */
#include "mednet/corpus.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

#include <string.h>

#define MAX_SECONDS 10.0

static int rank, size;

/* Every rank got the same code, agreed; MN_ERR_REMOTE exactly on the ranks that did not fail themselves. */
static void expect_agreed(const char *name, mn_err e, mn_err want, int failing_rank, double seconds)
{
    int code = (int)mn_err_code(e), mx = 0, mnv = 0;
    double worst = 0;
    MPI_Allreduce(&code, &mx, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&code, &mnv, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&seconds, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    TEST_EXPECT(mn_err_code(e) == want && mn_err_is_agreed(e) && mx == mnv, "%s: rank %d returned %s (agreed %d), "
                "want %s agreed on every rank", name, rank, mn_err_name(e), mn_err_is_agreed(e), mn_err_name(want));
    int remote = ((int)e & MN_ERR_REMOTE) != 0;
    TEST_EXPECT(remote == (rank != failing_rank), "%s: rank %d has MN_ERR_REMOTE = %d", name, rank, remote);
    /* The failing rank says what it saw; rank 0 (last) lists the failing rank with its reason. */
    if (rank == failing_rank && rank != 0)
        TEST_EXPECT(strstr(mn_error_last(), "on this rank") != NULL, "%s: the failing rank's message does not "
                    "name the rank's view: %s", name, mn_error_last());
    char who[32];
    snprintf(who, sizeof who, "rank %d: ", failing_rank);
    if (rank == 0)
        TEST_EXPECT(strstr(mn_error_last(), who) != NULL, "%s: rank 0's summary does not name %s: %s", name, who,
                    mn_error_last());
    TEST_EXPECT(worst < MAX_SECONDS, "%s: took %.3f s", name, worst);
    if (rank == 0) printf("%-44s -> %s on every rank, agreed, fault to return %.4f s (slowest rank)\n", name,
                          mn_err_name(mn_err_code(e)), worst);
    fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);
}

static mn_err timed_open(const char *path, mn_corpus_info **info, double *seconds)
{
    double t0 = MPI_Wtime();
    mn_err e = mn_corpus_open(MPI_COMM_WORLD, path, info);
    *seconds = MPI_Wtime() - t0;
    return e;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 2 || size < 3) {
        fprintf(stderr, "usage: mpiexec -n 3 test_corpus_open_fault DIR\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char good[512], missing[512], text[1100], other[1100];
    snprintf(good, sizeof good, "%s/np1.h5", argv[1]);
    snprintf(missing, sizeof missing, "%s/no_such_dir/np1.h5", argv[1]);
    snprintf(text, sizeof text, "%s/open_fault_text.h5", argv[1]);
    snprintf(other, sizeof other, "%s/np1_trunc.h5", argv[1]); /* an HDF5 signature, half the size */
    if (rank == 0) {
        FILE *f = fopen(text, "w");
        if (f) fputs("this is not an HDF5 file, although its name ends in .h5\n", f), fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    struct {
        const char *name;
        int rank;            /* the rank with the bad path */
        const char *path;    /* its path */
        mn_err want;
    } cases[] = {
        {"rank 1: missing file", 1, missing, MN_ERR_IO},
        {"rank 0: missing file", 0, missing, MN_ERR_IO},
        {"rank 2: a directory", 2, argv[1], MN_ERR_IO},
        {"rank 1: not an HDF5 file", 1, text, MN_ERR_FORMAT},
        {"rank 2: another HDF5 file (other size)", 2, other, MN_ERR_FORMAT},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mn_corpus_info *info = NULL;
        double dt = 0;
        mn_err e = timed_open(rank == cases[c].rank ? cases[c].path : good, &info, &dt);
        TEST_EXPECT(!info, "%s: info returned on error", cases[c].name);
        expect_agreed(cases[c].name, e, cases[c].want, cases[c].rank, dt);
        mn_corpus_info_destroy(&info);
    }

    /* The shard load opens the file again, collectively: a path that went wrong on one rank since the open. */
    mn_corpus_info *info = NULL;
    double dt = 0;
    mn_err e = timed_open(good, &info, &dt);
    TEST_EXPECT(e == MN_OK && info, "good corpus opens on every rank: %s", mn_err_name(e));
    mn_shard_plan *plan = NULL;
    mn_shard *shard = NULL;
    if (info && mn_shard_assign(info, size, 0, MN_ROLE_PRETRAIN, &plan) == MN_OK) {
        if (rank == 1) snprintf(info->path, sizeof info->path, "%s", missing);
        double t0 = MPI_Wtime();
        e = mn_shard_load(MPI_COMM_WORLD, info, plan, &shard);
        expect_agreed("rank 1: path gone before mn_shard_load", e, MN_ERR_IO, 1, MPI_Wtime() - t0);
        mn_shard_destroy(&shard);
        /* And with the right path everywhere the same plan loads. */
        snprintf(info->path, sizeof info->path, "%s", good);
        e = mn_shard_load(MPI_COMM_WORLD, info, plan, &shard);
        TEST_EXPECT(e == MN_OK && shard, "shard load after a failed one: %s", mn_err_name(e));
    } else {
        TEST_EXPECT(0, "shard plan for %d ranks", size);
    }
    mn_shard_destroy(&shard);
    mn_shard_plan_destroy(&plan);
    mn_corpus_info_destroy(&info);

    int local = mn_test_failures, total = 0;
    MPI_Allreduce(&local, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank != 0) return total ? 1 : 0;
    mn_test_failures = total;
    return mn_test_finish("test_corpus_open_fault");
}
