/* prof.h: a per-layer-type time breakdown of the training step, off unless asked for.
 *
 * Time is charged to exactly one kind at a time: mn_prof_push(kind) charges the time since the last event to the
 * kind on top of a small stack and makes `kind` the top, mn_prof_pop() charges and returns to the previous kind.
 * mn_prof_refine(kind) re-labels the top only while it is MN_PROF_CONV_BWD or one of its refinements, so the
 * convolution code can split its backward pass into data and weights without charging a head's convolutions
 * (pushed as MN_PROF_HEAD) to the encoder.  Disabled (the default), every call is one branch.  Not thread-safe:
 * call from the thread that runs the step (the parallel regions are inside the timed calls).
 */
#ifndef MEDNET_PROF_H
#define MEDNET_PROF_H

typedef enum mn_prof_kind {
    MN_PROF_OTHER,            /* whatever no other kind claims (residual adds, zeroing, copies) */
    MN_PROF_CONV_FWD,         /* encoder convolutions, forward (unfold, GEMM, transpose, bias) */
    MN_PROF_CONV_BWD,         /* encoder convolutions, backward, not yet refined (bias gradient) */
    MN_PROF_CONV_BWD_DATA,    /* ... input gradient: GEMM and fold */
    MN_PROF_CONV_BWD_WEIGHTS, /* ... weight gradient: unfold, GEMM, transpose */
    MN_PROF_BN_FWD,           /* encoder batch norm, forward */
    MN_PROF_BN_BWD,           /* encoder batch norm, backward */
    MN_PROF_RELU,             /* encoder ReLU and its backward mask */
    MN_PROF_POOL,             /* stem max pool and the type-A shortcut's average pool, both directions */
    MN_PROF_HEAD,             /* decoder heads, forward and backward, everything inside them */
    MN_PROF_LOSS,             /* loss and its gradient */
    MN_PROF_OPTIM,            /* the optimiser update */
    MN_PROF_NKINDS
} mn_prof_kind;

/* Turn the breakdown on or off (and reset it).  Not collective. */
void mn_prof_enable(int on);

/* 1 when enabled. */
int mn_prof_enabled(void);

/* Zero the totals (the enabled state is kept). */
void mn_prof_reset(void);

void mn_prof_push(mn_prof_kind kind);
void mn_prof_pop(void);
void mn_prof_refine(mn_prof_kind kind);

/* Seconds charged to `kind` since the last reset (the open interval of the top kind included). */
double mn_prof_seconds(mn_prof_kind kind);

/* Short name of a kind: "conv fwd", "conv bwd-data", ... */
const char *mn_prof_name(mn_prof_kind kind);

#endif
