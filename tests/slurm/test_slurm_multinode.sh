#!/bin/bash
# test_slurm_multinode.sh MEDNET CONFIGDIR JOBSDIR LAUNCH: the real `mednet` on two Slurm nodes, run inside
# `tests/slurm/slurm_harness.sh --nodes 2` (each node a slurmd in network, UTS and mount namespaces of its own).
# LAUNCH is how the job scripts start the ranks:
#   srun-pmix   srun --mpi=pmix (Open MPI)
#   srun-pmi2   srun --mpi=pmi2 (MPICH: Slurm's pmi2 plugin answers MPICH's PMI client)
#   mpiexec     MEDNET_LAUNCHER=<the MPI library's mpiexec> inside the allocation (MPICH's Hydra: its proxies are
#               started by srun on every node)
#
# 0. `mednet info` on -N 2 --ntasks-per-node=2 sees 4 ranks on 2 nodes.  srun-pmi2: the pmi2 plugin logs the PMI-1
#    init of MPICH's client and hands out a 2 x 2 process mapping.  Open MPI only: with
#    OMPI_MCA_btl_base_verbose the ranks report the tcp BTL towards ranks of the other node and vader (shared memory)
#    only towards ranks of their own node; with the BTLs limited to self,vader the job cannot start (the nodes are
#    reachable only over the network).  MPICH over UCX: the nodes share the kernel's boot id, so UCX joins them
#    through shared memory (UCX_TLS=self,sm runs); with MN_SLURM_OWN_BOOT_ID=1 (slurm_harness.sh) it cannot.
# 1. jobs/prep.sbatch -N 2 --ntasks-per-node=2 builds the mricron corpus (parallel HDF5 from both nodes).
# 2. The README's multi-node example, `sbatch -N 2 --ntasks-per-node=2 ... jobs/pretrain.sbatch MEDNET_CONFIG=...
#    MEDNET_OUT=... corpus.path=...`, MN_DRILL_N times (default 1): 4 ranks on mn-node1 and mn-node2; SIGUSR1 to the
#    batch shell after 3 steps (`scancel -b -s USR1`, what --signal=B:USR1@T delivers) -> forwarded -> checkpoint ->
#    REQUEUE marker -> requeue -> the second run resumes on both nodes -> every step done; COMPLETED after one requeue.
#    Small steps (batch 1, 16^3 crops, 12 steps; MN_MULTINODE_STEPS), the signal after step 3.
set -u
mednet=$1 configs=$2 jobs=$3 launch=$4
D=${MN_SLURM_DIR:?run me through slurm_harness.sh --nodes 2}
# shellcheck source=tests/slurm/slurm_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/slurm_lib.sh"  # check, job_field, wait_job
read -r -a nodes <<<"${MN_SLURM_NODES:-}"
[ "${#nodes[@]}" -ge 2 ] || { echo "FAIL: the harness started ${#nodes[@]} node(s), need 2 (--nodes 2)"; exit 1; }

# The launch settings of the job scripts, and the same launch for the direct `mednet info` step.
case $launch in
srun-pmix) settings=(MEDNET_SRUN_MPI=pmix) info_launch=(srun --mpi=pmix) ;;
srun-pmi2) settings=(MEDNET_SRUN_MPI=pmi2) info_launch=(srun --mpi=pmi2 --slurmd-debug=debug2) ;;
mpiexec)
    # The launcher of the MPI library mednet links with (Debian's plain `mpiexec` may be the other library's).
    mpiexec=
    if ldd "$mednet" | grep -q "libmpich"; then
        mpiexec=$(command -v mpiexec.hydra || command -v mpiexec.mpich)
    else
        mpiexec=$(command -v mpiexec.openmpi || command -v mpirun)
    fi
    [ -n "$mpiexec" ] || { echo "FAIL: no mpiexec for $mednet"; exit 1; }
    settings=(MEDNET_LAUNCHER="$mpiexec")
    info_launch=() ;;
