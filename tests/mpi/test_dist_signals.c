/* test_dist_signals.c: the signal flag and its agreement across ranks (src/train/signals.c + mn_dist_agree_flag).
 * The last rank receives SIGUSR1 (raise), every rank must agree to stop; then SIGTERM on rank 0; the first caught
 * signal wins; restore puts the previous disposition back. */
#include "mednet/dist.h"
#include "mednet/mpicheck.h"
#include "mednet/signals.h"
#include "test_util.h"

#include <signal.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    int rank = 0, size = 0, stop = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    TEST_EXPECT(mn_signals_install() == MN_OK, "install failed");
    TEST_EXPECT(mn_signals_pending() == 0, "a signal is pending right after install");
    TEST_EXPECT(mn_dist_agree_flag(MPI_COMM_WORLD, mn_signals_pending() != 0, &stop) == MN_OK && stop == 0,
                "agreed to stop without a signal");

    if (rank == size - 1) raise(SIGUSR1);
    TEST_EXPECT(mn_signals_pending() == (rank == size - 1 ? SIGUSR1 : 0), "pending %d on rank %d",
                mn_signals_pending(), rank);
    TEST_EXPECT(mn_dist_agree_flag(MPI_COMM_WORLD, mn_signals_pending() != 0, &stop) == MN_OK && stop == 1,
                "ranks did not agree to stop after SIGUSR1 on rank %d", size - 1);
    if (rank == size - 1) {
        raise(SIGTERM); /* the first signal wins */
        TEST_EXPECT(mn_signals_pending() == SIGUSR1, "a later SIGTERM replaced SIGUSR1");
        TEST_EXPECT(!strcmp(mn_signals_name(mn_signals_pending()), "SIGUSR1"), "name %s",
                    mn_signals_name(mn_signals_pending()));
    }
    mn_signals_clear();
    if (rank == 0) raise(SIGTERM);
    TEST_EXPECT(mn_dist_agree_flag(MPI_COMM_WORLD, mn_signals_pending() == SIGTERM, &stop) == MN_OK && stop == 1,
                "ranks did not agree after SIGTERM on rank 0");
    TEST_EXPECT(MN_EXIT_REQUEUE == 99, "requeue status changed: jobs/*.sbatch must change with it");

    /* After restore, SIG_IGN installed beforehand must be back. */
    mn_signals_clear();
    TEST_EXPECT(mn_signals_restore() == MN_OK, "restore failed");
    struct sigaction old;
    signal(SIGUSR1, SIG_IGN);
    TEST_EXPECT(mn_signals_install() == MN_OK && mn_signals_restore() == MN_OK, "install/restore failed");
    sigaction(SIGUSR1, NULL, &old);
    TEST_EXPECT(old.sa_handler == SIG_IGN, "restore did not bring back the previous disposition");

    int fails = 0;
    MPI_Allreduce(&mn_test_failures, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    mn_test_failures = fails;
    MPI_Finalize();
    return rank == 0 ? mn_test_finish("test_dist_signals") : (fails ? 1 : 0);
}
