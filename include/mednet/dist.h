/* dist.h: the MPI side of data-parallel training: communicators (world, one per dataset), parameter broadcast,
 * the bucketed gradient reducer overlapped with the backward pass, replica-consistency checksums, flag agreement
 * and a per-rank Chrome-trace timeline.  The whole gradient path of a training step
 * (encoder buckets, head reductions, batch-norm statistics, replica checks of every part) is composed from these over
 * the part table in mednet/parts.h.
 *
 * Layout assumed (DESIGN.md): parameters are one flat float buffer and gradients a twin buffer of the same layout;
 * the encoder is one contiguous range [offset, offset+count) and each dataset's head another.  Every function here
 * takes offsets and counts in floats into those buffers, never layer objects: dist knows nothing about layers.
 *
 * Communicators: mn_dist_create duplicates its parent (MPI_ERRORS_RETURN set on the duplicate) and splits one
 * communicator per dataset from a holder table.  Rank order inside a dataset communicator follows the world rank,
 * so the root of a dataset communicator (its rank 0) is the lowest world rank that holds the dataset.
 *
 * Collectives must be called in the same order on every member of the communicator, as always with MPI; the
 * contracts below say "Collective on X" for every function that communicates.
 */
#ifndef MEDNET_DIST_H
#define MEDNET_DIST_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "mednet/error.h"
#include "mednet/launch.h" /* the launch check (mn_launch_check), formerly part of this header */
#include "mednet/tensor.h"

/* ---- communicators --------------------------------------------------------------------------------------------- */

typedef struct mn_dist {
    MPI_Comm world;      /* duplicate of the parent communicator, MPI_ERRORS_RETURN */
    int rank, size;      /* in `world` */
    int ndatasets;
    MPI_Comm *dcomm;     /* [ndatasets]: dataset d's communicator, MPI_COMM_NULL where this rank does not hold d */
    unsigned char *holds;/* [ndatasets * size]: holds[d * size + r] = 1 if world rank r holds dataset d */
} mn_dist;

/* Create the world duplicate and the per-dataset communicators.  `holders` is a row-major table
 * [ndatasets][size of parent]: holders[d * size + r] != 0 when rank r holds dataset d.  Every rank must pass the
 * same table (checked: a hash of the table is compared across ranks) and every dataset must have at least one
 * holder.  ndatasets may be 0.  On success *out owns the communicators; free with mn_dist_destroy.
 * Collective on parent (one MPI_Comm_split per dataset).  On error nothing is leaked and *out is NULL. */
mn_err mn_dist_create(MPI_Comm parent, int ndatasets, const int *holders, mn_dist **out);

/* Free the communicators and the object, set *d to NULL; accepts NULL.  Collective on the world duplicate
 * (MPI_Comm_free).  Errors from MPI_Comm_free are reported and returned, the memory is freed anyway. */
mn_err mn_dist_destroy(mn_dist **d);

/* 1 if this rank holds dataset `ds` (0 <= ds < ndatasets), else 0.  Not collective. */
int mn_dist_holds(const mn_dist *d, int ds);

/* Number of ranks that hold dataset `ds`.  Not collective. */
int mn_dist_nholders(const mn_dist *d, int ds);

/* World rank of the root (lowest-ranked holder) of dataset `ds`.  Not collective. */
int mn_dist_root(const mn_dist *d, int ds);

/* ---- broadcast ------------------------------------------------------------------------------------------------- */

/* mn_range (offset, count in floats) is defined in mednet/tensor.h. */

/* Broadcast n floats from `root` of comm, in pieces of at most 2^30 floats (MPI counts are int).
 * Collective on comm.  Overwrites buf on every rank but root. */
mn_err mn_dist_bcast_floats(MPI_Comm comm, float *buf, size_t n, int root);

/* Number of nodes the ranks of comm span, as the MPI library sees them: the shared-memory domains of
 * MPI_Comm_split_type(MPI_COMM_TYPE_SHARED).  *max_per_node (may be NULL) receives the largest number of ranks on one
 * node.  The same on every rank.  Collective on comm. */
mn_err mn_dist_node_count(MPI_Comm comm, int *nodes, int *max_per_node);

/* ---- agreement and replica consistency ------------------------------------------------------------------------- */

