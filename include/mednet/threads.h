/* threads.h: one knob for BLIS and OpenMP threads, and the choice of BLIS's kernel set.
 *
 * BLIS 0.9.0 picks its kernel set once per process from CPUID, and picks badly on CPUs it does not know: generic
 * C kernels on AMD Zen 5 (about 5x slower), haswell instead of skx on Xeons whose brand string hides the model
 * (about 1.6x slower).  mednet therefore chooses by measurement: it times a few convolution-shaped sgemms with
 * BLIS's own choice and with each kernel set the CPU can run (skx with AVX-512; haswell, zen3 with AVX2+FMA), each
 * in a single-threaded child process (BLIS cannot switch sets within one; CPU time, so that a loaded machine does
 * not decide), and runs the fastest.  The choice and the rates are cached per CPU model and BLIS version in $XDG_CACHE_HOME/mednet/blis-kernels (else
 * ~/.cache/mednet/blis-kernels; delete the file to measure again).  Overrides, strongest first:
 *   MEDNET_BLIS_ARCH=<name>   run this set (skx, haswell, zen3, zen2, zen, generic, ...); "auto" = BLIS's own
 *                             CPUID choice, with the guard against its generic fall-back;
 *   BLIS_ARCH_TYPE=<number>   BLIS's own variable, left alone;
 *   MEDNET_BLIS_CANDIDATES=<name,...>   the sets to measure ("auto" = BLIS's own choice); not cached.
 * A set that cannot be measured (its probe crashes, e.g. SIGILL, or BLIS lacks it) is skipped; if none can be,
 * BLIS's own choice is kept with the generic guard.
 *
 * mednet's own convolution kernels (the stem's and the direct kernels, src/nn) take the widest instruction set the
 * CPU has: AVX-512F, else AVX2+FMA, else none (the GEMM and Winograd paths then run those layers).
 * MEDNET_ISA=avx2 (or none, avx512, auto) narrows that, e.g. to measure on an AVX-512 machine what an AVX2 node
 * would run; a set the CPU lacks, or another value, is an error.  The element-wise loops are not affected (they
 * are compiled per instruction set and picked by the CPU at load time).
 */
#ifndef MEDNET_THREADS_H
#define MEDNET_THREADS_H

#include <mpi.h>
#include <stddef.h>

#include "mednet/error.h"

/* Resolve the thread count: `requested` if > 0, else SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS, else 1. */
int mn_threads_resolve(int requested);

/* Set BLIS and OpenMP threads to `nthreads` (> 0) and choose the BLIS kernel set (see above; this process measures
 * when nothing is cached).  Must run before any other BLIS call in the process, once.  Not collective.  Fails with
 * MN_ERR_ARG on a bad MEDNET_BLIS_ARCH or MEDNET_ISA. */
mn_err mn_threads_init(int nthreads);

/* As mn_threads_init, but rank 0 of `comm` alone decides (from the cache or by measuring) and every rank runs the
 * kernel set it chose; the others wait without spinning (posix_spawn, not fork, so safe after MPI_Init).  A rank whose CPU cannot run that set (a mixed
 * allocation) warns and decides for itself.  Collective on comm; errors are local (agree them with mn_agree). */
mn_err mn_threads_init_comm(int nthreads, MPI_Comm comm);

/* Threads set by mn_threads_init (1 before). */
int mn_threads_count(void);

/* Name of the BLIS kernel set in use ("skx", "haswell", "generic", ...), valid after mn_threads_init. */
const char *mn_blis_arch(void);

/* How the kernel set was chosen, with the measured rates when measured: "fastest of conv-shaped sgemm per core:
 * auto=generic 31, skx 160, haswell 95, zen3 97 GFLOP/s (cached in /root/.cache/mednet/blis-kernels)",
 * "set by MEDNET_BLIS_ARCH=skx", ... */
const char *mn_blis_arch_reason(void);

/* The instruction set of mednet's own convolution kernels and how it was chosen: "avx512 (the widest this CPU
 * has)", "avx2 (set by MEDNET_ISA=avx2)", ...; valid after mn_threads_init. */
const char *mn_simd_kernels(void);

/* ---- the chooser itself (src/core/blis_choose.c), for the tests ---- */

/* Outcome of a measurement: name[0] == 0 when no candidate could be measured. */
typedef struct mn_blis_choice {
    char name[32];    /* the fastest kernel set, as BLIS names it */
    char rates[512];  /* "auto=zen3 188, skx 305, knl unavailable (CPU lacks ...) GFLOP/s" */
    char source[768]; /* "measured now, cached in <path>", "cached in <path>", ... */
    int measured;     /* 1 if measured in this call, 0 if read from the cache or failed */
} mn_blis_choice;

/* Choose the kernel set: from the cache, else by one single-threaded child process per candidate, timed in CPU
 * time (never touches BLIS in this process, so it may run before mn_threads_init).  Never fails: see ch->name. */
void mn_blis_choose(mn_blis_choice *ch);

/* BLIS's arch id for a kernel-set name, or -1 (works before BLIS initialises). */
int mn_blis_arch_id(const char *name);

/* NULL if this CPU can run the kernel set `name`, else the missing instructions ("AVX-512 (F, DQ, BW, VL)"). */
const char *mn_blis_cpu_lacks(const char *name);

/* The CPU as the cache keys it: brand string, family, model, stepping and vector extension. */
void mn_blis_cpu_key(char *buf, size_t len);

#endif
