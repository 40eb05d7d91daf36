/* signals.h: checkpoint-and-requeue on SIGUSR1 / SIGTERM.
 *
 * Slurm sends SIGUSR1 (from `#SBATCH --signal=B:USR1@120`, forwarded by the batch script to the srun step) some
 * time before the wall-clock limit, and SIGTERM on scancel or when the limit is reached.  The handlers only record
 * the signal in a volatile sig_atomic_t; the training loop polls mn_signals_pending() at step boundaries, agrees
 * on it across ranks (mn_dist_agree_flag, MAX), writes a checkpoint, leaves the requeue marker <out_dir>/REQUEUE and
 * exits with MN_EXIT_REQUEUE.  The job scripts requeue on the marker, not on the status, which some launchers lose
 * (DESIGN.md, "Failures").  Nothing else happens inside a handler (no I/O, no MPI).
 */
#ifndef MEDNET_SIGNALS_H
#define MEDNET_SIGNALS_H

#include "mednet/error.h"

/* Exit status of a run that checkpointed on a signal and wants to be requeued (the marker file says the same).
 * Distinct from 0 (done), 1 (agreed error) and MPI_Abort's 10 + code. */
#define MN_EXIT_REQUEUE 99

/* Exit status of a rank ended by the step-progress watchdog (train.watchdog_s): it waited that long for a rank that
 * did not arrive.  The launcher then ends the other ranks (src/train/watchdog.c). */
#define MN_EXIT_WATCHDOG 98

/* Install the SIGUSR1 and SIGTERM handlers (sigaction, SA_RESTART so that interrupted system calls in the loop
 * resume) and clear the pending flag; the previous dispositions are saved for mn_signals_restore.
 * Not collective.  Returns MN_ERR_INTERNAL naming the signal if sigaction fails. */
mn_err mn_signals_install(void);

/* Restore the dispositions saved by mn_signals_install.  Not collective. */
mn_err mn_signals_restore(void);

/* The number of the first signal caught since install/clear (SIGUSR1 or SIGTERM), 0 if none.  Async-signal safe
 * read of a sig_atomic_t; not collective: agree on it with mn_dist_agree_flag before acting. */
int mn_signals_pending(void);

/* Forget a caught signal.  Not collective. */
void mn_signals_clear(void);

/* "SIGUSR1", "SIGTERM" or "signal N" for log lines.  Not collective. */
const char *mn_signals_name(int sig);

#endif
