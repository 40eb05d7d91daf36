/* mpicheck.c: MPI error reporting, initialisation with MPI_ERRORS_RETURN, the abort path and error agreement. */
#include "mednet/mpicheck.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mn_err mn_mpi_report(int rc, const char *call, const char *file, int line, const char *func)
{
    char text[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error code %d", rc);
    return mn_error_report(MN_ERR_MPI, file, line, func, "%s failed: %s", call, text);
}

mn_err mn_mpi_check_rc(int rc, const char *call, const char *file, int line, const char *func)
{
    return rc == MPI_SUCCESS ? MN_OK : mn_mpi_report(rc, call, file, line, func);
}

/* Keep freed memory in the process instead of handing it back to the kernel.  Open MPI allocates a temporary buffer
 * the size of the message inside each large collective (libnbc's Iallreduce, tuned's Allreduce), and glibc serves
 * such sizes with fresh mmaps and trims freed heap back to the kernel, so every step faults the same buffers in
 * again; page faults are costly on virtual machines.  Measured with bench_allreduce, 4 ranks on 2 cores: a
 * blocking 56 MiB MPI_Allreduce took about 400 ms with glibc's defaults and 45 ms with these settings.  mednet's own
 * buffers are allocated once, so the resident size hardly changes.  Not applied when the user tuned glibc's
 * malloc (GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) or set MEDNET_MALLOC=system. */
static void tune_malloc(void)
{
    const char *m = getenv("MEDNET_MALLOC");
    if ((m && !strcmp(m, "system")) || getenv("GLIBC_TUNABLES") || getenv("MALLOC_MMAP_THRESHOLD_") ||
        getenv("MALLOC_TRIM_THRESHOLD_"))
        return;
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

mn_err mn_mpi_init(int *argc, char ***argv, int required)
{
    int provided = 0, rank = 0;
    tune_malloc();
    int rc = MPI_Init_thread(argc, argv, required, &provided);
    if (rc != MPI_SUCCESS) {
        fprintf(stderr, "mednet: MPI_Init_thread failed (code %d)\n", rc);
        return MN_ERR_MPI;
    }
    MN_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MN_MPI(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
    MN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    mn_error_set_rank(rank);
    MN_CHECK(provided >= required, MN_ERR_MPI, "MPI provides thread level %d, mednet needs %d", provided, required);
    return MN_OK;
}

_Noreturn void mn_mpi_abort(MPI_Comm comm, mn_err code)
{
    int rank = mn_error_rank();
    fprintf(stderr, "[rank %d] mednet: fatal error %s on this rank; aborting the job\n", rank, mn_err_name(code));
    fflush(stderr);
    fflush(stdout);
    MPI_Abort(comm, 10 + (int)mn_err_code(code));
    exit(1); /* MPI_Abort does not return; keep the compiler honest. */
}

mn_err mn_agree(MPI_Comm comm, mn_err local)
{
    int rank = 0;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS) mn_mpi_abort(comm, MN_ERR_MPI);
    /* MAXLOC: the largest code, and the lowest rank that has it. */
    struct {
        int code, rank;
    } in = {(int)mn_err_code(local), rank}, out = {0, 0};
    int rc = MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MAXLOC, comm);
    if (rc != MPI_SUCCESS) {
        mn_mpi_report(rc, "MPI_Allreduce(error agreement)", __FILE__, __LINE__, __func__);
        mn_mpi_abort(comm, MN_ERR_MPI);
    }
    if (out.code == MN_OK) return MN_OK;
    if (local != MN_OK) return (mn_err)(out.code | MN_ERR_AGREED);
    if (rank == 0) {
        int wrank = out.rank;
        MPI_Group g = MPI_GROUP_NULL, gw = MPI_GROUP_NULL;
        if (MPI_Comm_group(comm, &g) == MPI_SUCCESS && MPI_Comm_group(MPI_COMM_WORLD, &gw) == MPI_SUCCESS)
            MPI_Group_translate_ranks(g, 1, &out.rank, gw, &wrank);
        if (g != MPI_GROUP_NULL) MPI_Group_free(&g);
        if (gw != MPI_GROUP_NULL) MPI_Group_free(&gw);
        fprintf(stderr, "[rank %d] mednet: stopping every rank: rank %d failed with %s (its message above)\n",
                mn_error_rank(), wrank, mn_err_name((mn_err)out.code));
        fflush(stderr);
    }
    return (mn_err)(out.code | MN_ERR_AGREED | MN_ERR_REMOTE);
}

_Noreturn void mn_mpi_exit_error(MPI_Comm comm, mn_err e)
{
    if (!mn_err_is_agreed(e)) mn_mpi_abort(comm, mn_err_code(e));
    fflush(stdout);
    MPI_Finalize();
    exit(1);
}
