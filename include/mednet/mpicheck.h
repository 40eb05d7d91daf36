/* mpicheck.h: the MPI check macro and the abort policy.  Only src/dist, src/data, src/io, src/train and src/cli
 * include this (layers and models never see MPI).
 *
 * MN_MPI(call) checks an MPI return code; it needs MPI_ERRORS_RETURN on the communicator (set by mn_mpi_init), or
 * MPI aborts inside the call and the check never runs.  The message carries MPI_Error_string's text.
 */
#ifndef MEDNET_MPICHECK_H
#define MEDNET_MPICHECK_H

#include <mpi.h>
#include "mednet/error.h"

/* Report a failed MPI call (used by MN_MPI). */
mn_err mn_mpi_report(int rc, const char *call, const char *file, int line, const char *func);

#define MN_MPI(call)                                                                                    \
    do {                                                                                                \
        int mn__rc = (call);                                                                            \
        if (mn__rc != MPI_SUCCESS) return mn_mpi_report(mn__rc, #call, __FILE__, __LINE__, __func__); \
    } while (0)

/* Expression form of MN_MPI for code that must clean up before returning: evaluates to MN_OK, or reports the
 * failed call (as MN_MPI does) and evaluates to MN_ERR_MPI. */
mn_err mn_mpi_check_rc(int rc, const char *call, const char *file, int line, const char *func);
#define mn_mpi_report_if(call) mn_mpi_check_rc((call), #call, __FILE__, __LINE__, __func__)

/* MPI_Init_thread asking for `required`; fails unless at least that level is provided.  Sets MPI_ERRORS_RETURN on
 * MPI_COMM_WORLD and MPI_COMM_SELF, records the rank for error messages.  Collective on MPI_COMM_WORLD. */
mn_err mn_mpi_init(int *argc, char ***argv, int required);

/* The application's end of an error: print a closing line naming the rank and error, then MPI_Abort(comm) so no
 * other rank is left waiting in a collective.  Never returns.  Use for errors that only some ranks may see. */
_Noreturn void mn_mpi_abort(MPI_Comm comm, mn_err code);

/* Agree on an error: every rank passes its local status; returns MN_OK on every rank if all were MN_OK, else the
 * largest code on every rank (so all ranks take the same branch).  Collective on comm.  If the reduction itself
 * fails, aborts. */
mn_err mn_mpi_agree(MPI_Comm comm, mn_err local);

#endif
