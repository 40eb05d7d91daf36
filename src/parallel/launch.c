/* launch.c: the launch check (mednet/launch.h has the decision table and the environment each launcher sets).
 *
 * mn_launch_decide reads variables only through the caller's lookup so that tests can feed it the environment of
 * any launcher; mn_launch_check is the thin wrapper over getenv.  The hints per MPI library, for a job whose ranks
 * did not join (each one a singleton):
 *   Open MPI   srun --mpi=pmix (Debian's Open MPI has no PMI-2: --mpi=pmi2 fails inside MPI_Init), or mpirun
 *              inside the allocation; when pmix is what just failed, only mpirun;
 *   MPICH      srun --mpi=pmi2 (Debian's MPICH has no PMIx), or Hydra's mpiexec inside the allocation; when pmi2
 *              is what just failed, only mpiexec;
 *   Intel MPI  I_MPI_PMI_LIBRARY=/path/to/libpmi2.so with srun --mpi=pmi2, or its mpiexec.hydra;
 *   Cray MPICH srun --mpi=cray_shasta;
 *   unknown    the plugin of the other family (srun --mpi=list shows what this Slurm has), or the MPI's launcher.
 * A binary started by the launcher of another MPI library (an MPICH build under Open MPI's mpirun) is told to use
 * its own library's launcher.
 */
#include "mednet/launch.h"
#include "mednet/mpicheck.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A positive integer value of `name`, or 0 when it is unset, empty or not a positive integer. */
static long env_count(mn_launch_getenv_fn get, void *ctx, const char *name)
{
    const char *v = get(ctx, name);
    if (!v || !*v) return 0;
    char *end = NULL;
    long n = strtol(v, &end, 10);
    return (end && *end == '\0' && n > 0) ? n : 0;
}

/* 1 if `name` is set (possibly empty). */
static int env_set(mn_launch_getenv_fn get, void *ctx, const char *name) { return get(ctx, name) != NULL; }

/* Append to the message (truncates silently: the buffer is sized for the longest hint). */
static void say(mn_launch *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(mn_launch *o, const char *fmt, ...)
{
    size_t len = strlen(o->message);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->message + len, sizeof o->message - len, fmt, ap);
    va_end(ap);
}

/* " (task N)" from the first rank variable present, for messages only (never for the verdict). */
static void task_of(mn_launch_getenv_fn get, void *ctx, char *buf, size_t n)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"};
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = get(ctx, vars[i]);
        if (v && *v) {
            snprintf(buf, n, " (this is task %s)", v);
            return;
        }
    }
}

/* The hint for ranks that srun started (or would start) but that did not join: per MPI flavour, never repeating
 * the plugin in use (`plugin`, "" when unknown or none). */
static void hint_srun(mn_launch *o, const char *plugin)
{
    int pmix = !strcmp(plugin, "pmix"), pmi2 = !strcmp(plugin, "pmi2");
    say(o, "\n---> HINT: ");
    switch (o->flavour) {
    case MN_MPI_OPENMPI:
        if (pmix)
            say(o, "srun --mpi=pmix did not connect this Open MPI (its PMIx and Slurm's differ?): start the ranks "
                   "with Open MPI's mpirun inside the allocation (mpirun mednet ...).");
        else
            say(o, "use srun --mpi=pmix mednet ... (Open MPI speaks PMIx; Debian's Open MPI has no PMI-2), or Open "
                   "MPI's mpirun inside the allocation.");
        break;
    case MN_MPI_MPICH:
        if (pmi2)
            say(o, "srun --mpi=pmi2 did not connect this MPICH: start the ranks with MPICH's mpiexec (Hydra) inside "
                   "the allocation (mpiexec -n %ld mednet ...).", o->tasks);
        else
            say(o, "use srun --mpi=pmi2 mednet ... (MPICH speaks PMI-2%s), or MPICH's mpiexec (Hydra) inside the "
                   "allocation.", pmix ? "; this MPICH has no PMIx" : "");
        break;
    case MN_MPI_INTEL:
        say(o, "set I_MPI_PMI_LIBRARY=/path/to/libpmi2.so (Slurm's PMI-2 library) and use srun --mpi=pmi2 "
               "mednet ..., or Intel MPI's mpiexec.hydra inside the allocation.");
        break;
    case MN_MPI_CRAY:
        if (!strcmp(plugin, "cray_shasta"))
            say(o, "srun --mpi=cray_shasta did not connect: check that the Cray PE modules loaded now are the ones "
                   "mednet was built with.");
        else
            say(o, "use srun --mpi=cray_shasta mednet ... (Cray MPICH's PMI).");
        break;
    default:
        if (pmix)
            say(o, "srun --mpi=pmix did not work with this MPI: try srun --mpi=pmi2 (srun --mpi=list shows the "
                   "plugins), or this MPI's own mpirun/mpiexec inside the allocation.");
        else if (pmi2)
            say(o, "srun --mpi=pmi2 did not work with this MPI: try srun --mpi=pmix (srun --mpi=list shows the "
                   "plugins), or this MPI's own mpirun/mpiexec inside the allocation.");
        else
            say(o, "use srun --mpi=pmix or srun --mpi=pmi2, whichever this MPI speaks (srun --mpi=list shows the "
                   "plugins), or this MPI's own mpirun/mpiexec inside the allocation.");
        break;
    }
}