*) echo "usage: $0 MEDNET CONFIGDIR JOBSDIR srun-pmix|srun-pmi2|mpiexec" >&2; exit 2 ;;
esac
openmpi=0
ldd "$mednet" | grep -q "libmpi\.so" && openmpi=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# ---- 0: the MPI library sees two nodes; Open MPI talks TCP between them ------------------------------------------
run_info() { # run_info OUTFILE: `mednet info` on 2 nodes x 2 tasks, as the job scripts launch
    if [ ${#info_launch[@]} -gt 0 ]; then
        "${info_launch[@]}" -N 2 --ntasks-per-node=2 -t 2 "$mednet" info >"$1" 2>&1
    else
        sbatch --wait -N 2 --ntasks-per-node=2 -t 2 -o "$1" --wrap "$mpiexec -n 4 $mednet info" >/dev/null
    fi
}
if [ "$openmpi" = 1 ]; then
    OMPI_MCA_btl_base_verbose=100 run_info "$D/info.out"
else
    run_info "$D/info.out"
fi
grep -v "mca: \|btl:\|slurmstepd" "$D/info.out"
check "info: 4 ranks" grep -q "^MPI ranks: 4$" "$D/info.out"
check "info: on 2 nodes, 2 ranks on each" grep -q "^MPI nodes: 2 (shared-memory domains; at most 2 ranks" "$D/info.out"
if [ "$launch" = srun-pmi2 ]; then
    # MPICH's simple PMI client speaks the PMI-1 wire protocol, which Slurm's pmi2 plugin also serves (its slurmstepd
    # logs the client's init at --slurmd-debug=debug2); the process mapping it hands out is 2 nodes x 2 ranks.
    check "pmi2: Slurm's pmi2 plugin served the ranks' PMI-1 init" \
        grep -q "mpi/pmi2: got client PMI1 init, version=1.1" "$D/info.out"
    check "pmi2: process mapping 2 nodes x 2 ranks" grep -q "value=(vector,(0,2,2))" "$D/info.out"
fi
if [ "$openmpi" = 1 ]; then
    # "[mn-node2:1234] mca: bml: Using tcp btl for send to [[job,vpid],1] on node mn-node1"
    sed -n 's/^\[\([^:]*\):[0-9]*\] mca: bml: Using \([a-z]*\) btl for send to .* on node \(.*\)$/\1 \2 \3/p' \
        "$D/info.out" | sort -u >"$D/btl.txt"
    echo "BTL per (from node, to node):"
    sed 's/^/  /' "$D/btl.txt"
    check "Open MPI: tcp between the two nodes" grep -q "^${nodes[0]} tcp ${nodes[1]}$" "$D/btl.txt"
    check "Open MPI: tcp between them the other way" grep -q "^${nodes[1]} tcp ${nodes[0]}$" "$D/btl.txt"
    check "Open MPI: vader (shared memory) only within a node" \
        test -z "$(awk '$2 == "vader" && $1 != $3' "$D/btl.txt")"
    check "Open MPI: tcp connections made" grep -q "btl:tcp: now connected to" "$D/info.out"
    OMPI_MCA_btl=self,vader run_info "$D/vader.out"
    rc=$?
    check "Open MPI: with shared memory only, the 2-node job cannot run (status $rc)" [ "$rc" -ne 0 ]
fi
if ldd "$mednet" | grep -q "libucx\|libucp"; then
    # MPICH's ch4:ucx: UCX joins processes of one machine (one boot id) through shared memory whatever their host
    # names.  The harness's nodes share the kernel's boot id unless MN_SLURM_OWN_BOOT_ID=1.
    UCX_TLS=self,sm run_info "$D/sm.out"
    if [ "${MN_SLURM_OWN_BOOT_ID:-0}" = 1 ]; then
        check "UCX: with shared memory only, the nodes cannot reach each other" \
            grep -q "Destination is unreachable" "$D/sm.out"
    else
        check "UCX: one boot id, so UCX joins the two nodes through shared memory (not tcp)" \
            grep -q "^MPI nodes: 2" "$D/sm.out"
    fi
fi

# ---- 1: the corpus, built from both nodes -------------------------------------------------------------------------
t0=$(date +%s)
id=$(sbatch --parsable -N 2 --ntasks-per-node=2 -c 1 -t 3 -o "$D/prep-%j.out" "$jobs/prep.sbatch" \
    MEDNET_BIN="$mednet" MEDNET_CONFIG="$configs/corpus_mricron.ini" MEDNET_CORPUS="$D/corpus.h5" "${settings[@]}")
wait_job "$id" 150
cat "$D/prep-$id.out"
check "prep on 2 nodes completed (state $state, $(($(date +%s) - t0)) s)" [ "$state" = COMPLETED ]
check "and wrote the corpus" [ -s "$D/corpus.h5" ]

# ---- 2: the README's multi-node example with the signal-and-requeue drill ----------------------------------------
# Small steps (batch 1, 16^3 crops): 4 ranks share the 2 cores of a CI machine.  The signal comes after step 3.
common="train.eval_batches=0 train.log_every=1 train.checkpoint_every=0 train.batch=1 sampler.crop=16"
steps=${MN_MULTINODE_STEPS:-12}
n=${MN_DRILL_N:-1}
passed=0
for i in $(seq 1 "$n"); do
    before=$nfail
    t0=$(date +%s)
    out=$D/run$i
    id=$(sbatch --parsable -N 2 --ntasks-per-node=2 -c 1 -t 5 -o "$D/run$i-%j.out" "$jobs/pretrain.sbatch" \
        MEDNET_BIN="$mednet" MEDNET_CONFIG="$configs/pretrain_mricron.ini" MEDNET_OUT="$out" "${settings[@]}" \
        MEDNET_OVERRIDES="$common train.steps=$steps" corpus.path="$D/corpus.h5")
    log=$D/run$i-$id.out
    for _ in $(seq 1 900); do
        grep -q "^step 3/" "$log" 2>/dev/null && break
        [ -z "$(squeue -h -j "$id" -o %i 2>/dev/null)" ] && break
        sleep 0.2
    done
    scancel -b -s USR1 "$id"
    wait_job "$id" 240 1
    echo "---- drill $i/$n ($launch): $log"
    cat "$log"
    echo "---- state $state, restarts $restarts, $(($(date +%s) - t0)) s"
    check "drill $i: the job got both nodes and 4 tasks" \
        grep -q "job $id run 1 on mn-node\[1-2\]: 4 tasks x 1 threads" "$log"
    check "drill $i: mednet ran 4 ranks on 2 nodes" grep -q "pretrain: 4 ranks x 1 threads on 2 nodes" "$log"
    check "drill $i: the batch shell forwarded SIGUSR1" grep -q "caught SIGUSR1 (time limit near" "$log"
    check "drill $i: the ranks checkpointed on it" grep -q "caught SIGUSR1 at step [0-9]*: writing a checkpoint" "$log"
    check "drill $i: rank 0 left the marker" grep -q "the run left $out/REQUEUE: checkpointed at step [0-9]*" "$log"
    check "drill $i: the script requeued the job" grep -q "requeueing job $id" "$log"
    check "drill $i: the second run got both nodes again" \
        grep -q "job $id run 2 on mn-node\[1-2\]: 4 tasks x 1 threads" "$log"
    check "drill $i: and resumed from the checkpoint" grep -q "^resumed from .*/ckpt-[0-9]*.h5 at step" "$log"
    check "drill $i: every step was done" grep -q "checkpoint: .*/ckpt-$steps.h5 (step $steps)" "$log"
    check "drill $i: COMPLETED after exactly one requeue (state $state, restarts $restarts)" \
        [ "$state" = COMPLETED -a "${restarts:-0}" = 1 ]
    check "drill $i: no marker left" [ ! -e "$out/REQUEUE" ]
    [ "$nfail" = "$before" ] && passed=$((passed + 1))
done
echo "multi-node drill ($launch): $passed/$n passed"
exit "$fail"
