/* parts.h: the part table of a data-parallel run and the whole gradient path over it.
 *
 * A run trains one encoder shared by every rank and one head per dataset, held only by the ranks whose shard has
 * volumes of that dataset.  The part table, built once at set-up and the same on every rank, has one row per part:
 *
 *   row 0        the encoder: held by every rank, reduced over the world;
 *   row 1 + k    the k-th dataset of the run (in corpus order): its head, held by the ranks of its communicator.
 *
 * A row carries everything the rest of the run needs about its part: the name (also the checkpoint prefix), the
 * corpus dataset index, the head index in this rank's model, the communicator, root (lowest holder) and holder count,
 * the parameter and batch-norm ranges of the flat model buffers, the optimiser's update count, and this step's sums
 * (importance weight and samples, local and all-reduced).  Rows are the ONE index space of datasets in the training
 * code: a sample's corpus dataset maps to its row once (mn_parts_row_of), and everything else goes by row.
 *
 * What this module owns (the contract of DESIGN.md, "The parallel contract"):
 *   - the encoder gradient: a bucketed reducer (mednet/dist.h) started during the backward pass of the last
 *     micro-batch, divided by the world's total importance weight;
 *   - each head gradient: all-reduced over its holders and divided by its dataset's total weight; a head with no
 *     sample anywhere this step is marked not to be updated (total_weight == 0);
 *   - the NaN/Inf agreement over the world (every rank skips or stops together);
 *   - batch-norm running statistics, averaged over holders weighted by their sample counts this step;
 *   - replica checks of every part, agreed over the world.
 * It knows ranges and communicators, never layers: the model fills the ranges (mn_parts_set_ranges).
 */
#ifndef MEDNET_PARTS_H
#define MEDNET_PARTS_H

#include <mpi.h>
#include <stdint.h>

#include "mednet/dist.h"
#include "mednet/error.h"
#include "mednet/tensor.h"

#define MN_PART_NAME_LEN 64

typedef struct mn_part {
    char name[MN_PART_NAME_LEN]; /* "encoder", or the dataset's name */
    int dataset;          /* corpus dataset index; -1 for the encoder */
    int head;             /* head index in this rank's model; -1 for the encoder and where not held */
    int held;             /* 1 if this rank holds the part (the encoder: every rank) */
    MPI_Comm comm;        /* the world (encoder), the dataset's holders, or MPI_COMM_NULL where not held */
    int root;             /* world rank of the lowest holder */
    int nholders;
    mn_range params, bn;  /* ranges of this rank's flat params/grads/optimiser state and BN buffers ({0,0}: none) */
    int64_t updates;      /* optimiser updates applied to this part (Adam's t) */
    double weight, samples;             /* this step, this rank: importance-weight sum and sample count */
    double total_weight, total_samples; /* this step, summed over comm (after mn_parts_reduce) */
} mn_part;

typedef struct mn_parts {
    mn_dist *dist;        /* the world duplicate and one communicator per dataset */
    int nrows;            /* 1 + number of datasets */
    mn_part *row;
    int ncorpus;          /* corpus dataset count */
    int *row_of;          /* [ncorpus]: row of a corpus dataset, -1 if not trained */
    mn_reducer *reducer;  /* the encoder's bucketed reducer (after mn_parts_start_reducer) */
} mn_parts;

/* Build the table.  Dataset k (k < ndatasets) is corpus dataset corpus_index[k], named names[k]; holders is the
 * row-major table [ndatasets][size]: nonzero where a rank holds dataset k.  Every rank must pass the same arguments
 * (checked by mn_dist_create).  Head indices are assigned in row order over the held rows (0, 1, ...).
 * Collective on comm.  On error nothing is leaked. */
mn_err mn_parts_create(MPI_Comm comm, int ndatasets, const int *corpus_index, const char *const *names,
                       int ncorpus, const int *holders, mn_parts **out);

/* Free the table, its communicators and reducer; sets *p to NULL, accepts NULL.  Collective on the world. */
void mn_parts_destroy(mn_parts **p);

/* The row of corpus dataset d, or -1.  Not collective. */
int mn_parts_row_of(const mn_parts *p, int d);

/* Number of heads this rank holds (the model's head count).  Not collective. */
int mn_parts_nheads(const mn_parts *p);

/* Record a row's ranges in this rank's model (the encoder's, and each held head's).  Not collective. */
void mn_parts_set_ranges(mn_parts *p, int row, mn_range params, mn_range bn);

/* Create the encoder's bucketed reducer over grads (see mn_reducer_create).  Not collective. */
mn_err mn_parts_start_reducer(mn_parts *p, float *grads, size_t bucket_bytes, mn_trace *trace);

/* Begin a step: zero the local sums of every row.  Not collective. */
void mn_parts_begin_step(mn_parts *p);

/* Start the encoder reduction of this step with the local encoder weight (row 0's `weight`): call it after the
 * last micro-batch was drawn and before its backward pass, whose hooks (mn_reducer_hook_*, ctx = p->reducer)
 * declare the gradient ranges.  encoder_frozen (the same on every rank: a function of the step): the encoder is
 * not updated this step, so its gradient buckets are not all-reduced (mn_reducer_start_local); its weight still
 * is.  Collective on the world (non-blocking). */
mn_err mn_parts_start_step(mn_parts *p, int encoder_frozen);

/* Finish the gradient path of a step: wait for the encoder buckets (gradient divided by the world's total weight),
 * all-reduce each held head's weight, samples and gradient over its holders (divided by the head's total weight;
 * total_weight 0: gradient untouched, the head must not be updated), then agree over the world on numerical
 * trouble: `local_bad` (a non-finite loss seen here) or a non-finite gradient.  *skip = 1 on every rank when any
 * rank saw trouble.  stats (may be NULL) receives the encoder reducer's timings.  Collective on the world and on
 * every dataset communicator of this rank, in row order (deadlock-free: every rank goes through rows in one order).
 * Errors are not agreed (ranks may be inside different collectives): end the job with mn_mpi_exit_error. */
mn_err mn_parts_reduce(mn_parts *p, float *grads, size_t ngrads, int local_bad, int *skip, mn_reducer_stats *stats);

/* Batch-norm running statistics after an update: each held part's BN range replaced by the mean over its holders
 * weighted by their sample counts this step (a holder that saw no sample of the part contributes nothing; no
 * sample anywhere: unchanged).  Every replica gets the same bits.  Collective on the world and the dataset
 * communicators of this rank, in row order. */
mn_err mn_parts_average_bn(mn_parts *p, float *bn);

/* Check that every part's parameters are bitwise identical on its holders, then agree over the world: MN_OK on
 * every rank, or on every rank an agreed MN_ERR_INTERNAL (the holders of a mismatching part print the part's name
 * and the world ranks that differ; rank 0 prints which rank failed).  Collective on the world. */
mn_err mn_parts_check_replicas(mn_parts *p, const float *params);

#endif
