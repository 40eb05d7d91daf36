#!/bin/bash
# scaling_sweep.sh: submit one jobs/pretrain.sbatch per rank count, for a strong- or weak-scaling study.
#
#   MEDNET_BIN=... MEDNET_CONFIG=... MEDNET_OUT=/scratch/$USER/scaling \
#     jobs/scaling_sweep.sh [-c CPUS_PER_TASK] [-N TASKS_PER_NODE] [-t TIME] [-L LEAD] P1 P2 ... [-- key=value ...]
#
# Each rank count P runs as its own job (a Slurm job array cannot vary --ntasks), named mednet-scale-P, with
# MEDNET_OUT=$MEDNET_OUT/P<P> so that every run keeps its own metrics, timelines and checkpoints for the analysis
# tools; the nodes are ceil(P / TASKS_PER_NODE).  Overrides after `--` go to every run (e.g. train.steps=200
# train.trace=1; scale the global batch through train.batch for weak scaling).  Prints one "P jobid" line per run.
# -L LEAD sets the pre-timeout signal lead in seconds (--signal=B:USR1@LEAD; default: pretrain.sbatch's), see README
# "Signal lead time".  jobs/scaling_study.sh builds weak and strong sweeps on this script.
# Extra sbatch options: MEDNET_SBATCH_ARGS (e.g. "--partition=compute --account=proj").
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cpus=1 per_node=0 time=00:30:00 lead=
while getopts "c:N:t:L:h" opt; do
    case $opt in
    c) cpus=$OPTARG ;;
    N) per_node=$OPTARG ;;
    t) time=$OPTARG ;;
    L) lead=$OPTARG ;;
    *) sed -n '4,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
counts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do counts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#counts[@]} -gt 0 ] || { echo "scaling_sweep.sh: give at least one rank count" >&2; exit 2; }
signal=()
if [ -n "$lead" ]; then
    [[ "$lead" =~ ^[1-9][0-9]*$ ]] || { echo "scaling_sweep.sh: -L needs a lead time in seconds, got '$lead'" >&2; exit 2; }
    signal=(--signal="B:USR1@$lead")
fi
: "${MEDNET_BIN:?set MEDNET_BIN}" "${MEDNET_CONFIG:?set MEDNET_CONFIG}" "${MEDNET_OUT:?set MEDNET_OUT}"
MEDNET_SBATCH_ARGS=${MEDNET_SBATCH_ARGS:-}
mkdir -p "$MEDNET_OUT" || exit 1   # Slurm opens the --output file before the job's script runs

for p in "${counts[@]}"; do
    [[ "$p" =~ ^[1-9][0-9]*$ ]] || { echo "scaling_sweep.sh: rank count '$p' is not a positive integer" >&2; exit 2; }
    nodes=1
    [ "$per_node" -gt 0 ] && nodes=$(((p + per_node - 1) / per_node))
    # shellcheck disable=SC2086  # MEDNET_SBATCH_ARGS is a word list on purpose
    id=$(MEDNET_OUT="$MEDNET_OUT/P$p" sbatch --parsable --job-name="mednet-scale-$p" --nodes="$nodes" \
        --ntasks="$p" --cpus-per-task="$cpus" --time="$time" --output="$MEDNET_OUT/scale-P$p-%j.out" \
        "${signal[@]}" $MEDNET_SBATCH_ARGS "$here/pretrain.sbatch" "$@") || { echo "scaling_sweep.sh: sbatch failed for P=$p" >&2; exit 1; }
    echo "$p $id"
done
