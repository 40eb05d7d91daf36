/* lock.h: one run per output folder.
 *
 * Two runs writing into the same train.out_dir destroy each other: both write ckpt-<step>.h5.tmp under the same
 * names, each prunes the other's checkpoints, and metrics.jsonl interleaves two runs.  A run therefore takes the
 * folder before it writes anything into it, and gives it back at its end.
 *
 * The lock is a small text file `<dir>/.mednet.lock` written by rank 0, one `key=value` per line:
 *
 *   host=<gethostname()>            boot_id=<this boot of that host, from /proc; may be empty>
 *   pid=<process id of rank 0>      proc_start=<the process's start time in clock ticks since boot; may be 0>
 *   slurm_job_id=<SLURM_JOB_ID, may be empty>          slurm_cluster=<SLURM_CLUSTER_NAME, may be empty>
 *   slurm_array_job_id=<...>        slurm_array_task_id=<...>        slurm_step_id=<...>   (may be empty)
 *   start=<local time, "2024-05-01 12:00:00 +0200">    start_unix=<seconds since the epoch>
 *   nonce=<random hex: tells this holder's file apart from a later one with the same host and pid>
 *
 * Unknown keys are ignored, so later versions can add lines.  The file is created complete, under a private name,
 * and published with link(2), which fails if `.mednet.lock` exists: no reader ever sees a half-written lock, and the
 * creation is atomic on local and network file systems alike.
 *
 * When the file exists, its holder is judged:
 *   - holder on THIS host (same host name; a different boot_id means the host rebooted since, so the holder is
 *     gone): it is alive if kill(pid, 0) does not fail with ESRCH and, when both are known, its /proc start time
 *     still matches proc_start (a recycled pid is not the holder).  Alive: refused.  Gone: taken over.
 *   - holder on ANOTHER host with the same Slurm job (same SLURM_JOB_ID and cluster): taken over.  Slurm keeps the
 *     job id when it requeues a job, and a job step that crashed on one node of the allocation left the lock
 *     behind for the next step, whose rank 0 may sit on another node.
 *   - holder on another host in another Slurm job: refused.  It may be running; mednet cannot ask.
 *   - holder on another host outside Slurm: refused, saying that it cannot be checked from here.
 * A refusal names the holder and what to do:
 *   output folder run/pt is in use by job 1234 (host n17, pid 4711, since 2024-05-01 12:00:00 +0200); ---> HINT:
 *   use another train.out_dir, or remove run/pt/.mednet.lock if that job is gone
 * Taking over replaces the file atomically (a complete private file renamed over it), after reading the file once
 * more to make sure it still names the holder that was judged, and reads it back to make sure it now names this run.
 *
 * Limits, on purpose: two job steps of ONE Slurm job running at the same time on one folder are not told apart
 * when their rank 0 processes sit on different nodes (same job id); two runs breaking the same stale lock in the
 * same instant can both win (each re-reads just before and just after its rename, so the window is microseconds).
 * flock/fcntl locks were rejected: they are not honoured on every parallel file system (Lustre and GPFS need mount
 * options), vanish with the process (so a refusal cannot say who holds the folder), and do not survive a requeue.
 */
#ifndef MEDNET_LOCK_H
#define MEDNET_LOCK_H

#include <mpi.h>

#include "mednet/error.h"

/* The name of the lock file inside the output folder. */
#define MN_OUTDIR_LOCK_NAME ".mednet.lock"

/* A held output-folder lock (the function that takes it is mn_outdir_lock, so the type has the short name). */
typedef struct mn_lock mn_lock;

/* Take output folder `dir` (which must exist: create it first) for this run.  Collective on comm: rank 0 reads the
 * environment and takes or refuses the lock as described above, every other rank only waits for the outcome, which
 * is agreed with mn_agree over comm.  So on error EVERY rank of comm returns the same code with MN_ERR_AGREED
 * (a refusal is MN_ERR_IO; rank 0 printed the message naming the holder, the others return with MN_ERR_REMOTE), no
 * lock is held, the existing lock file is untouched, and *out is NULL: the application can end the job cleanly.
 * On success *out is the lock on every rank (rank 0's copy owns the file); release it with mn_outdir_unlock.
 * Taking over a stale lock is logged by rank 0 as a warning naming the former holder. */
mn_err mn_outdir_lock(MPI_Comm comm, const char *dir, mn_lock **out);

/* Whether this run still holds its output folder: *held = 1 while the lock file is there and names this run, 0
 * when the folder or the lock file was removed, or another run's lock replaced it.  Meaningful on the rank that
 * owns the file (rank 0 of the communicator that took it); every other rank gets *held = 1.  Not collective: the
 * caller agrees on the answer.  A lock file that cannot be read is MN_ERR_IO naming it. */
mn_err mn_outdir_lock_held(const mn_lock *lk, int *held);

/* Release the lock: on rank 0 of the communicator that took it, remove the lock file if it still names this run
 * (a lock that another run has since taken over is left alone, with a warning).  Frees *lk and sets it to NULL;
 * accepts NULL and *lk == NULL.  NOT collective (no rank waits for another), so it is safe on error paths that
 * end in MPI_Abort; call it on every rank after the run's last write into the folder.  A lock file that cannot be
 * removed is MN_ERR_IO naming it (the lock is freed all the same). */
mn_err mn_outdir_unlock(mn_lock **lk);

#endif