/* The hint for ranks started by an MPI launcher (Open MPI's mpirun, Hydra) that did not join. */
static void hint_launcher(mn_launch *o)
{
    int mine = (o->launcher == MN_LAUNCHER_MPIRUN && o->flavour == MN_MPI_OPENMPI) ||
               (o->launcher == MN_LAUNCHER_HYDRA &&
                (o->flavour == MN_MPI_MPICH || o->flavour == MN_MPI_INTEL || o->flavour == MN_MPI_CRAY));
    say(o, "\n---> HINT: ");
    if (mine) {
        say(o, "this launcher belongs to another %s installation than the one mednet is linked with: use the "
               "launcher of mednet's MPI (check `which mpiexec` against `ldd mednet`).",
            mn_mpi_flavour_name(o->flavour));
        return;
    }
    switch (o->flavour) {
    case MN_MPI_OPENMPI:
        say(o, "mednet is linked with Open MPI: start it with Open MPI's mpirun (mpirun.openmpi on Debian) or "
               "srun --mpi=pmix.");
        break;
    case MN_MPI_MPICH:
        say(o, "mednet is linked with MPICH: start it with MPICH's mpiexec (mpiexec.mpich on Debian) or "
               "srun --mpi=pmi2.");
        break;
    case MN_MPI_INTEL:
        say(o, "mednet is linked with Intel MPI: start it with Intel MPI's mpiexec.hydra, or srun --mpi=pmi2 with "
               "I_MPI_PMI_LIBRARY=/path/to/libpmi2.so.");
        break;
    case MN_MPI_CRAY:
        say(o, "mednet is linked with Cray MPICH: start it with srun --mpi=cray_shasta.");
        break;
    default:
        say(o, "start mednet with the mpirun/mpiexec of the MPI library it is linked with (see `ldd mednet`), or "
               "with srun and the --mpi plugin that library speaks.");
        break;
    }
}

mn_mpi_flavour mn_launch_flavour(const char *v)
{
    if (!v) return MN_MPI_UNKNOWN;
    /* Order matters: Cray's and Intel's strings name MPICH too. */
    if (strstr(v, "Open MPI")) return MN_MPI_OPENMPI;
    if (strstr(v, "CRAY MPICH") || strstr(v, "Cray MPICH")) return MN_MPI_CRAY;
    if (strstr(v, "Intel(R) MPI") || strstr(v, "Intel MPI")) return MN_MPI_INTEL;
    if (strstr(v, "MPICH") || strstr(v, "MVAPICH")) return MN_MPI_MPICH;
    return MN_MPI_UNKNOWN;
}

const char *mn_mpi_flavour_name(mn_mpi_flavour f)
{
    switch (f) {
    case MN_MPI_OPENMPI: return "Open MPI";
    case MN_MPI_MPICH: return "MPICH";
    case MN_MPI_INTEL: return "Intel MPI";
    case MN_MPI_CRAY: return "Cray MPICH";
    default: return "unknown MPI";
    }
}

const char *mn_launcher_name(mn_launcher l)
{
    switch (l) {
    case MN_LAUNCHER_MPIRUN: return "mpirun (Open MPI)";
    case MN_LAUNCHER_HYDRA: return "mpiexec (Hydra)";
    case MN_LAUNCHER_SRUN: return "srun";
    case MN_LAUNCHER_BATCH: return "Slurm allocation without srun";
    default: return "none";
    }
}

