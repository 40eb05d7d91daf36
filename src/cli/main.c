/* main.c: the `mednet` command.  Thin: parses the sub-command, initialises MPI and threads, and hands over to
 * src/train.  Sub-commands: info (threads, BLIS kernels, MPI size), and those added by the later parts. */
#include "mednet/error.h"
#include "mednet/mpicheck.h"
#include "mednet/threads.h"

#include <stdio.h>
#include <string.h>

static void usage(void)
{
    printf("usage: mednet <command> [options]\n"
           "commands:\n"
           "  info                 print version, MPI size, threads and the BLIS kernel set\n"
           "  version              print the version\n");
}

static mn_err cmd_info(void)
{
    int size = 0;
    MN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size));
    MN_CALL(mn_threads_init(mn_threads_resolve(0)));
    mn_log_info("mednet %s", MN_VERSION);
    mn_log_info("MPI ranks: %d", size);
    mn_log_info("threads per rank: %d", mn_threads_count());
    mn_log_info("BLIS kernels: %s (%s)", mn_blis_arch(), mn_blis_arch_reason());
    return MN_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("mednet %s\n", MN_VERSION);
        return 0;
    }
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_err err;
    if (!strcmp(argv[1], "info")) {
        err = cmd_info();
    } else {
        fprintf(stderr, "mednet: unknown command '%s'\n", argv[1]);
        usage();
        err = MN_ERR_ARG;
    }
    if (err) mn_mpi_abort(MPI_COMM_WORLD, err);
    MPI_Finalize();
    return 0;
}
