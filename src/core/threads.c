/* threads.c: thread count for BLIS and OpenMP, the choice of BLIS kernels and of the instruction set of mednet's own
 * kernels (see mednet/threads.h).
 *
 * The kernel set must be fixed before BLIS initialises: BLIS 0.9.0 reads BLIS_ARCH_TYPE (a number; a name reads
 * as 0 = skx, silently) once, at its first use.  So the decision is made first, without touching BLIS (the
 * measurement runs in child processes, src/core/blis_choose.c), then written into BLIS_ARCH_TYPE, then BLIS
 * starts and we read back what it runs.  When nothing can be measured we fall back to predicting BLIS's CPUID
 * rules: AMD families other than 0x15/0x17/0x19 (Zen 5 is 0x1A) get the generic C kernels, and we select skx
 * (AVX-512) or haswell (AVX2+FMA) instead.  Generic on a CPU with AVX2 is reported loudly whatever the reason.
 * Never force AVX-512 kernels on a CPU without AVX-512: they die with SIGILL.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "mednet/threads.h"

#include <sched.h>
#include <blis.h>
#include <cpuid.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mednet/mpicheck.h"
#include "nn/stem.h"

static int g_threads = 1;
static char g_reason[1400] = "not initialised";
static const char *g_arch = "unknown";
static char g_isa[96] = "not initialised";

int mn_threads_resolve(int requested)
{
    if (requested > 0) return requested;
    const char *vars[] = {"SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"};
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            int n = atoi(v);
            if (n > 0) return n;
        }
    }
    return 1;
}

int mn_threads_count(void) { return g_threads; }
const char *mn_blis_arch(void) { return g_arch; }
const char *mn_blis_arch_reason(void) { return g_reason; }
const char *mn_simd_kernels(void) { return g_isa; }

/* MEDNET_ISA: the instruction set of mednet's own kernels (nn/stem.h), applied now. */
static mn_err isa_from_env(void)
{
    const char *v = getenv("MEDNET_ISA");
    if (!v || !*v || strcmp(v, "auto") == 0) {
        snprintf(g_isa, sizeof g_isa, "%s (the widest this CPU has)", mn_stem_isa_name(mn_stem_isa()));
        return MN_OK;
    }
    int isa = -1;
    for (int i = MN_STEM_ISA_NONE; i <= MN_STEM_ISA_AVX512; i++)
        if (strcmp(v, mn_stem_isa_name(i)) == 0) isa = i;
    MN_CHECK(isa >= 0, MN_ERR_ARG,
             "MEDNET_ISA='%s' is not an instruction set\n---> HINT: use auto, avx512, avx2 or none", v);
    MN_CHECK(mn_stem_set_isa(isa) >= 0, MN_ERR_ARG, "MEDNET_ISA=%s: this CPU lacks it (it has %s)", v,
             mn_stem_isa_name(mn_stem_isa()));
    snprintf(g_isa, sizeof g_isa, "%s (set by MEDNET_ISA=%s)", mn_stem_isa_name(isa), v);
    return MN_OK;
}

static int cpu_has_avx512(void) { return mn_blis_cpu_lacks("skx") == NULL; }
static int cpu_has_avx2(void) { return mn_blis_cpu_lacks("haswell") == NULL; }

/* 1 if BLIS 0.9.0's CPUID rules would fall back to the generic kernels on this CPU. */
static int blis_would_fall_back(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    char vendor[13];
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    unsigned family = (a >> 8) & 0xf;
    if (family == 0xf) family += (a >> 20) & 0xff;
    if (strcmp(vendor, "AuthenticAMD") == 0) return !(family == 0x15 || family == 0x17 || family == 0x19);
    if (strcmp(vendor, "GenuineIntel") == 0) return !__builtin_cpu_supports("avx");
    return 1;
}

