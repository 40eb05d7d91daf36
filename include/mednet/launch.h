/* launch.h: the launch check.  Did the processes the launcher started join ONE MPI job, or did each become an MPI
 * job of its own (a "singleton") because the launcher and the MPI library do not speak the same process-management
 * interface (PMI)?  The second case is silent without this check: P copies of a one-rank run, each reading and
 * writing the same files.
 *
 * The check is split in two so that every launcher can be tested without launching anything:
 *   mn_launch_decide  a pure function of (environment lookup, MPI_Comm_size, MPI library flavour) -> verdict and
 *                     message; no MPI call, no global state;
 *   mn_launch_check   reads the real environment, MPI_Comm_size and MPI_Get_library_version and calls it.
 *
 * What the launchers put in a process's environment (measured with Open MPI 4.1.4, MPICH 4.0.2's Hydra and
 * Slurm 22.05; the variables are read after MPI_Init, which matters: an Open MPI singleton sets PMIX_RANK and
 * PMIX_NAMESPACE in its own environment, so PMIx variables alone do not say that a launcher was there):
 *   Open MPI mpirun    OMPI_COMM_WORLD_SIZE/_RANK (+ PMIX_*); inside an allocation also the batch step's
 *                      SLURM_NTASKS, which mpirun -n may legitimately differ from
 *   Hydra mpiexec      PMI_SIZE, PMI_RANK, PMI_FD (or PMI_PORT), MPI_LOCALNRANKS; outside Slurm HYDI_CONTROL_FD;
 *   (MPICH, Intel MPI) inside an allocation Hydra starts one proxy per node with srun, so the ranks carry the
 *                      proxy step's SLURM_STEP_NUM_TASKS (the number of nodes, e.g. 1) and its PMIX_* variables
 *   srun --mpi=pmi2    PMI_SIZE, PMI_RANK, PMI_FD and PMI_JOBID (Hydra sets no PMI_JOBID), SLURM_MPI_TYPE=pmi2
 *   srun --mpi=pmix    PMIX_RANK, PMIX_NAMESPACE=slurm.pmix.<job>.<step>, SLURM_MPI_TYPE=pmix
 *   any srun step      SLURM_STEP_ID, SLURM_STEP_NUM_TASKS, SLURM_PROCID, SLURM_JOB_ID
 *   batch script       SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID=0, no SLURM_STEP_ID
 *
 * The decision, in order (the first rule whose variables are present decides):
 *   1. a launcher's own world size (OMPI_COMM_WORLD_SIZE, else PMI_SIZE): equal to MPI_Comm_size -> OK, whatever
 *      Slurm says (mpirun -n 4 in a 2-task allocation, Hydra's 1-task proxy step); different -> WRONG (an MPICH
 *      binary under Open MPI's mpirun, an Open MPI binary under Hydra: each process is a singleton);
 *   2. inside an srun step, SLURM_STEP_NUM_TASKS = T: size == T -> OK; size 1 and T > 1 -> WRONG (srun without a
 *      PMI plugin this MPI speaks); any other size -> OK (an MPI launcher of its own inside the step);
 *   3. in an allocation without a step (mednet started directly in a batch script), SLURM_NTASKS = N: size 1 and
 *      N > 1 -> WRONG (a forgotten srun); otherwise OK;
 *   4. no launcher, no Slurm -> OK (a singleton, or a launcher that leaves no trace).
 * A WRONG verdict needs a size that differs from what the launcher or Slurm says it started; in rules 2 and 3 only
 * a size of 1 counts, because an unknown MPI launcher inside an allocation may start any number of ranks.  Values
 * that are not positive integers are ignored.  The hint names the fix for the MPI library in use (see launch.c) and
 * never repeats the srun --mpi plugin that just failed.
 */
#ifndef MEDNET_LAUNCH_H
#define MEDNET_LAUNCH_H

#include <mpi.h>

#include "mednet/error.h"

/* The MPI library, from MPI_Get_library_version. */
typedef enum mn_mpi_flavour {
    MN_MPI_UNKNOWN = 0,
    MN_MPI_OPENMPI,  /* "Open MPI v4.1.4, ..." */
    MN_MPI_MPICH,    /* "MPICH Version: 4.0.2", also MVAPICH */
    MN_MPI_INTEL,    /* "Intel(R) MPI Library ..." */
    MN_MPI_CRAY      /* "MPI VERSION : CRAY MPICH version ..." */
} mn_mpi_flavour;

/* Who started this process, as far as the environment tells. */
typedef enum mn_launcher {
    MN_LAUNCHER_NONE = 0, /* no launcher and no Slurm variables */
    MN_LAUNCHER_MPIRUN,   /* Open MPI's mpirun/mpiexec (OMPI_COMM_WORLD_SIZE) */
    MN_LAUNCHER_HYDRA,    /* Hydra's mpiexec, MPICH or Intel MPI (PMI_SIZE without PMI_JOBID) */
    MN_LAUNCHER_SRUN,     /* an srun step (SLURM_STEP_NUM_TASKS; PMI_SIZE with PMI_JOBID: srun --mpi=pmi2) */
    MN_LAUNCHER_BATCH     /* a Slurm allocation without a step: a batch script or salloc shell */
} mn_launcher;

/* The verdict and what it was based on. */
typedef struct mn_launch {
    int ok;                  /* 1: the ranks joined as launched; 0: wrong launcher (see message) */
    mn_launcher launcher;
    mn_mpi_flavour flavour;
    int size;                /* MPI_Comm_size */
    long tasks;              /* the number of processes the launcher or Slurm says it started; 0: not known */
    const char *tasks_var;   /* the variable `tasks` came from (a string literal), or NULL */
    char plugin[32];         /* srun's --mpi plugin as far as the environment tells ("pmix", "pmi2"), or "" */
    char library[128];       /* first line of MPI_Get_library_version (mn_launch_check only), or "" */
    char message[768];       /* OK: one line saying what was decided; WRONG: the error and a "---> HINT:" line */
} mn_launch;

/* Environment lookup: the value of `name`, or NULL when it is not set.  ctx is passed through. */
typedef const char *(*mn_launch_getenv_fn)(void *ctx, const char *name);

/* The flavour named by an MPI_Get_library_version string (NULL or unrecognised: MN_MPI_UNKNOWN).  Not collective. */
mn_mpi_flavour mn_launch_flavour(const char *library_version);

/* Short names for messages: "Open MPI", "MPICH", ...; "srun", "mpirun (Open MPI)", ...  Never NULL. */
const char *mn_mpi_flavour_name(mn_mpi_flavour f);
const char *mn_launcher_name(mn_launcher l);

/* Decide from the environment seen through `get` (called with ctx), the MPI world size and the MPI flavour (table
 * above).  Fills every field of *out but `library` (set to "").  Pure: no MPI call, no I/O, the same inputs give
 * the same verdict, so every rank of a job decides alike (the message may name this process's task number). */
void mn_launch_decide(mn_launch_getenv_fn get, void *ctx, int size, mn_mpi_flavour flavour, mn_launch *out);

/* The launch check of a run: mn_launch_decide on the process environment (getenv), MPI_Comm_size(comm) and the
 * flavour of MPI_Get_library_version.  Fills *out if not NULL (also on error).  Returns MN_OK, or MN_ERR_MPI with
 * the message (and its hint) printed for a wrong launcher; MN_ERR_MPI too if an MPI call fails.
 * Not collective: the caller agrees on the outcome, MN_CALL(mn_agree(comm, mn_launch_check(comm, NULL))). */
mn_err mn_launch_check(MPI_Comm comm, mn_launch *out);

#endif
