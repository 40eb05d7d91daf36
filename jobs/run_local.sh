#!/bin/bash
# run_local.sh: run mednet with mpirun on this machine, the way jobs/pretrain.sbatch runs it under Slurm.
#
#   jobs/run_local.sh [-n RANKS] [-t THREADS] [pretrain|finetune|filter|...] CONFIG [section.key=value ...]
#
#   -n RANKS     MPI ranks (default $MEDNET_RANKS or 2); more ranks than cores is allowed (--oversubscribe)
#   -t THREADS   threads per rank for BLIS/OpenMP (default $MEDNET_THREADS or 1)
#   COMMAND      the mednet sub-command (default pretrain)
# Environment: MEDNET_BIN (default <repo>/build/mednet), MEDNET_OUT (default ./mednet-out),
#              MEDNET_OUT_KEY (config key receiving MEDNET_OUT, default train.out_dir),
#              MEDNET_MPIRUN_ARGS (extra mpirun options).
#
# Signals: SIGUSR1, SIGTERM and SIGINT (^C) to this script are forwarded to the ranks as SIGUSR1 (mpirun relays
# USR1 to every rank, whereas a TERM to mpirun tears the job down), so mednet checkpoints at the next step
# boundary, and rank 0 leaves MEDNET_OUT/REQUEUE ("checkpointed at step N, requeue me"); the script reads that
# marker, not mpirun's exit status (which launchers may lose), exits with 99 (MN_EXIT_REQUEUE) and says how to
# resume: run the same command again.  A second ^C is passed on as SIGTERM to stop at once.
# Exit status: 99 when the run left the marker, otherwise mpirun's.
set -u
MN_EXIT_REQUEUE=99   # must equal MN_EXIT_REQUEUE in include/mednet/signals.h
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ranks=${MEDNET_RANKS:-2}
threads=${MEDNET_THREADS:-1}
usage() { sed -n '4,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while getopts "n:t:h" opt; do
    case $opt in
    n) ranks=$OPTARG ;;
    t) threads=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
case "${1:-}" in
"" ) usage ;;
*.ini | */* ) cmd=pretrain ;;       # no command given: the first argument is the config
* ) cmd=$1; shift ;;
esac
[ $# -ge 1 ] || usage
config=$1
shift
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "run_local.sh: -n needs a positive integer, got '$ranks'" >&2; exit 2; }
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || { echo "run_local.sh: -t needs a positive integer, got '$threads'" >&2; exit 2; }

MEDNET_BIN=${MEDNET_BIN:-$here/../build/mednet}
MEDNET_OUT=${MEDNET_OUT:-$PWD/mednet-out}
MEDNET_OUT_KEY=${MEDNET_OUT_KEY:-train.out_dir}
MEDNET_MPIRUN_ARGS=${MEDNET_MPIRUN_ARGS:-}
if [ ! -x "$MEDNET_BIN" ]; then
    echo "run_local.sh: MEDNET_BIN '$MEDNET_BIN' is not an executable (build first: cmake -B build && make -C build)" >&2
    exit 2
fi
mkdir -p "$MEDNET_OUT" || exit 1

export OMP_NUM_THREADS=$threads
export BLIS_NUM_THREADS=$threads
export HDF5_USE_FILE_LOCKING=FALSE
root_args=()
[ "$(id -u)" -eq 0 ] && root_args=(--allow-run-as-root)

log() { echo "[run_local.sh $(date -u +%T)] $*"; }
log "$cmd with $ranks rank(s) x $threads thread(s): $MEDNET_BIN $cmd $config; output in $MEDNET_OUT"

pid=
interrupts=0
forward() { # forward SIGNAL-RECEIVED
    interrupts=$((interrupts + 1))
    if [ "$1" = INT ] && [ "$interrupts" -gt 1 ]; then
        log "second interrupt: stopping the ranks now"
        [ -n "$pid" ] && kill -s TERM "$pid" 2>/dev/null
        return
    fi
    log "caught SIG$1; asking the ranks to checkpoint and stop (SIGUSR1)"
    [ -n "$pid" ] && kill -s USR1 "$pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

# A marker of an earlier run says nothing about this one (mednet removes it too, once it holds the folder).
rm -f "$MEDNET_OUT/REQUEUE"
# shellcheck disable=SC2086  # MEDNET_MPIRUN_ARGS is a word list on purpose
mpirun -n "$ranks" --oversubscribe --bind-to none "${root_args[@]}" -x OMP_NUM_THREADS -x BLIS_NUM_THREADS \
    -x HDF5_USE_FILE_LOCKING $MEDNET_MPIRUN_ARGS \
    "$MEDNET_BIN" "$cmd" "$config" "$MEDNET_OUT_KEY=$MEDNET_OUT" "$@" &
pid=$!
while :; do
    wait "$pid"
    rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
done
if [ -f "$MEDNET_OUT/REQUEUE" ]; then
    log "$(head -n 1 "$MEDNET_OUT/REQUEUE") (mpirun status $rc); run the same command again to resume from" \
        "$MEDNET_OUT"
    rc=$MN_EXIT_REQUEUE
else
    log "mednet $cmd ended with status $rc"
fi
exit "$rc"