/* What to do about BLIS_ARCH_TYPE, decided before BLIS starts; plain bytes, so rank 0 can broadcast it. */
typedef struct {
    int measure; /* 1: the environment leaves the choice to measurement */
    int id;      /* arch id to write into BLIS_ARCH_TYPE, -1 = leave the variable as it is */
    char reason[sizeof g_reason];
} arch_decision;

/* The decision the environment dictates, or measure = 1.  Errors on a bad MEDNET_BLIS_ARCH. */
static mn_err decide_from_env(arch_decision *d)
{
    memset(d, 0, sizeof *d);
    d->id = -1;
    const char *user = getenv("MEDNET_BLIS_ARCH");
    const char *blis_env = getenv("BLIS_ARCH_TYPE");
    if (user && *user && strcmp(user, "auto") != 0) {
        int id = mn_blis_arch_id(user);
        MN_CHECK(id >= 0, MN_ERR_ARG,
                 "MEDNET_BLIS_ARCH='%s' is not a BLIS kernel set\n---> HINT: use auto, skx, haswell, zen3, zen2, zen "
                 "or generic",
                 user);
        const char *lacks = mn_blis_cpu_lacks(user);
        MN_CHECK(lacks == NULL, MN_ERR_ARG, "MEDNET_BLIS_ARCH=%s needs %s, which this CPU lacks", user,
                 lacks ? lacks : "");
        d->id = id;
        snprintf(d->reason, sizeof d->reason, "set by MEDNET_BLIS_ARCH=%s", user);
    } else if (user && *user) {
        snprintf(d->reason, sizeof d->reason, "MEDNET_BLIS_ARCH=auto: ");
    } else if (blis_env && *blis_env) {
        snprintf(d->reason, sizeof d->reason, "set by BLIS_ARCH_TYPE=%s", blis_env);
    } else {
        d->measure = 1;
    }
    return MN_OK;
}

/* BLIS's own CPUID choice, guarded against its generic fall-back; appends to d->reason. */
static void decide_by_cpuid(arch_decision *d)
{
    size_t n = strlen(d->reason);
    if (blis_would_fall_back() && (cpu_has_avx512() || cpu_has_avx2())) {
        d->id = cpu_has_avx512() ? BLIS_ARCH_SKX : BLIS_ARCH_HASWELL;
        snprintf(d->reason + n, sizeof d->reason - n,
                 "BLIS does not recognise this CPU and would use generic kernels; selected %s (CPU has %s)",
                 bli_arch_string((arch_t)d->id), d->id == BLIS_ARCH_SKX ? "AVX-512" : "AVX2+FMA");
    } else {
        d->id = -1;
        snprintf(d->reason + n, sizeof d->reason - n, "auto-detected by BLIS");
    }
}

/* Measure (or read the cache) and decide. */
static void decide_by_measurement(arch_decision *d)
{
    mn_blis_choice ch;
    mn_blis_choose(&ch);
    if (ch.name[0]) {
        d->id = mn_blis_arch_id(ch.name);
        snprintf(d->reason, sizeof d->reason, "fastest of conv-shaped sgemm per core: %s (%s)", ch.rates, ch.source);
        return;
    }
    snprintf(d->reason, sizeof d->reason, "measuring failed (%s: %.400s); ", ch.source, ch.rates);
    decide_by_cpuid(d);
}

