/* prefetch.h: the I/O thread of a run: batches are drawn (sampler + shard reader, mednet/reader.h) on one helper
 * thread, and the next step's batch is drawn while the current step computes.
 *
 * HDF5 as Debian builds it (parallel, not thread-safe) must never be entered by two threads at once.  The rule here:
 * every sampler call of a run, training and evaluation alike, runs on the I/O thread, and the thread that owns the
 * prefetcher calls HDF5 itself (checkpoints) only after mn_prefetch_quiesce and before its next mn_prefetch_next.
 * The I/O thread makes no MPI call, so MPI_THREAD_FUNNELED is enough.
 *
 * Determinism: a sampler's draw depends on (seed, rank, index) only, so drawing index + 1 ahead of time is exact:
 * the batch handed out is the one a synchronous call would give, and a look-ahead that is not asked for next (a
 * resume, an evaluation in between) is simply not used.
 */
#ifndef MEDNET_PREFETCH_H
#define MEDNET_PREFETCH_H

#include <stdint.h>
#include "mednet/error.h"
#include "mednet/sampler.h"

typedef struct mn_prefetch mn_prefetch;

/* A prefetcher for batches of at most `max_n` crops of `crop` voxels.  threaded = 0: no thread, every draw runs
 * synchronously on the caller's thread (the same batches).  Not collective.  MN_ERR_MEM/MN_ERR_INTERNAL when the
 * buffers or the thread cannot be made. */
mn_err mn_prefetch_create(int threaded, int max_n, const int crop[3], mn_prefetch **out);

/* Stop the I/O thread (after its current draw) and free everything. */
void mn_prefetch_destroy(mn_prefetch **pf);

/* Batch `index` of sampler s: n crops into x (n, 1, D, H, W), labels (n, D, H, W), dataset (n) and weight (n, may be
 * NULL), as mn_sampler_next_weighted gives them.  Taken from the look-ahead when it holds (s, index, n), else drawn
 * now on the I/O thread.  With ahead = 1, batch index + 1 of s is then started in the background.  An error of the
 * draw (a read error, named by the reader) is returned here.  Not collective. */
mn_err mn_prefetch_next(mn_prefetch *pf, mn_sampler *s, int64_t index, int n, float *x, int32_t *labels, int *dataset,
                        float *weight, int ahead);

/* Wait until the I/O thread is idle; its look-ahead stays valid.  Afterwards, until the next mn_prefetch_next, the
 * caller may call HDF5.  Not collective. */
void mn_prefetch_quiesce(mn_prefetch *pf);

/* Seconds the caller waited in mn_prefetch_next, and draws taken from the look-ahead, since creation. */
void mn_prefetch_stats(const mn_prefetch *pf, double *wait_s, int64_t *ahead_hits, int64_t *draws);

#endif
