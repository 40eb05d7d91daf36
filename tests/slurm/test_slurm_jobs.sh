#!/bin/bash
# test_slurm_jobs.sh MEDNET SIGPROG JOBSDIR: the Slurm tests, run inside tests/slurm/slurm_harness.sh.
#
# 1. `mednet info` as a 2-task batch job through `srun --mpi=pmix`: must report 2 MPI ranks (one MPI job, not two
#    singletons).
# 1b. sigprog started without srun in a 2-task allocation: the launch check must stop it with the PMIx hint.
# 1d. a rank of a 2-task srun step fails on purpose: the job must end FAILED within seconds with its message.
# 1c. jobs/scaling_sweep.sh with P = 1 and 2 (sigprog finishing after 5 steps): one job per P, own directories.
# The requeue rule of the job scripts (signal, marker, cancel, preemption) is tested in test_slurm_requeue.sh, the
# time-limit signal with the real mednet in test_slurm_pretrain.sh.
set -u
mednet=$1 sigprog=$2 jobs=$3
D=${MN_SLURM_DIR:?run me through slurm_harness.sh}
# shellcheck source=tests/slurm/slurm_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/slurm_lib.sh"  # check, job_field, wait_job

# ---- 1: mednet info on 2 tasks ----------------------------------------------------------------------------------
t0=$(date +%s)
id=$(sbatch --parsable -J mn-info -n 2 -c 1 -t 2 -o "$D/info-%j.out" --wrap "srun --mpi=pmix '$mednet' info")
wait_job "$id" 60
cat "$D/info-$id.out"
check "info job completed (state $state, exit code $(job_field "$id" ExitCode))" [ "$state" = COMPLETED ]
check "info job reports 2 MPI ranks" grep -q "^MPI ranks: 2$" "$D/info-$id.out"
echo "info job took $(($(date +%s) - t0)) s"

# ---- 1b: the launch check catches a forgotten srun (one singleton in a 2-task allocation) ------------------------
id=$(sbatch --parsable -J mn-nosrun -n 2 -c 1 -t 2 -o "$D/nosrun-%j.out" \
    --wrap "'$sigprog' pretrain /dev/null train.out_dir=$D/nosrun")
wait_job "$id" 60
cat "$D/nosrun-$id.out"
check "a 1-rank launch in a 2-task allocation fails (state $state)" [ "$state" = FAILED ]
check "and says why" grep -q "MPI world size is 1 but SLURM_NTASKS=2.*" "$D/nosrun-$id.out"
check "with the srun --mpi=pmix hint" grep -q "HINT: .*srun --mpi=pmix" "$D/nosrun-$id.out"

# ---- 1d: a rank failing on purpose under srun ends the whole job quickly, with its message ------------------------
t1=$(date +%s)
id=$(sbatch --parsable -J mn-fail -n 2 -c 1 -t 2 -o "$D/fail-%j.out" \
    --wrap "srun --mpi=pmix '$sigprog' pretrain /dev/null train.out_dir=$D/fail sigprog.fail_rank=1")
wait_job "$id" 60
cat "$D/fail-$id.out"
el=$(($(date +%s) - t1))
check "a failing rank fails the job (state $state)" [ "$state" = FAILED ]
check "within 30 s (took $el s, including scheduling)" [ "$el" -le 30 ]
check "with the failing rank's message" grep -q "\[rank 1\] .*cannot read its shard at step 3 (deliberate" "$D/fail-$id.out"
check "and the abort line" grep -q "\[rank 1\] mednet: fatal error MN_ERR_IO on this rank; aborting the job" "$D/fail-$id.out"

# ---- 1c: jobs/scaling_sweep.sh submits one pretrain.sbatch job per rank count ------------------------------------
MEDNET_BIN=$sigprog MEDNET_CONFIG=/dev/null MEDNET_OUT=$D/sweep \
    bash "$jobs/scaling_sweep.sh" -t 5 1 2 -- sigprog.steps=5 >"$D/sweep.ids"
cat "$D/sweep.ids"
check "sweep submitted 2 jobs" [ "$(wc -l <"$D/sweep.ids")" -eq 2 ]
while read -r p sid; do
    wait_job "$sid" 60
    check "sweep P=$p completed (state $state)" [ "$state" = COMPLETED ]
    check "sweep P=$p ran on $p rank(s)" grep -q "sigprog: finished 5 steps on $p ranks" "$D/sweep/scale-P$p-$sid.out"
    check "sweep P=$p has its own output directory" [ -d "$D/sweep/P$p" ]
done <"$D/sweep.ids"

exit "$fail"
