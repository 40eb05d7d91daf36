/* threads.c: thread count for BLIS and OpenMP, and the choice of BLIS kernels.
 *
 * BLIS 0.9.0 decides its kernel set once, at its first use, from CPUID: Intel parts by feature bits, AMD parts by
 * family (0x15 bulldozer..excavator, 0x17 zen/zen2, 0x19 zen3); any other AMD family (0x1A, Zen 5) gets the
 * generic C kernels.  The query that BLIS itself uses (bli_cpuid_query_id) is not exported by Debian's library, so
 * we predict the fallback with the same rules and, when it would happen on a CPU that has AVX-512 (or AVX2+FMA),
 * set BLIS_ARCH_TYPE to skx (haswell) before BLIS initialises.  BLIS 0.9.0 reads BLIS_ARCH_TYPE as a number (a
 * name reads as 0 = skx, silently), so we write the enum value from blis.h.  After initialisation we read back
 * what BLIS chose; generic on a CPU with AVX2 is reported loudly whatever the reason.  Never force AVX-512 kernels
 * on a CPU without AVX-512: they die with SIGILL.
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

static int g_threads = 1;
static char g_reason[160] = "not initialised";
static const char *g_arch = "unknown";

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

static int cpu_has_avx512(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

static int cpu_has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

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

/* Map a kernel-set name to BLIS's arch id by asking BLIS for each id's name (works before bli_init). */
static int arch_id_from_name(const char *name)
{
    for (int id = 0; id < BLIS_NUM_ARCHS; id++) {
        const char *s = bli_arch_string((arch_t)id);
        if (s && strcmp(s, name) == 0) return id;
    }
    return -1;
}

mn_err mn_threads_init(int nthreads)
{
    MN_CHECK(nthreads > 0, MN_ERR_ARG, "thread count must be > 0, got %d", nthreads);
    const char *user = getenv("MEDNET_BLIS_ARCH");
    const char *blis_env = getenv("BLIS_ARCH_TYPE");
    char num[16];
    if (user && *user) {
        int id = arch_id_from_name(user);
        MN_CHECK(id >= 0, MN_ERR_ARG,
                 "MEDNET_BLIS_ARCH='%s' is not a BLIS kernel set\n---> HINT: use skx, haswell, zen3, zen2, zen or generic",
                 user);
        MN_CHECK(!(id == BLIS_ARCH_SKX && !cpu_has_avx512()), MN_ERR_ARG,
                 "MEDNET_BLIS_ARCH=skx needs AVX-512, which this CPU lacks");
        snprintf(num, sizeof num, "%d", id);
        setenv("BLIS_ARCH_TYPE", num, 1);
        snprintf(g_reason, sizeof g_reason, "set by MEDNET_BLIS_ARCH=%s", user);
    } else if (blis_env && *blis_env) {
        snprintf(g_reason, sizeof g_reason, "set by BLIS_ARCH_TYPE=%s", blis_env);
    } else if (blis_would_fall_back() && (cpu_has_avx512() || cpu_has_avx2())) {
        int id = cpu_has_avx512() ? BLIS_ARCH_SKX : BLIS_ARCH_HASWELL;
        snprintf(num, sizeof num, "%d", id);
        setenv("BLIS_ARCH_TYPE", num, 1);
        snprintf(g_reason, sizeof g_reason,
                 "BLIS does not recognise this CPU and would use generic kernels; selected %s (CPU has %s)",
                 bli_arch_string((arch_t)id), id == BLIS_ARCH_SKX ? "AVX-512" : "AVX2+FMA");
    } else {
        snprintf(g_reason, sizeof g_reason, "auto-detected by BLIS");
    }
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
