/* test_blis_shared: under MPI, rank 0 chooses the BLIS kernel set and every rank runs it
 * (mn_threads_init_comm).  In a fresh cache directory: all ranks report the same set, the other ranks say the
 * choice came from rank 0, and the cache holds one line (one measurement, not one per rank). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mednet/mpicheck.h"
#include "mednet/threads.h"
#include "test_util.h"

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char dir[64] = "/tmp/mednet-blis-mpi-XXXXXX", path[128];
    if (rank == 0 && !mkdtemp(dir)) MPI_Abort(MPI_COMM_WORLD, 2);
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    setenv("XDG_CACHE_HOME", dir, 1);
    unsetenv("MEDNET_BLIS_CANDIDATES");
    unsetenv("MEDNET_BLIS_ARCH");
    unsetenv("BLIS_ARCH_TYPE");
    snprintf(path, sizeof path, "%s/mednet/blis-kernels", dir);

    TEST_EXPECT(mn_threads_init_comm(1, MPI_COMM_WORLD) == MN_OK, "mn_threads_init_comm");
    char mine[32] = "", all[64][32];
    snprintf(mine, sizeof mine, "%s", mn_blis_arch());
    if (size <= 64) MPI_Gather(mine, 32, MPI_CHAR, all, 32, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("rank 0: %s (%s)\n", mine, mn_blis_arch_reason());
        for (int r = 1; r < size && r < 64; r++)
            TEST_EXPECT(strcmp(all[r], mine) == 0, "rank %d runs %s, rank 0 %s", r, all[r], mine);
        FILE *f = fopen(path, "r");
        int lines = 0, c;
        while (f && (c = fgetc(f)) != EOF) lines += c == '\n';
        if (f) fclose(f);
        TEST_EXPECT(lines == 1, "one measurement cached in %s, found %d lines", path, lines);
    } else {
        TEST_EXPECT(strstr(mn_blis_arch_reason(), "chosen by rank 0") != NULL, "rank %d: %s", rank,
                    mn_blis_arch_reason());
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char sub[96];
        unlink(path);
        snprintf(sub, sizeof sub, "%s/mednet", dir);
        rmdir(sub);
        rmdir(dir);
    }
    int fails = mn_test_failures, total = 0;
    MPI_Allreduce(&fails, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (total && !mn_test_failures) mn_test_failures = 1;
    return mn_test_finish("test_blis_shared");
}