/* Start BLIS with the decision and set the thread counts. */
static mn_err apply(const arch_decision *d, int nthreads)
{
    if (d->id >= 0) {
        char num[16];
        snprintf(num, sizeof num, "%d", d->id);
        MN_CHECK(setenv("BLIS_ARCH_TYPE", num, 1) == 0, MN_ERR_INTERNAL, "setenv(BLIS_ARCH_TYPE) failed");
    }
    snprintf(g_reason, sizeof g_reason, "%s", d->reason);
    bli_init();
    arch_t id = bli_arch_query_id();
    g_arch = bli_arch_string(id);
    if (id == BLIS_ARCH_GENERIC && (cpu_has_avx2() || cpu_has_avx512()))
        mn_log_warn("BLIS runs its generic kernels (about 5x slower) on a CPU with %s\n"
                    "---> HINT: set MEDNET_BLIS_ARCH=%s",
                    cpu_has_avx512() ? "AVX-512" : "AVX2", cpu_has_avx512() ? "skx" : "haswell");
    /* More threads than the CPUs this process may run on (mpirun binds each rank to one core by default) makes
     * every OpenMP/BLIS barrier spin against a descheduled sibling: measured 300x slower steps, not 2x faster. */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < nthreads)
        mn_log_warn("%d threads per rank, but this rank may only run on %d CPU(s): expect a large slow-down\n"
                    "---> HINT: mpirun --bind-to none (or --map-by slot:PE=%d), srun --cpus-per-task=%d, or fewer "
                    "threads",
                    nthreads, CPU_COUNT(&set), nthreads, nthreads);
    g_threads = nthreads;
    bli_thread_set_num_threads(nthreads);
    omp_set_num_threads(nthreads);
    return MN_OK;
}

mn_err mn_threads_init(int nthreads)
{
    MN_CHECK(nthreads > 0, MN_ERR_ARG, "thread count must be > 0, got %d", nthreads);
    arch_decision d;
    MN_CALL(isa_from_env());
    MN_CALL(decide_from_env(&d));
    if (d.measure)
        decide_by_measurement(&d);
    else if (d.id < 0 && strncmp(d.reason, "MEDNET_BLIS_ARCH=auto", 21) == 0)
        decide_by_cpuid(&d);
    return apply(&d, nthreads);
}

mn_err mn_threads_init_comm(int nthreads, MPI_Comm comm)
{
    MN_CHECK(nthreads > 0, MN_ERR_ARG, "thread count must be > 0, got %d", nthreads);
    int rank = 0;
    MN_MPI(MPI_Comm_rank(comm, &rank));
    arch_decision mine, root;
    mn_err e = isa_from_env();
    if (!e) e = decide_from_env(&mine);
    /* rank 0 decides; every rank takes part in the broadcast whatever its own environment says, so a rank with a
     * bad setting cannot leave the others waiting */
    if (rank == 0) {
        if (!e && mine.measure) decide_by_measurement(&mine);
        root = mine;
        root.measure = e ? 0 : root.measure;
    }
    MPI_Request req;
    MN_MPI(MPI_Ibcast(&root, (int)sizeof root, MPI_BYTE, 0, comm, &req));
    /* the others sleep while rank 0 measures: spinning in a blocking broadcast would steal the cores it times */
    for (int done = 0; !done;) {
        MN_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
        if (!done) nanosleep(&(struct timespec){0, 2000000}, NULL);
    }
    if (e) return e;
    if (rank != 0 && mine.measure) {
        const char *lacks = root.id >= 0 ? mn_blis_cpu_lacks(bli_arch_string((arch_t)root.id)) : NULL;
        if (root.id >= 0 && lacks) {
            mn_log_warn("rank 0 chose BLIS kernels %s, but this rank's CPU lacks %s: choosing for itself",
                        bli_arch_string((arch_t)root.id), lacks);
            decide_by_measurement(&mine);
        } else {
            mine = root;
            size_t n = strlen(mine.reason);
            snprintf(mine.reason + n, sizeof mine.reason - n, ", chosen by rank 0");
        }
    } else if (rank != 0 && mine.id < 0 && strncmp(mine.reason, "MEDNET_BLIS_ARCH=auto", 21) == 0) {
        decide_by_cpuid(&mine);
    } else if (rank == 0 && mine.id < 0 && strncmp(mine.reason, "MEDNET_BLIS_ARCH=auto", 21) == 0) {
        decide_by_cpuid(&mine);
    }
    return apply(&mine, nthreads);
}
