#!/bin/bash
# test_slurm_pretrain.sh MEDNET CONFIGDIR JOBSDIR: the real `mednet pretrain` under Slurm, run inside
# tests/slurm/slurm_harness.sh.
#
# 1. jobs/pretrain.sbatch with 2 tasks (srun --mpi=pmix) pre-trains on the mricron corpus to completion.
# 2. jobs/pretrain.sbatch with a 1-minute limit (sized from job 1's speed to about 30 s of steps) and --signal=B:USR1@45: the batch shell forwards USR1, the ranks
#    agree on it, write a checkpoint and exit 99, the script requeues the job, and the requeued run resumes from the
#    checkpoint (possibly more than once, as the limit keeps running out) until every step is done.
set -u
mednet=$1 configs=$2 jobs=$3
D=${MN_SLURM_DIR:?run me through slurm_harness.sh}
fail=0
check() {
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}
job_field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
wait_job() { # wait_job ID TIMEOUT_S: until a final state
    local i
    for i in $(seq 1 $(($2 * 5))); do
        state=$(job_field "$1" JobState)
        restarts=$(job_field "$1" Restarts)
        case "$state" in
        COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED) return 0 ;;
        esac
        sleep 0.2
    done
}

# The corpus, built by a 2-task job step as a user would.
id=$(sbatch --parsable -J mn-prep -n 2 -c 1 -t 2 -o "$D/prep-%j.out" \
    --wrap "srun --mpi=pmix '$mednet' prep '$configs/corpus_mricron.ini' --output '$D/corpus.h5'")
wait_job "$id" 60
check "prep job completed (state $state)" [ "$state" = COMPLETED ]
export MEDNET_BIN=$mednet MEDNET_CONFIG=$configs/pretrain_mricron.ini
common="corpus.path=$D/corpus.h5 train.eval_batches=0 train.log_every=5 train.checkpoint_every=0"

# ---- 1: to completion on 2 tasks --------------------------------------------------------------------------------
t0=$(date +%s)
id=$(MEDNET_OUT=$D/run1 MEDNET_OVERRIDES="$common train.steps=10" \
    sbatch --parsable -J mn-pretrain -n 2 -c 1 -t 3 -o "$D/run1-%j.out" "$jobs/pretrain.sbatch")
wait_job "$id" 150
log=$D/run1-$id.out
cat "$log"
check "pretrain job completed (state $state, $(($(date +%s) - t0)) s)" [ "$state" = COMPLETED ]
check "it ran as one 2-rank MPI job" grep -q "pretrain: 2 ranks x 1 threads" "$log"
check "it finished its 10 steps" grep -q "^done: 10 steps" "$log"
check "and left the step-10 checkpoint" [ "$(cat "$D/run1/latest" 2>/dev/null)" = ckpt-10.h5 ]

# ---- 2: the time limit runs out: signal -> checkpoint -> requeue -> resume -> done -------------------------------
# The signal comes about 15 s into each run: size the job from job 1's step time to about 30 s of steps, so that
# the first run is always interrupted and a requeued run (the second, or a later one) finishes.
secs=$(sed -n 's/^done: 10 steps in \([0-9.]*\) s.*/\1/p' "$D"/run1-*.out | head -n 1)
steps=$(awk -v s="${secs:-10}" 'BEGIN { n = int(30 / (s / 10)); print (n < 40 ? 40 : n) }')
echo "job 1 took ${secs:-?} s for 10 steps: job 2 runs $steps steps"
t0=$(date +%s)
id=$(MEDNET_OUT=$D/run2 MEDNET_OVERRIDES="$common train.steps=$steps" \
    sbatch --parsable -J mn-requeue -n 2 -c 1 -t 1 --signal=B:USR1@45 -o "$D/run2-%j.out" "$jobs/pretrain.sbatch")
wait_job "$id" 200
log=$D/run2-$id.out
cat "$log"
echo "requeue job: state $state, restarts $restarts, $(($(date +%s) - t0)) s"
check "job completed" [ "$state" = COMPLETED ]
check "job was requeued at least once" [ "${restarts:-0}" -ge 1 ]
check "ranks checkpointed on the forwarded SIGUSR1" grep -q "caught SIGUSR1 at step [0-9]*: writing a checkpoint" "$log"
check "the script requeued on exit status 99" grep -q "requeueing job $id" "$log"
check "a requeued run resumed from the checkpoint" grep -q "^resumed from .*/ckpt-[0-9]*.h5 at step" "$log"
check "every step was done" grep -q "checkpoint: .*/ckpt-$steps.h5 (step $steps)" "$log"
exit "$fail"
