/* test_dist_abort.c: a rank that fails on purpose ends the whole job through mn_mpi_abort, quickly, with its
 * message.  The last rank reports an I/O error and aborts after a short delay while every other rank waits in a
 * collective (a barrier on a duplicated communicator, as the training loop would be).  Run through
 * test_dist_abort.sh, which checks the exit status, the message and the elapsed time: this program never exits 0
 * by design (if it does, the abort did not happen). */
#include "mednet/dist.h"
#include "mednet/mpicheck.h"

#include <stdio.h>
#include <time.h>

static mn_err open_missing(void)
{
    FILE *f = fopen("/nonexistent/mednet/corpus.h5", "rb");
    MN_CHECK(f != NULL, MN_ERR_IO, "cannot open corpus '/nonexistent/mednet/corpus.h5' (deliberate test failure)");
    fclose(f);
    return MN_OK;
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    mn_dist *d = NULL;
    if (mn_dist_create(MPI_COMM_WORLD, 0, NULL, &d) != MN_OK) mn_mpi_abort(MPI_COMM_WORLD, MN_ERR_INTERNAL);
    if (rank == size - 1) {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
        mn_err e = open_missing();
        if (e != MN_OK) mn_mpi_abort(d->world, e);
    }
    /* The other ranks wait here; they must be killed by the abort, not hang. */
    MPI_Barrier(d->world);
    printf("rank %d passed the barrier: the failing rank did not abort the job\n", rank);
    mn_dist_destroy(&d);
    MPI_Finalize();
    return 0;
}
