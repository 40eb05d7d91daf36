/* mpicheck.c: MPI error reporting, initialisation with MPI_ERRORS_RETURN, the abort path and error agreement. */
#include "mednet/mpicheck.h"

#include <stdio.h>
#include <stdlib.h>

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

mn_err mn_mpi_init(int *argc, char ***argv, int required)
{
    int provided = 0, rank = 0;
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
    MPI_Abort(comm, 10 + (int)code);
    exit(1); /* MPI_Abort does not return; keep the compiler honest. */
}

mn_err mn_mpi_agree(MPI_Comm comm, mn_err local)
{
    int in = (int)local, out = 0;
    int rc = MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MAX, comm);
    if (rc != MPI_SUCCESS) {
        mn_mpi_report(rc, "MPI_Allreduce(error agreement)", __FILE__, __LINE__, __func__);
        mn_mpi_abort(comm, MN_ERR_MPI);
    }
    return (mn_err)out;
}
