/* threads.h: one knob for BLIS and OpenMP threads, and the BLIS kernel-set guard.
 *
 * Debian's BLIS 0.9.0 falls back to its slow generic kernels on CPUs it does not recognise (new AMD/Intel parts),
 * about 5x slower sgemm.  mn_threads_init checks, before the first BLIS call, which kernel set BLIS would pick; if
 * it is `generic` on a CPU with AVX-512 or AVX2+FMA it selects skx or haswell through BLIS_ARCH_TYPE and says so.
 * The user overrides with MEDNET_BLIS_ARCH=<name> (skx, haswell, zen3, generic, ...) or a numeric BLIS_ARCH_TYPE,
 * which is then left alone.
 */
#ifndef MEDNET_THREADS_H
#define MEDNET_THREADS_H

#include "mednet/error.h"

/* Resolve the thread count: `requested` if > 0, else SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS, else 1. */
int mn_threads_resolve(int requested);

/* Set BLIS and OpenMP threads to `nthreads` (> 0) and choose the BLIS kernel set (see above).  Must run before
 * any other BLIS call in the process.  Not collective.  Fails with MN_ERR_ARG on a bad MEDNET_BLIS_ARCH. */
mn_err mn_threads_init(int nthreads);

/* Threads set by mn_threads_init (1 before). */
int mn_threads_count(void);

/* Name of the BLIS kernel set in use ("skx", "haswell", "generic", ...), valid after mn_threads_init. */
const char *mn_blis_arch(void);

/* How the kernel set was chosen: "auto-detected", "auto-detected generic, overridden to skx (CPU has AVX-512)",
 * "MEDNET_BLIS_ARCH", "BLIS_ARCH_TYPE". */
const char *mn_blis_arch_reason(void);

#endif
