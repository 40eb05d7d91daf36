#!/bin/bash
# test_slurm_pretrain.sh MEDNET CONFIGDIR JOBSDIR: the real `mednet pretrain` under Slurm, run inside
# tests/slurm/slurm_harness.sh.
#
# 0. jobs/prep.sbatch under --export=NONE builds the mricron corpus with 2 tasks.
# 1. jobs/pretrain.sbatch with 2 tasks (srun, the site's MpiDefault=pmix) pre-trains on it to completion.
# 2. jobs/pretrain.sbatch (sized from job 1's speed to about 30 s of steps) gets SIGUSR1 on its batch shell after 5
#    steps, as --signal=B:USR1@T delivers it: the batch shell forwards USR1, the ranks agree on it, write a
#    checkpoint, rank 0 leaves the REQUEUE marker, the script requeues the job on it, and the requeued run resumes
#    from the checkpoint until every step is done; no marker is left.
set -u
mednet=$1 configs=$2 jobs=$3
D=${MN_SLURM_DIR:?run me through slurm_harness.sh}
# shellcheck source=tests/slurm/slurm_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/slurm_lib.sh"  # check, job_field, wait_job

# The corpus, built on the compute node by jobs/prep.sbatch (2 tasks, settings as arguments, nothing exported).
id=$(env -i PATH="$PATH" SLURM_CONF="$SLURM_CONF" sbatch --parsable --export=NONE -n 2 -c 1 -t 2 \
    -o "$D/prep-%j.out" "$jobs/prep.sbatch" MEDNET_BIN="$mednet" MEDNET_CONFIG="$configs/corpus_mricron.ini" \
    MEDNET_CORPUS="$D/corpus.h5")
wait_job "$id" 60
cat "$D/prep-$id.out"
check "prep.sbatch job completed (state $state)" [ "$state" = COMPLETED ]
check "and wrote the corpus" [ -s "$D/corpus.h5" ]
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

# ---- 2: the pre-timeout signal: signal -> checkpoint -> requeue -> resume -> done --------------------------------
# The signal is what `--signal=B:USR1@T` delivers (USR1 to the batch shell), sent with `scancel -b -s USR1` once the
# run has done 5 steps: Slurm's own timing of --signal varies by tens of seconds (it has arrived 1 s into a 1-minute
# job), and a signal before the first step checkpoints nothing (it is tested in tests/train).  The job is sized from
# job 1's step time to about 30 s of steps (at least 60) under a 5-minute limit, so no second signal comes.
secs=$(sed -n 's/^done: 10 steps in \([0-9.]*\) s.*/\1/p' "$D"/run1-*.out | head -n 1)
steps=$(awk -v s="${secs:-10}" 'BEGIN { n = int(30 / (s / 10)); print (n < 60 ? 60 : n) }')
echo "job 1 took ${secs:-?} s for 10 steps: job 2 runs $steps steps"
t0=$(date +%s)
id=$(MEDNET_OUT=$D/run2 MEDNET_OVERRIDES="$common train.steps=$steps" \
    sbatch --parsable -J mn-requeue -n 2 -c 1 -t 5 -o "$D/run2-%j.out" "$jobs/pretrain.sbatch")
for _ in $(seq 1 600); do
    grep -q "^step 5/" "$D/run2-$id.out" 2>/dev/null && break
    sleep 0.2
done
scancel -b -s USR1 "$id"
for _ in $(seq 1 600); do
    grep -q "requeueing job $id" "$D/run2-$id.out" 2>/dev/null && break
    [ -z "$(squeue -h -j "$id" -o %i 2>/dev/null)" ] && break
    sleep 0.2
done
wait_job "$id" 200
log=$D/run2-$id.out
cat "$log"
echo "requeue job: state $state, restarts $restarts, $(($(date +%s) - t0)) s"
check "job completed" [ "$state" = COMPLETED ]
check "job was requeued at least once" [ "${restarts:-0}" -ge 1 ]
check "ranks checkpointed on the forwarded SIGUSR1" grep -q "caught SIGUSR1 at step [0-9]*: writing a checkpoint" "$log"
check "rank 0 left the marker" grep -q "the run left $D/run2/REQUEUE: checkpointed at step [0-9]*, requeue me" "$log"
check "the script requeued on it" grep -q "requeueing job $id" "$log"
check "a requeued run resumed from the checkpoint" grep -q "^resumed from .*/ckpt-[0-9]*.h5 at step" "$log"
check "every step was done" grep -q "checkpoint: .*/ckpt-$steps.h5 (step $steps)" "$log"
check "and the finished run left no marker" [ ! -e "$D/run2/REQUEUE" ]
exit "$fail"
