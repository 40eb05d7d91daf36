/* mpicheck.h: the MPI check macro and the abort policy.  Only src/parallel, src/data, src/io, src/train and src/cli
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

/* MPI_Init_thread asking for `required`; fails unless at least that level is provided.  Before it, glibc's malloc is
 * told to keep freed memory (no mmap per large allocation, no trimming; see mpicheck.c: MPI's per-collective
 * temporary buffers otherwise fault their pages in every step) unless MEDNET_MALLOC=system or glibc's own malloc
 * settings are in the environment.  Sets MPI_ERRORS_RETURN on
 * MPI_COMM_WORLD and MPI_COMM_SELF, records the rank for error messages.  Collective on MPI_COMM_WORLD. */
mn_err mn_mpi_init(int *argc, char ***argv, int required);

/* The application's end of an error: print a closing line naming the rank and error, then MPI_Abort(comm) so no
 * other rank is left waiting in a collective.  Never returns.  Use for errors that only some ranks may see. */
_Noreturn void mn_mpi_abort(MPI_Comm comm, mn_err code);

/* ---- error agreement ----------------------------------------------------------------------------------------
 *
 * How a failure on some ranks becomes a clean end of the whole job (in the spirit of PETSc's collective checks):
 *
 *   - LOCAL work is work that makes no collective call on the communicator after something could have failed:
 *     reading this rank's files, parsing, checking, allocating.  Every rank reaches the end of local work whatever
 *     happens inside it, so its outcome can be agreed:  MN_CALL(mn_agree(comm, local_work(...)));
 *   - COLLECTIVE work (a training step, a checkpoint gather) may leave other ranks inside a collective when one rank
 *     fails; its errors are returned without MN_ERR_AGREED and the application ends the job with MPI_Abort.
 *
 * mn_agree is the only function that sets MN_ERR_AGREED, so "was this error agreed" is a property of the value the
 * caller holds, never a flag kept by hand.  An agreement on a sub-communicator is NOT an agreement of the job: call
 * mn_agree on the communicator of the next collective (the world, for anything that ends a run). */

/* Agree on the outcome of local work.  Collective on comm.  Returns MN_OK on every rank if every `local` is MN_OK;
 * otherwise, on every rank, the largest failing code with MN_ERR_AGREED set, plus MN_ERR_REMOTE on the ranks that did
 * not fail themselves (their MN_CALL lines stay silent: the failing rank printed the cause).  Rank 0 of comm, when it
 * did not fail itself, prints one line naming the lowest failing rank.  A local code that is already agreed (from an
 * agreement on a sub-communicator) counts as a failure like any other.  If the reduction itself fails: MPI_Abort. */
mn_err mn_agree(MPI_Comm comm, mn_err local);

/* Former name of mn_agree, same contract. */
static inline mn_err mn_mpi_agree(MPI_Comm comm, mn_err local) { return mn_agree(comm, local); }

/* The application's end of a failed run, collective or not: an agreed error (mn_err_is_agreed) ends with
 * MPI_Finalize and exit status 1 on every rank; any other error ends in mn_mpi_abort(comm).  Never returns. */
_Noreturn void mn_mpi_exit_error(MPI_Comm comm, mn_err e);

#endif