/* Agree on a flag (a caught signal, a NaN loss): *global = max over comm of `local`, the same on every rank.
 * Collective on comm. */
mn_err mn_dist_agree_flag(MPI_Comm comm, int local, int *global);

/* 64-bit hash of `bytes` bytes (the XXH64 construction, seed 0).  Changes with any single bit.  Not collective. */
uint64_t mn_hash64(const void *data, size_t bytes);

/* Check that buf[0..bytes) is bitwise identical on every rank of comm: each rank hashes its bytes, the hashes are
 * all-gathered and compared.  Returns MN_OK when they all agree; otherwise MN_ERR_INTERNAL on EVERY rank (the error
 * is agreed: all ranks see the same gathered hashes) with a message naming `what` and the ranks whose hash differs
 * from the majority (ties: from the lowest rank's).  If `nbad` is not NULL it receives the number of such ranks.
 * comm == MPI_COMM_NULL is a no-op.  Collective on comm. */
mn_err mn_dist_check_replicas(MPI_Comm comm, const void *buf, size_t bytes, const char *what, int *nbad);

/* ---- timeline (Chrome trace JSON) ------------------------------------------------------------------------------ */

typedef struct mn_trace mn_trace;

/* Open a per-rank timeline file in the Chrome trace "JSON array" format (load it in chrome://tracing or Perfetto;
 * concatenating the arrays of several ranks is done by the viewer, each rank is one "pid").  Times are seconds
 * from MPI_Wtime; the file stores microseconds relative to the time of this call.  Not collective; any rank may
 * open its own file.  Returns MN_ERR_IO naming the path if it cannot be created. */
mn_err mn_trace_open(const char *path, int rank, mn_trace **out);

/* Append a complete event: name, category ("compute", "allreduce", "data", ...), start (MPI_Wtime seconds) and
 * duration in seconds, on thread lane `tid` (0 = main).  t may be NULL (no-op), so callers need no branches.
 * Not collective. */
mn_err mn_trace_event(mn_trace *t, const char *name, const char *cat, double start, double dur, int tid);

/* Finish the JSON and close the file; sets *t to NULL, accepts NULL.  Not collective. */
mn_err mn_trace_close(mn_trace **t);

/* ---- the bucketed gradient reducer ----------------------------------------------------------------------------- */

/* Default bucket size in bytes (PyTorch DDP's bucket_cap_mb = 25). */
#define MN_REDUCER_DEFAULT_BUCKET_BYTES ((size_t)25 << 20)

typedef struct mn_reducer mn_reducer;

/* Timings of the last step (seconds, MPI_Wtime). */
typedef struct mn_reducer_stats {
    int nbuckets;
    double inflight;  /* union of the intervals during which at least one bucket's all-reduce was outstanding
                         (start of the first Iallreduce to detected completion of the last, minus gaps) */
    double wait;      /* time blocked in mn_reducer_finish waiting for outstanding reductions */
    double busy;      /* time inside mn_reducer_start/ready/progress: starting and driving the reductions.  Without
                         offload (shared memory, TCP) the copies and sums happen inside these calls, on the
                         caller's critical path, so this is communication cost too */
    double hidden;    /* share of inflight during which the caller computed instead of communicating:
                         (inflight - wait - busy) / inflight clipped to [0, 1]; 1 if inflight == 0.  An upper bound
                         of the communication hidden: a reduction only advances inside MPI calls, so inflight also
                         counts the time it sat idle between progress calls.  The honest figure compares the
                         exposed time (busy + finish) with a blocking all-reduce (benchmarks/bench_allreduce) */
    double total_samples; /* the all-reduced sample count the gradients were divided by */
} mn_reducer_stats;

/* A reducer for the range grad[range.offset .. range.offset+range.count) of a flat gradient buffer, all-reduced
 * over comm (the world duplicate for the encoder).  The range is cut into buckets of bucket_bytes (0: the default
 * 25 MiB) starting from its END: bucket 0 is the last bucket_bytes of the range, the last bucket is the (possibly
 * shorter) start of it, because the backward pass produces the gradients of the last layers first.
 * The reducer keeps a pointer to grad (not owned) and a reference to comm (not duplicated: comm must outlive it).
 * Memory: besides its bookkeeping (a ready bitmap of range.count bits) it allocates, and touches, one staging
 * buffer of range.count floats, the receive buffers of its out-of-place reductions (an in-place MPI_Iallreduce
 * makes Open MPI's libnbc use a binomial tree through rank 0; see reducer.c); nothing is allocated per step.
 * Optional `trace` (may be NULL, not owned) receives one "allreduce" event per bucket per step (lane tid 1), from
 * the start of its Iallreduce to the detection of its completion.
 * Not collective, but every rank must create it with the same range and bucket size. */
