#!/bin/bash
# test_slurm_requeue.sh SIGPROG JOBSDIR: the requeue rule of jobs/pretrain.sbatch, run inside
# tests/slurm/slurm_harness.sh, with tests/slurm/sigprog as the mednet binary (it checkpoints on a signal and leaves
# the REQUEUE marker exactly as mednet does).
#
# 1. The drill, MN_DRILL_N times (default 1): `sbatch --export=NONE -N 1 --ntasks-per-node=3` (settings as NAME=value
#    arguments, none from this shell) must get 3 ranks with the job's environment (OMP_NUM_THREADS reaches them);
#    SIGUSR1 to the batch shell (`scancel -b -s USR1`, what --signal=B:USR1@T does) -> forwarded -> checkpoint ->
#    marker -> requeue -> the second run resumes -> finishes; the job ends COMPLETED after exactly one requeue.
# 2. A plain `scancel`: the ranks checkpoint, but the job ends CANCELLED and is never restarted.
# 3. Preemption (the harness's `urgent` partition, PreemptMode=REQUEUE, GraceTime): Slurm sends SIGTERM to the ranks
#    only; they checkpoint, the script requeues on the marker, and the job resumes and completes.
set -u
sigprog=$1 jobs=$2
D=${MN_SLURM_DIR:?run me through slurm_harness.sh}
# shellcheck source=tests/slurm/slurm_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/slurm_lib.sh"  # check, job_field, wait_job
absent() { ! grep -q "$@"; }
wait_log() { # wait_log ID FILE PATTERN TIMEOUT_S: until FILE has PATTERN; fails at once when job ID has ended
    local i
    for i in $(seq 1 $(($4 * 10))); do
        grep -q "$3" "$2" 2>/dev/null && return 0
        [ $((i % 10)) = 0 ] && [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ] && break
        sleep 0.1
    done
    echo "FAIL: job $1 never logged '$3'"
    fail=1
    return 1
}

# ---- 1: the drill -----------------------------------------------------------------------------------------------
n=${MN_DRILL_N:-1}
passed=0
for i in $(seq 1 "$n"); do
    t0=$(date +%s)
    before=$fail
    out=$D/drill$i
    mkdir -p "$out"
    id=$(env -i PATH="$PATH" SLURM_CONF="$SLURM_CONF" sbatch --parsable --export=NONE -N 1 --ntasks-per-node=3 -c 1 \
        -t 5 -o "$out/job-%j.out" "$jobs/pretrain.sbatch" MEDNET_BIN="$sigprog" MEDNET_CONFIG=/dev/null \
        MEDNET_OUT="$out")
    log=$out/job-$id.out
    wait_log "$id" "$log" "sigprog: fresh start" 60 && sleep 0.3 && scancel -b -s USR1 "$id"
    wait_job "$id" 90 1
    echo "---- drill $i/$n: $log"
    cat "$log"
    echo "---- state $state, restarts $restarts, $(($(date +%s) - t0)) s"
    check "drill $i: 3 ranks from --ntasks-per-node=3 under --export=NONE, with the job's environment" \
        grep -q "sigprog: fresh start on 3 ranks (OMP_NUM_THREADS=1)" "$log"
    check "drill $i: the batch shell forwarded SIGUSR1" grep -q "caught SIGUSR1 (time limit near" "$log"
    check "drill $i: the ranks checkpointed" grep -q "sigprog: SIGUSR1 received; checkpointed step" "$log"
    check "drill $i: the script read the marker" grep -q "the run left $out/REQUEUE: checkpointed at step" "$log"
    check "drill $i: and requeued the job" grep -q "requeueing job $id" "$log"
    check "drill $i: the second run resumed" grep -q "sigprog: resumed from .*/ckpt-[0-9]*.h5 at step .* on 3 ranks" \
        "$log"
    check "drill $i: and finished" grep -q "sigprog: finished at step" "$log"
    check "drill $i: job COMPLETED after exactly one requeue (state $state, restarts $restarts)" \
        [ "$state" = COMPLETED -a "$restarts" = 1 ]
    check "drill $i: no marker left" [ ! -e "$out/REQUEUE" ]
    [ "$fail" = "$before" ] && passed=$((passed + 1))
done
echo "drill: $passed/$n passed"

# ---- 2: a plain scancel does not requeue ------------------------------------------------------------------------
out=$D/cancel
mkdir -p "$out"
id=$(MEDNET_BIN=$sigprog MEDNET_CONFIG=/dev/null MEDNET_OUT=$out \
    sbatch --parsable -n 2 -c 1 -t 5 -o "$out/job-%j.out" "$jobs/pretrain.sbatch")
log=$out/job-$id.out
wait_log "$id" "$log" "sigprog: fresh start" 60 && sleep 0.3 && scancel "$id"
# CANCELLED (not COMPLETING) means the batch shell has ended: a requeue it asked for would show as PENDING now.
wait_job "$id" 30
sleep 1
state=$(job_field "$id" JobState) restarts=$(job_field "$id" Restarts)
echo "---- $log"
cat "$log"
echo "---- state $state, restarts $restarts"
check "scancel: the ranks checkpointed" grep -q "sigprog: SIGTERM received; checkpointed step" "$log"
check "scancel: the script saw the cancel" grep -q "was cancelled (state .*): not requeueing" "$log"
check "scancel: the job ended CANCELLED, never restarted (state $state, restarts $restarts)" \
    [ "$state" = CANCELLED -a "$restarts" = 0 ]
check "scancel: it ran once" [ "$(grep -c "sigprog: fresh start\|sigprog: resumed" "$log")" = 1 ]
check "scancel: no requeue asked for" absent "requeueing job" "$log"

# ---- 3: preemption requeues ---------------------------------------------------------------------------------------
out=$D/preempt
mkdir -p "$out"
id=$(MEDNET_BIN=$sigprog MEDNET_CONFIG=/dev/null MEDNET_OUT=$out \
    sbatch --parsable -n 4 -c 1 -t 5 -o "$out/job-%j.out" "$jobs/pretrain.sbatch")
log=$out/job-$id.out
wait_log "$id" "$log" "sigprog: fresh start" 60 && sleep 0.3
uid=$(sbatch --parsable -p urgent -n 2 -t 1 -o "$out/urgent-%j.out" --wrap "sleep 1")
wait_job "$id" 90 1
echo "---- $log"
cat "$log"
echo "---- state $state, restarts $restarts; urgent job $(job_field "$uid" JobState)"
check "preemption: the ranks checkpointed on Slurm's SIGTERM" grep -q "sigprog: SIGTERM received; checkpointed" "$log"
check "preemption: the script requeued on the marker" grep -q "requeueing job $id" "$log"
check "preemption: the requeued run resumed" grep -q "sigprog: resumed from" "$log"
check "preemption: job COMPLETED after a requeue (state $state, restarts $restarts)" \
    [ "$state" = COMPLETED -a "${restarts:-0}" -ge 1 ]
check "preemption: the urgent job ran" [ "$(job_field "$uid" JobState)" = COMPLETED ]
exit "$fail"
