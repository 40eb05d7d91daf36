/* error.h: error codes, check macros and logging for mednet.
 *
 * Every library function returns an mn_err.  The check macros record file, line and function and print one line
 * per stack level as the error climbs, in the style of PETSc's PetscCall:
 *
 *   [rank 3] src/data/corpus.c:212 mn_corpus_open: H5Dopen2 failed for 'volumes' in /scratch/corpus.h5
 *   [rank 3] src/train/pretrain.c:88 mn_pretrain_run: called from mn_corpus_open(...)
 *
 * Library code never exits: the application decides between a clean collective exit (an error every rank sees the
 * same way) and MPI_Abort (an error only some ranks see).  The MPI and HDF5 variants of the check macro live in
 * mednet/mpicheck.h and mednet/h5check.h so that layers (src/nn, src/model) never see MPI or HDF5 headers.
 *
 * MN_CHECK is always on (user input, file contents, shapes).  MN_ASSERT guards internal invariants in hot loops and
 * compiles out when NDEBUG is defined (Release builds).
 */
#ifndef MEDNET_ERROR_H
#define MEDNET_ERROR_H

#include <stddef.h>

/* Error codes.  MN_OK is zero so that `if (err)` reads naturally. */
typedef enum mn_err {
    MN_OK = 0,
    MN_ERR_ARG,      /* a bad argument or configuration value */
    MN_ERR_SHAPE,    /* tensor shapes that do not fit together */
    MN_ERR_MEM,      /* allocation failure */
    MN_ERR_IO,       /* a file that cannot be opened, read or written */
    MN_ERR_FORMAT,   /* a file whose contents are not what was expected (corrupt, truncated, wrong type) */
    MN_ERR_MPI,      /* an MPI call failed */
    MN_ERR_HDF5,     /* an HDF5 call failed */
    MN_ERR_NIFTI,    /* libnifti could not read a file */
    MN_ERR_CONFIG,   /* a config file or override is malformed, unknown or out of range */
    MN_ERR_NUMERIC,  /* NaN/Inf where finite numbers are required */
    MN_ERR_INTERNAL  /* a broken invariant of mednet itself */
} mn_err;

/* Agreement bits, carried unchanged up the stack by MN_CALL and set ONLY by mn_agree (mednet/mpicheck.h), the one
 * place where ranks compare outcomes:
 *   MN_ERR_AGREED  every rank of the communicator returned this error from the same mn_agree call, so the job can
 *                  end cleanly (MPI_Finalize, exit status 1) instead of in MPI_Abort;
 *   MN_ERR_REMOTE  the error happened on another rank, which printed it; this rank prints nothing more for it.
 * An error without MN_ERR_AGREED may have been seen by this rank alone: the application must end the job with
 * MPI_Abort, or the other ranks may wait forever in their next collective. */
#define MN_ERR_AGREED 0x100
#define MN_ERR_REMOTE 0x200

/* The code without the agreement bits (compare this, not the raw value, with MN_ERR_NUMERIC etc.). */
static inline mn_err mn_err_code(mn_err e) { return (mn_err)((int)e & 0xff); }

/* 1 if every rank returned this error together (see MN_ERR_AGREED). */
static inline int mn_err_is_agreed(mn_err e) { return ((int)e & MN_ERR_AGREED) != 0; }

/* Short name of an error code ("MN_ERR_SHAPE"), agreement bits ignored; never NULL. Not collective. */
const char *mn_err_name(mn_err code);

/* Record the rank printed in front of every message (-1: print no rank).  Called once after MPI_Init. */
void mn_error_set_rank(int rank);

/* The rank set by mn_error_set_rank, or -1. */
int mn_error_rank(void);

/* Silence (quiet = 1) or restore (quiet = 0) the error lines printed by the macros below.  Tests of bad input
 * use it to keep expected failures out of the log; the return codes are unchanged. */
void mn_error_set_quiet(int quiet);

/* Print one error line "[rank r] file:line func: message" to stderr and return `code` unchanged.  Prints nothing for
 * a code carrying MN_ERR_REMOTE (another rank's error, printed there).  Used by the macros; call it directly where a
 * macro does not fit. */
mn_err mn_error_report(mn_err code, const char *file, int line, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The message of the most recent error reported on this thread (empty if none).  Lets tests assert that a
 * bad input was rejected with a message naming the file or layer. */
const char *mn_error_last(void);

/* Call a function returning mn_err; on failure print where it was called from and return the code. */
#define MN_CALL(expr)                                                                                   \
    do {                                                                                                \
        mn_err mn__e = (expr);                                                                          \
        if (mn__e != MN_OK) return mn_error_report(mn__e, __FILE__, __LINE__, __func__, "called from %s", #expr); \
    } while (0)

/* Check a condition that a user, a file or a caller can get wrong; on failure print the message and return. */
#define MN_CHECK(cond, code, ...)                                                                       \
    do {                                                                                                \
        if (!(cond)) return mn_error_report((code), __FILE__, __LINE__, __func__, __VA_ARGS__);        \
    } while (0)

/* Return a new error with a message (no condition). */
#define MN_FAIL(code, ...) return mn_error_report((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

/* Internal invariant, compiled out in Release builds. */
#ifdef NDEBUG
#define MN_ASSERT(cond) ((void)0)
#else
#define MN_ASSERT(cond)                                                                                 \
    do {                                                                                                \
        if (!(cond)) return mn_error_report(MN_ERR_INTERNAL, __FILE__, __LINE__, __func__, "assertion failed: %s", #cond); \
    } while (0)
#endif

/* Informational message, printed by rank 0 only (or always when no rank was set), to stdout. */
void mn_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Warning, printed by every rank that calls it, with its rank, to stderr. */
void mn_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