mn_err mn_reducer_create(MPI_Comm comm, float *grad, mn_range range, size_t bucket_bytes, mn_trace *trace,
                         mn_reducer **out);

/* Free; waits for nothing (finish first), sets *r to NULL, accepts NULL.  Not collective. */
void mn_reducer_destroy(mn_reducer **r);

/* Number of buckets and the float range of bucket i (0 = last range of the buffer).  Not collective. */
int mn_reducer_nbuckets(const mn_reducer *r);
mn_range mn_reducer_bucket(const mn_reducer *r, int i);

/* Begin a step: local_samples is the number of samples this rank contributed to the gradients (summed over its
 * micro-batches; may be 0).  Starts the non-blocking all-reduce of the sample count.  Fails if the previous step
 * was not finished.  Collective on comm (non-blocking). */
mn_err mn_reducer_start(mn_reducer *r, double local_samples);

/* As mn_reducer_start (the sample count is still all-reduced), but this step's buckets are not: each completes as
 * soon as it is declared ready, and grad keeps this rank's values (not summed, not divided).  For a step in which
 * the range is not trained (a frozen encoder, whose gradient is zero on every rank): it saves the all-reduce of the
 * whole range.  Every rank of comm must take the same call in the same step.  Collective on comm (non-blocking). */
mn_err mn_reducer_start_local(mn_reducer *r, double local_samples);

/* Declare grad[offset .. offset+count) final for this step (absolute offsets in the flat buffer; must lie inside
 * the reducer's range; ranges declared in one step must not overlap; count 0 is a no-op).  Every bucket that
 * becomes complete starts its MPI_Iallreduce (sum, out of place: from grad into the bucket's part of the staging
 * buffer; the mean is written back into grad once the bucket's reduction is seen complete), in bucket order: a
 * bucket completed before a lower-numbered one waits for it, so every rank starts the collectives in the same
 * order whatever the order of its ready calls.  A declared range is read by the reduction and then overwritten
 * with the mean: the caller must not touch it until mn_reducer_finish returns.
 * Collective on comm (non-blocking). */
mn_err mn_reducer_ready(mn_reducer *r, size_t offset, size_t count);

/* Drive outstanding reductions (Open MPI does not progress non-blocking collectives outside MPI calls): MPI_Test
 * on each outstanding request.  Cheap; call it between layers of the backward pass.  Not collective. */
mn_err mn_reducer_progress(mn_reducer *r);

/* End a step: every bucket must have been declared ready (checked: MN_ERR_INTERNAL naming the first missing
 * bucket otherwise).  Waits for all reductions, then writes the reduced sums times 1 / (all-reduced sample count)
 * into the range (buckets seen complete in a progress call were written there already), so the range holds the
 * mean gradient over all samples of all ranks.  If the total count is 0 the range receives the (zero) sum and
 * stats->total_samples is 0.  Fills *stats if not NULL.  Collective on comm.
 * After an error from ready/progress/finish the step cannot be completed (reductions may be outstanding on some
 * ranks only): end the job with mn_mpi_abort. */
mn_err mn_reducer_finish(mn_reducer *r, mn_reducer_stats *stats);

/* Adapters to the model's backward hooks (mn_model_set_hooks in model.h takes void callbacks of these exact
 * signatures; ctx = the reducer):
 *     mn_model_set_hooks(model, mn_reducer_hook_ready, mn_reducer_hook_progress, reducer);
 * They call mn_reducer_ready / mn_reducer_progress; since a hook cannot return an error, the first error is kept
 * (and printed where it happened) and returned by the next mn_reducer_finish.  Collective as their targets. */
void mn_reducer_hook_ready(void *ctx, size_t offset, size_t count);
void mn_reducer_hook_progress(void *ctx);

#endif