void mn_launch_decide(mn_launch_getenv_fn get, void *ctx, int size, mn_mpi_flavour flavour, mn_launch *o)
{
    memset(o, 0, sizeof *o);
    o->ok = 1;
    o->flavour = flavour;
    o->size = size;
    char task[64];
    task_of(get, ctx, task, sizeof task);

    /* srun's PMI plugin: SLURM_MPI_TYPE when srun exported it, else recognised by its traces. */
    const char *mpi_type = get(ctx, "SLURM_MPI_TYPE");
    const char *ns = get(ctx, "PMIX_NAMESPACE");
    if (mpi_type && *mpi_type)
        snprintf(o->plugin, sizeof o->plugin, "%s", mpi_type);
    else if (env_set(get, ctx, "PMI_JOBID"))
        snprintf(o->plugin, sizeof o->plugin, "pmi2");
    else if (ns && !strncmp(ns, "slurm.pmix.", 11))
        snprintf(o->plugin, sizeof o->plugin, "pmix");

    /* 1. The launcher's own world size decides first. */
    long n = env_count(get, ctx, "OMPI_COMM_WORLD_SIZE");
    if (n) {
        o->launcher = MN_LAUNCHER_MPIRUN;
        o->tasks_var = "OMPI_COMM_WORLD_SIZE";
    } else if ((n = env_count(get, ctx, "PMI_SIZE")) != 0) {
        /* Slurm's pmi2 plugin sets PMI_JOBID (job.step); Hydra does not. */
        o->launcher = env_set(get, ctx, "PMI_JOBID") ? MN_LAUNCHER_SRUN : MN_LAUNCHER_HYDRA;
        o->tasks_var = "PMI_SIZE";
    }
    if (n) {
        o->tasks = n;
        const char *who = o->launcher == MN_LAUNCHER_SRUN ? "srun --mpi=pmi2" : mn_launcher_name(o->launcher);
        if (n == size) {
            say(o, "%s started %ld rank%s (%s=%ld)", who, n, n == 1 ? "" : "s", o->tasks_var, n);
            return;
        }
        o->ok = 0;
        say(o, "MPI world size is %d but %s=%ld%s: %s started %ld processes and they did not join one %s job "
               "(each is an MPI job of its own).", size, o->tasks_var, n, task, who, n,
            mn_mpi_flavour_name(flavour));
        if (o->launcher == MN_LAUNCHER_SRUN)
            hint_srun(o, "pmi2");
        else
            hint_launcher(o);
        return;
    }

    /* 2. Inside an srun step: the step's task count. */
    int in_step = env_set(get, ctx, "SLURM_STEP_ID") || env_set(get, ctx, "SLURM_STEP_NUM_TASKS");
    if (in_step && (n = env_count(get, ctx, "SLURM_STEP_NUM_TASKS")) != 0) {
        o->launcher = MN_LAUNCHER_SRUN;
        o->tasks = n;
        o->tasks_var = "SLURM_STEP_NUM_TASKS";
        const char *plug = o->plugin[0] ? o->plugin : "";
        if (n == size) {
            say(o, "srun%s%s started %ld task%s (SLURM_STEP_NUM_TASKS=%ld)", *plug ? " --mpi=" : "", plug, n,
                n == 1 ? "" : "s", n);
            return;
        }
        if (size == 1) {
            o->ok = 0;
            say(o, "MPI world size is 1 but SLURM_STEP_NUM_TASKS=%ld%s: srun%s%s gave the tasks no "
                   "process-management interface this %s speaks, so each task is an MPI job of its own.", n, task,
                *plug ? " --mpi=" : "", plug, mn_mpi_flavour_name(flavour));
            hint_srun(o, plug);
            return;
        }
        say(o, "%d ranks inside an srun step of %ld task%s: started by an MPI launcher inside the step", size, n,
            n == 1 ? "" : "s");
        return;
    }

    /* 3. In an allocation without a step: mednet started directly in the batch script (or salloc shell). */
    if ((n = env_count(get, ctx, "SLURM_NTASKS")) != 0 || env_set(get, ctx, "SLURM_JOB_ID")) {
        o->launcher = MN_LAUNCHER_BATCH;
        o->tasks = n;
        o->tasks_var = n ? "SLURM_NTASKS" : NULL;
        if (size == 1 && n > 1) {
            o->ok = 0;
            say(o, "MPI world size is 1 but SLURM_NTASKS=%ld: mednet runs in the allocation outside an srun step "
                   "(srun forgotten in the batch script?), so one rank would do the work of %ld.", n, n);
            hint_srun(o, "");
            return;
        }
        if (n)
            say(o, "%d rank%s in a Slurm allocation of %ld task%s, outside an srun step", size, size == 1 ? "" : "s",
                n, n == 1 ? "" : "s");
        else
            say(o, "%d rank%s in a Slurm allocation, outside an srun step", size, size == 1 ? "" : "s");
        return;
    }

    /* 4. No launcher and no Slurm. */
    o->launcher = MN_LAUNCHER_NONE;
    if (size == 1)
        say(o, "1 rank started without a launcher (singleton)");
    else
        say(o, "%d ranks from a launcher that sets no known variable", size);
}

static const char *real_getenv(void *ctx, const char *name)
{
    (void)ctx;
    return getenv(name);
}

mn_err mn_launch_check(MPI_Comm comm, mn_launch *out)
{
    mn_launch local;
    mn_launch *o = out ? out : &local;
    memset(o, 0, sizeof *o);
    int size = 0, len = 0;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    MN_MPI(MPI_Comm_size(comm, &size));
    MN_MPI(MPI_Get_library_version(version, &len));
    mn_launch_decide(real_getenv, NULL, size, mn_launch_flavour(version), o);
    /* First line only, without the trailing blanks some libraries pad it with. */
    size_t n = strcspn(version, "\n");
    while (n > 0 && (version[n - 1] == ' ' || version[n - 1] == '\t' || version[n - 1] == '\r')) n--;
    snprintf(o->library, sizeof o->library, "%.*s", (int)n, version);
    MN_CHECK(o->ok, MN_ERR_MPI, "%s", o->message);
    return MN_OK;
}
