/* test_launch.c: the launch check (mednet/launch.h) fed the environments of every launcher, without launching.
 *
 * Each case is the environment a process sees after MPI_Init (as measured with Open MPI 4.1.4, MPICH 4.0.2's Hydra
 * and Slurm 22.05; see launch.h), the MPI world size and the MPI flavour; the test asserts the verdict, the
 * launcher and the text of the message and its hint (what must be said, and the failing command that must not be
 * suggested again).  It also checks that the verdict does not depend on the task number, the flavour parsing of
 * MPI_Get_library_version strings, and finally runs the real check under the launcher ctest used, which must pass.
 * Runs on any number of ranks (registered on 1 and 2).
 */
#include "mednet/launch.h"
#include "mednet/mpicheck.h"
#include "test_util.h"

#include <string.h>

/* Look `name` up in a NULL-terminated array of "NAME=value" strings. */
static const char *env_lookup(void *ctx, const char *name)
{
    size_t n = strlen(name);
    for (const char *const *e = ctx; *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

typedef struct launch_case {
    const char *name;
    const char *const *env;
    int size;
    mn_mpi_flavour flavour;
    int ok;
    mn_launcher launcher;
    const char *says[3];   /* substrings the message must contain (NULL: none) */
    const char *never;     /* a substring it must not contain (a hint repeating the failed command), or NULL */
} launch_case;

/* ---- environments ------------------------------------------------------------------------------------------- */

/* Open MPI mpirun -n 2, no Slurm. */
static const char *const ompi_mpirun[] = {"OMPI_COMM_WORLD_SIZE=2", "OMPI_COMM_WORLD_RANK=1",
                                          "PMIX_RANK=1", "PMIX_NAMESPACE=2130509825", NULL};
/* Open MPI mpirun -n 3 inside a 2-task batch allocation: the batch step's variables, no step. */
static const char *const ompi_mpirun_alloc[] = {"OMPI_COMM_WORLD_SIZE=3", "OMPI_COMM_WORLD_RANK=2", "PMIX_RANK=2",
                                                "PMIX_NAMESPACE=1968046081", "SLURM_JOB_ID=1", "SLURM_NTASKS=2",
                                                "SLURM_NPROCS=2", "SLURM_PROCID=0", NULL};
/* A rank of a multi-node mpirun on a remote node: it inherits the step of the orted that srun started there. */
static const char *const ompi_mpirun_remote[] = {"OMPI_COMM_WORLD_SIZE=8", "OMPI_COMM_WORLD_RANK=5",
                                                 "SLURM_JOB_ID=1", "SLURM_NTASKS=8", "SLURM_STEP_ID=0",
                                                 "SLURM_STEP_NUM_TASKS=1", "SLURM_PROCID=0", NULL};
/* MPICH's Hydra mpiexec -n 2, no Slurm. */
static const char *const hydra[] = {"PMI_SIZE=2", "PMI_RANK=1", "PMI_FD=8", "HYDI_CONTROL_FD=7",
                                    "MPI_LOCALNRANKS=2", "MPI_LOCALRANKID=1", NULL};
/* Hydra mpiexec -n 3 inside a 2-task allocation: its ranks carry the 1-task proxy step (and its PMIx server). */
static const char *const hydra_alloc[] = {"PMI_SIZE=3", "PMI_RANK=2", "PMI_FD=9", "PMIX_NAMESPACE=slurm.pmix.1.6",
                                          "PMIX_RANK=0", "SLURM_MPI_TYPE=pmix", "SLURM_JOB_ID=1",
                                          "SLURM_NTASKS=2", "SLURM_NPROCS=1", "SLURM_STEP_ID=6",
                                          "SLURM_STEP_NUM_TASKS=1", "SLURM_PROCID=0", NULL};
/* srun --mpi=pmix -n 2 (Open MPI joins). */
static const char *const srun_pmix[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=2",
                                        "SLURM_NTASKS=2", "SLURM_PROCID=1", "SLURM_MPI_TYPE=pmix", "PMIX_RANK=1",
                                        "PMIX_NAMESPACE=slurm.pmix.1.0", NULL};
/* srun --mpi=pmi2 -n 2 (MPICH joins). */
static const char *const srun_pmi2[] = {"PMI_FD=11", "PMI_JOBID=1.2", "PMI_RANK=0", "PMI_SIZE=2",
                                        "SLURM_MPI_TYPE=pmi2", "SLURM_JOB_ID=1", "SLURM_STEP_ID=2",
                                        "SLURM_STEP_NUM_TASKS=2", "SLURM_NTASKS=2", "SLURM_PROCID=0", NULL};
/* srun -n 2 without a PMI plugin: an Open MPI singleton sets its own PMIx variables in MPI_Init. */
static const char *const srun_none_ompi[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=4", "SLURM_STEP_NUM_TASKS=2",
                                             "SLURM_NTASKS=2", "SLURM_PROCID=1", "PMIX_RANK=0",
                                             "PMIX_NAMESPACE=2032926721", NULL};
static const char *const srun_none_ompi_t0[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=4", "SLURM_STEP_NUM_TASKS=2",
                                                "SLURM_NTASKS=2", "SLURM_PROCID=0", "PMIX_RANK=0",
                                                "PMIX_NAMESPACE=2032926721", NULL};
/* srun -n 2 without a PMI plugin, an MPICH (or unknown) binary: only Slurm's variables. */
static const char *const srun_none[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=4", "SLURM_STEP_NUM_TASKS=2",
                                        "SLURM_NTASKS=2", "SLURM_PROCID=1", NULL};
/* srun --mpi=pmix -n 2 with a binary that does not speak PMIx (Debian's MPICH): two singletons. */
static const char *const srun_pmix_failed[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=1", "SLURM_STEP_NUM_TASKS=2",
                                               "SLURM_NTASKS=2", "SLURM_PROCID=1", "SLURM_MPI_TYPE=pmix",
                                               "PMIX_RANK=1", "PMIX_NAMESPACE=slurm.pmix.1.1", NULL};
/* srun --mpi=pmi2 -n 2 whose ranks did not join (PMI_SIZE says 2, the world has 1). */
static const char *const srun_pmi2_failed[] = {"PMI_FD=11", "PMI_JOBID=1.2", "PMI_RANK=1", "PMI_SIZE=2",
                                               "SLURM_MPI_TYPE=pmi2", "SLURM_JOB_ID=1", "SLURM_STEP_ID=2",
                                               "SLURM_STEP_NUM_TASKS=2", "SLURM_NTASKS=2", "SLURM_PROCID=1",
                                               NULL};
/* srun --mpi=cray_shasta that did not connect. */
static const char *const srun_cray_failed[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=4",
                                               "SLURM_PROCID=3", "SLURM_MPI_TYPE=cray_shasta", NULL};
/* mednet started directly in a 4-task batch script (srun forgotten), an Open MPI singleton. */
static const char *const batch_forgot[] = {"SLURM_JOB_ID=5", "SLURM_NTASKS=4", "SLURM_NPROCS=4", "SLURM_PROCID=0",
                                           "PMIX_RANK=0", "PMIX_NAMESPACE=2099183617", NULL};
/* A 1-task batch job running mednet directly: a legitimate singleton. */
static const char *const batch_one[] = {"SLURM_JOB_ID=6", "SLURM_NTASKS=1", "SLURM_PROCID=0", NULL};
/* Two 1-rank jobs: an MPICH binary under Open MPI's mpirun -n 2; an Open MPI binary under Hydra's mpiexec -n 2. */
static const char *const mpich_under_mpirun[] = {"OMPI_COMM_WORLD_SIZE=2", "OMPI_COMM_WORLD_RANK=1", "PMIX_RANK=1",
                                                 "PMIX_NAMESPACE=2121334785", NULL};
static const char *const ompi_under_hydra[] = {"PMI_SIZE=2", "PMI_RANK=1", "PMI_FD=8", "HYDI_CONTROL_FD=7",
                                               "PMIX_RANK=0", "PMIX_NAMESPACE=2115043329", NULL};
/* A launcher that leaves no trace inside a 4-task step (3 ranks): accepted. */
static const char *const step_other[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=4",
                                         "SLURM_PROCID=0", NULL};
/* Nonsense counts are ignored (here: an allocation without a usable task count). */
static const char *const garbage[] = {"SLURM_JOB_ID=1", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=two",
                                      "OMPI_COMM_WORLD_SIZE=", "PMI_SIZE=-3", NULL};
static const char *const nothing[] = {NULL};

static const launch_case cases[] = {
    {"Open MPI mpirun, no Slurm", ompi_mpirun, 2, MN_MPI_OPENMPI, 1, MN_LAUNCHER_MPIRUN,
     {"started 2 ranks", "OMPI_COMM_WORLD_SIZE=2"}, NULL},
    {"Open MPI mpirun -n 3 in a 2-task allocation", ompi_mpirun_alloc, 3, MN_MPI_OPENMPI, 1, MN_LAUNCHER_MPIRUN,
     {"started 3 ranks"}, NULL},
    {"Open MPI mpirun, rank on a remote node (orted step of 1 task)", ompi_mpirun_remote, 8, MN_MPI_OPENMPI, 1,
     MN_LAUNCHER_MPIRUN, {"started 8 ranks"}, NULL},
    {"Hydra mpiexec, no Slurm", hydra, 2, MN_MPI_MPICH, 1, MN_LAUNCHER_HYDRA, {"mpiexec (Hydra) started 2"}, NULL},
    {"Hydra mpiexec -n 3 in an allocation (1-task proxy step)", hydra_alloc, 3, MN_MPI_MPICH, 1, MN_LAUNCHER_HYDRA,
     {"started 3 ranks", "PMI_SIZE=3"}, NULL},
    {"Hydra mpiexec -n 3 in an allocation, Intel MPI", hydra_alloc, 3, MN_MPI_INTEL, 1, MN_LAUNCHER_HYDRA,
     {"started 3 ranks"}, NULL},
    {"srun --mpi=pmix", srun_pmix, 2, MN_MPI_OPENMPI, 1, MN_LAUNCHER_SRUN,
     {"srun --mpi=pmix started 2 tasks"}, NULL},
    {"srun --mpi=pmi2", srun_pmi2, 2, MN_MPI_MPICH, 1, MN_LAUNCHER_SRUN, {"srun --mpi=pmi2 started 2 ranks"}, NULL},
    {"srun without PMI, Open MPI", srun_none_ompi, 1, MN_MPI_OPENMPI, 0, MN_LAUNCHER_SRUN,
     {"MPI world size is 1 but SLURM_STEP_NUM_TASKS=2", "this is task 1", "HINT: use srun --mpi=pmix"}, NULL},
    {"srun without PMI, MPICH", srun_none, 1, MN_MPI_MPICH, 0, MN_LAUNCHER_SRUN,
     {"HINT: use srun --mpi=pmi2", "mpiexec (Hydra) inside the allocation"}, NULL},
    {"srun --mpi=pmix, MPICH without PMIx", srun_pmix_failed, 1, MN_MPI_MPICH, 0, MN_LAUNCHER_SRUN,
     {"srun --mpi=pmix gave the tasks", "HINT: use srun --mpi=pmi2", "no PMIx"}, "use srun --mpi=pmix"},
    {"srun --mpi=pmix did not connect Open MPI", srun_pmix_failed, 1, MN_MPI_OPENMPI, 0, MN_LAUNCHER_SRUN,
     {"HINT: srun --mpi=pmix did not connect", "mpirun inside the allocation"}, "use srun --mpi=pmix"},
    {"srun --mpi=pmi2 did not connect MPICH", srun_pmi2_failed, 1, MN_MPI_MPICH, 0, MN_LAUNCHER_SRUN,
     {"PMI_SIZE=2", "HINT: srun --mpi=pmi2 did not connect", "mpiexec -n 2"}, "use srun --mpi=pmi2"},
    {"srun --mpi=pmi2 with Open MPI", srun_pmi2_failed, 1, MN_MPI_OPENMPI, 0, MN_LAUNCHER_SRUN,
     {"HINT: use srun --mpi=pmix"}, "use srun --mpi=pmi2"},
    {"srun without PMI, Intel MPI", srun_none, 1, MN_MPI_INTEL, 0, MN_LAUNCHER_SRUN,
     {"I_MPI_PMI_LIBRARY=/path/to/libpmi2.so", "srun --mpi=pmi2"}, NULL},
    {"srun without PMI, Cray MPICH", srun_none, 1, MN_MPI_CRAY, 0, MN_LAUNCHER_SRUN,
     {"HINT: use srun --mpi=cray_shasta"}, NULL},
    {"srun --mpi=cray_shasta did not connect", srun_cray_failed, 1, MN_MPI_CRAY, 0, MN_LAUNCHER_SRUN,
     {"did not connect", "Cray PE modules"}, "use srun --mpi=cray_shasta"},
    {"srun --mpi=pmix, unknown MPI", srun_pmix_failed, 1, MN_MPI_UNKNOWN, 0, MN_LAUNCHER_SRUN,
     {"try srun --mpi=pmi2"}, "use srun --mpi=pmix"},
    {"srun without PMI, unknown MPI", srun_none, 1, MN_MPI_UNKNOWN, 0, MN_LAUNCHER_SRUN,
     {"srun --mpi=pmix or srun --mpi=pmi2"}, NULL},
    {"forgotten srun in a 4-task batch script, Open MPI", batch_forgot, 1, MN_MPI_OPENMPI, 0, MN_LAUNCHER_BATCH,
     {"MPI world size is 1 but SLURM_NTASKS=4", "srun forgotten", "HINT: use srun --mpi=pmix"}, NULL},
    {"forgotten srun in a 4-task batch script, MPICH", batch_forgot, 1, MN_MPI_MPICH, 0, MN_LAUNCHER_BATCH,
     {"srun forgotten", "HINT: use srun --mpi=pmi2"}, NULL},
    {"1-task batch job without srun", batch_one, 1, MN_MPI_OPENMPI, 1, MN_LAUNCHER_BATCH,
     {"outside an srun step"}, NULL},
    {"two 1-rank jobs: MPICH binary under Open MPI's mpirun", mpich_under_mpirun, 1, MN_MPI_MPICH, 0,
     MN_LAUNCHER_MPIRUN, {"MPI world size is 1 but OMPI_COMM_WORLD_SIZE=2", "one MPICH job", "mpiexec.mpich"}, NULL},
    {"two 1-rank jobs: Open MPI binary under Hydra's mpiexec", ompi_under_hydra, 1, MN_MPI_OPENMPI, 0,
     MN_LAUNCHER_HYDRA, {"mpiexec (Hydra) started 2 processes", "Open MPI's mpirun"}, NULL},
    {"two 1-rank jobs: Open MPI binary under another Open MPI's mpirun", mpich_under_mpirun, 1, MN_MPI_OPENMPI, 0,
     MN_LAUNCHER_MPIRUN, {"another Open MPI installation"}, NULL},
    {"an unknown launcher inside a step", step_other, 3, MN_MPI_UNKNOWN, 1, MN_LAUNCHER_SRUN,
     {"3 ranks inside an srun step of 4 tasks"}, NULL},
    {"malformed counts are ignored", garbage, 1, MN_MPI_OPENMPI, 1, MN_LAUNCHER_BATCH, {"Slurm allocation"}, NULL},
    {"no launcher, no Slurm: singleton", nothing, 1, MN_MPI_MPICH, 1, MN_LAUNCHER_NONE, {"singleton"}, NULL},
};

static void test_cases(void)
{
    int ncases = (int)(sizeof cases / sizeof cases[0]), nwrong = 0;
    for (int i = 0; i < ncases; i++) {
        const launch_case *c = &cases[i];
        mn_launch l;
        mn_launch_decide(env_lookup, (void *)c->env, c->size, c->flavour, &l);
        TEST_EXPECT(l.ok == c->ok, "%s: verdict %s, expected %s: %s", c->name, l.ok ? "OK" : "WRONG",
                    c->ok ? "OK" : "WRONG", l.message);
        TEST_EXPECT(l.launcher == c->launcher, "%s: launcher %s, expected %s", c->name,
                    mn_launcher_name(l.launcher), mn_launcher_name(c->launcher));
        TEST_EXPECT(l.size == c->size && l.flavour == c->flavour, "%s: size/flavour not recorded", c->name);
        TEST_EXPECT((strstr(l.message, "HINT:") != NULL) == !c->ok, "%s: a hint must come with (only) a wrong "
                    "verdict: %s", c->name, l.message);
        for (int k = 0; k < 3 && c->says[k]; k++)
            TEST_EXPECT(strstr(l.message, c->says[k]) != NULL, "%s: message lacks '%s': %s", c->name, c->says[k],
                        l.message);
        if (c->never)
            TEST_EXPECT(strstr(l.message, c->never) == NULL, "%s: message repeats '%s': %s", c->name, c->never,
                        l.message);
        nwrong += !c->ok;
    }
    printf("test_launch: %d launch environments (%d wrong launches) decided as expected\n", ncases, nwrong);

    /* The verdict does not depend on the task number (every rank decides alike); the task shows in the message. */
    mn_launch a, b;
    mn_launch_decide(env_lookup, (void *)srun_none_ompi, 1, MN_MPI_OPENMPI, &a);
    mn_launch_decide(env_lookup, (void *)srun_none_ompi_t0, 1, MN_MPI_OPENMPI, &b);
    TEST_EXPECT(a.ok == b.ok && a.launcher == b.launcher && a.tasks == b.tasks && a.tasks == 2 &&
                    !strcmp(a.plugin, b.plugin),
                "tasks 0 and 1 of one step decided differently");
    TEST_EXPECT(strstr(b.message, "this is task 0") != NULL, "task 0 not named: %s", b.message);
    /* The plugin is read from SLURM_MPI_TYPE, else from its traces (PMI_JOBID: pmi2, slurm.pmix.*: pmix). */
    static const char *const pmix_trace[] = {"SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=2",
                                             "PMIX_NAMESPACE=slurm.pmix.7.0", NULL};
    mn_launch_decide(env_lookup, (void *)pmix_trace, 2, MN_MPI_OPENMPI, &a);
    TEST_EXPECT(a.ok && !strcmp(a.plugin, "pmix"), "PMIx plugin not recognised from its namespace: '%s'", a.plugin);
    mn_launch_decide(env_lookup, (void *)srun_none_ompi, 1, MN_MPI_OPENMPI, &a);
    TEST_EXPECT(a.plugin[0] == '\0', "an Open MPI singleton's PMIx namespace taken for srun's: '%s'", a.plugin);
}

static void test_flavours(void)
{
    static const struct { const char *v; mn_mpi_flavour f; } t[] = {
        {"Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4", MN_MPI_OPENMPI},
        {"MPICH Version:\t4.0.2\nMPICH Release date:\tThu Apr  7 12:34:45 CDT 2022", MN_MPI_MPICH},
        {"MVAPICH2 Version      :\t2.3.7", MN_MPI_MPICH},
        {"Intel(R) MPI Library 2021.10 for Linux* OS", MN_MPI_INTEL},
        {"MPI VERSION    : CRAY MPICH version 8.1.25.17 (ANL base 3.4a2)", MN_MPI_CRAY},
        {"Spectrum-X 1.0", MN_MPI_UNKNOWN},
        {NULL, MN_MPI_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        TEST_EXPECT(mn_launch_flavour(t[i].v) == t[i].f, "flavour of '%s': %s, expected %s",
                    t[i].v ? t[i].v : "(null)", mn_mpi_flavour_name(mn_launch_flavour(t[i].v)),
                    mn_mpi_flavour_name(t[i].f));
}

/* The real check under the launcher ctest used (MN_MPIEXEC): it must pass, and name a launcher of this flavour. */
static void test_real(void)
{
    mn_launch l;
    mn_err e = mn_launch_check(MPI_COMM_WORLD, &l);
    TEST_EXPECT(e == MN_OK, "the real launch check failed: %s", l.message);
    TEST_EXPECT(l.flavour != MN_MPI_UNKNOWN, "MPI library not recognised: '%s'", l.library);
    int size = 0, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (getenv("MN_TEST_NP") && size > 1)
        TEST_EXPECT(l.launcher == (l.flavour == MN_MPI_OPENMPI ? MN_LAUNCHER_MPIRUN : MN_LAUNCHER_HYDRA),
                    "under ctest's launcher: %s", mn_launcher_name(l.launcher));
    if (rank == 0)
        printf("test_launch: this run: %s, %s: %s\n", l.library, mn_launcher_name(l.launcher), l.message);
}

int main(int argc, char **argv)
{
    if (mn_mpi_init(&argc, &argv, MPI_THREAD_FUNNELED) != MN_OK) return 1;
    mn_test_expect_size();
    test_cases();
    test_flavours();
    test_real();
    int rc = mn_test_finish("test_launch");
    MPI_Finalize();
    return rc;
}
