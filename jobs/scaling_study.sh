#!/bin/bash
# scaling_study.sh: a weak- or strong-scaling study of `mednet pretrain` over rank counts, from sweep to table.
#
#   jobs/scaling_study.sh local|slurm [options] CONFIG P1 P2 ... [-- section.key=value ...]
#
#   -m weak|strong   weak: every rank keeps the batch of -b (global batch grows with P); strong: the global batch of
#                    -g is split over the ranks (per-rank batch g / P, which must be a whole number)   (weak)
#   -b BATCH         crops per rank per step, weak scaling                                              (2)
#   -g GLOBAL        crops per step over all ranks, strong scaling                                      (4)
#   -w WARMUP        steps run before the measured ones (excluded from every figure)                    (2)
#   -s STEPS         measured steps                                                                     (5)
#   -t THREADS       threads per rank                                                                   (1)
#   -N RANKS         ranks per node (slurm; the local machine is one node)                              (all)
#   -o DIR           results folder: DIR/P<P> per run, DIR/study.env, DIR/summary/                     (./scaling)
#   -T TIME          Slurm time limit per job                                                           (00:30:00)
#   -L SECONDS       Slurm --signal lead time (default: the job script's, see README "Signal lead time")
#   -D DEPTHS        local: also one single-rank run per listed depth (e.g. 18,50) in DIR/depth<D>/P1, whose
#                    compute the projection uses for those depths                                       (none)
#   -f               remove an existing run folder DIR/P<P> instead of refusing
#
# local: runs the sweep now with mpirun (jobs/run_local.sh), one run after the other, and says when the ranks
#   outnumber the cores (OVERSUBSCRIBED: the figures then measure the scheduler as much as mednet); for P >= 2 it
#   also runs benchmarks/bench_allreduce (DIR/P<P>/allreduce.txt) for the network model; then prints the table
#   and writes the plots (benchmarks/scaling_collect.py DIR).
# slurm: submits one jobs/pretrain.sbatch per P through jobs/scaling_sweep.sh; collect when the jobs are done with
#   benchmarks/scaling_collect.py DIR.
# Every run logs every step (train.log_every=1), writes no checkpoint but its final one (whose time is the table's
# checkpoint column), skips the replica checks and the evaluation, and starts fresh (train.resume=false); give
# other overrides after `--`.  Environment: MEDNET_BIN (default <repo>/build/mednet), MEDNET_BENCH_DIR (default
# <repo>/build/benchmarks), MEDNET_SBATCH_ARGS, and what run_local.sh and pretrain.sbatch read.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
usage() { sed -n '4,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "scaling_study.sh: $*" >&2; exit 2; }
where=${1:-}
case "$where" in local | slurm) shift ;; *) usage ;; esac
mode=weak batch=2 global=4 warmup=2 steps=5 threads=1 per_node=0 out=$PWD/scaling time=00:30:00 lead= force=0 extra=
while getopts "m:b:g:w:s:t:N:o:T:L:D:fh" opt; do
    case $opt in
    m) mode=$OPTARG ;;
    b) batch=$OPTARG ;;
    g) global=$OPTARG ;;
    w) warmup=$OPTARG ;;
    s) steps=$OPTARG ;;
    t) threads=$OPTARG ;;
    N) per_node=$OPTARG ;;
    o) out=$OPTARG ;;
    T) time=$OPTARG ;;
    L) lead=$OPTARG ;;
    D) extra=$OPTARG ;;
    f) force=1 ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || usage
config=$1
shift
counts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do counts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ -r "$config" ] || die "cannot read the configuration '$config'"
case "$mode" in weak | strong) ;; *) die "-m must be weak or strong, got '$mode'" ;; esac
for v in batch global steps threads; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "-${v:0:1} needs a positive integer, got '${!v}'"
done
[[ "$warmup" =~ ^[0-9]+$ ]] || die "-w needs a whole number, got '$warmup'"
[[ "$per_node" =~ ^[0-9]+$ ]] || die "-N needs a whole number, got '$per_node'"
[ ${#counts[@]} -gt 0 ] || die "give at least one rank count"
for p in "${counts[@]}"; do
    [[ "$p" =~ ^[1-9][0-9]*$ ]] || die "rank count '$p' is not a positive integer"
    if [ "$mode" = strong ] && [ $((global % p)) -ne 0 ]; then
        die "strong scaling: the global batch $global is not divisible by P=$p (choose -g as a multiple of every P)"
    fi
done
case "$config" in /*) ;; *) config=$PWD/$config ;; esac
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
depths=()
[ -n "$extra" ] && IFS=, read -r -a depths <<<"$extra"
runs=()
for p in "${counts[@]}"; do runs+=("P$p"); done
for d in "${depths[@]}"; do
    [[ "$d" =~ ^(10|18|34|50|101|152|200)$ ]] || die "-D: '$d' is not a mednet depth (10 18 34 50 101 152 200)"
    runs+=("depth$d")
done
for f in "${runs[@]}"; do
    if [ -e "$out/$f" ]; then
        [ "$force" = 1 ] || die "$out/$f exists (an earlier run; its metrics would mix with this one): remove it or pass -f"
        rm -rf -- "${out:?}/$f"
    fi
done

total=$((warmup + steps))
common=(train.steps="$total" train.log_every=1 train.checkpoint_every=0 train.keep=1 train.consistency_every=0
        train.eval_batches=0 train.resume=false train.micro_batches=1)
per_rank() { if [ "$mode" = weak ]; then echo "$batch"; else echo $((global / $1)); fi; }
cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)   # not nproc: it reads OMP_NUM_THREADS
host_cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
{
    echo "mode=$mode"
    echo "launcher=$where"
    echo "warmup=$warmup"
    echo "steps=$steps"
    echo "threads=$threads"
    echo "ranks_per_node=$per_node"
    echo "batch=$batch"
    echo "global_batch=$global"
    echo "config=$config"
    echo "counts=${counts[*]}"
    echo "host=$(hostname)"
    echo "cpu=${host_cpu:-unknown}"
    echo "cores=$cores"
    echo "date=$(date -u +%FT%TZ)"
} >"$out/study.env"

log() { echo "[scaling_study.sh] $*"; }
if [ -z "${MEDNET_BIN:-}" ]; then   # as the job scripts choose it: the build next to jobs/, an installed copy, PATH
    for b in "$repo/build/mednet" "$repo/../../bin/mednet" "$(command -v mednet 2>/dev/null)"; do
        [ -n "$b" ] && [ -x "$b" ] && { MEDNET_BIN=$b; break; }
    done
fi
[ -n "${MEDNET_BIN:-}" ] && [ -x "$MEDNET_BIN" ] || die "no mednet executable: build it (cmake) or set MEDNET_BIN"
export MEDNET_BIN
if [ "$where" = slurm ]; then
    sweep_args=(-c "$threads" -t "$time")
    [ "$per_node" -gt 0 ] && sweep_args+=(-N "$per_node")
    [ -n "$lead" ] && sweep_args+=(-L "$lead")
    for p in "${counts[@]}"; do
        MEDNET_OUT=$out MEDNET_CONFIG=$config bash "$here/scaling_sweep.sh" "${sweep_args[@]}" "$p" -- \
            "${common[@]}" train.batch="$(per_rank "$p")" "$@" || exit 1
    done
    log "submitted; when the jobs are done: benchmarks/scaling_collect.py $out"
    exit 0
fi

# ---- local ----
[ -n "$lead" ] && log "-L has no meaning for a local sweep (no Slurm signal); ignored"
[ "$per_node" -gt 0 ] && log "-N $per_node: this machine is one node; every rank runs on it"
bench=${MEDNET_BENCH_DIR:-$repo/build/benchmarks}/bench_allreduce
export OMPI_MCA_rmaps_base_oversubscribe=1
root_args=()
[ "$(id -u)" -eq 0 ] && root_args=(--allow-run-as-root)
log "$mode scaling over P = ${counts[*]}: $warmup warm-up + $steps measured steps, $threads thread(s) per rank," \
    "on $(hostname) ($cores cores, ${host_cpu:-unknown CPU}); results in $out"
status=0
for p in "${counts[@]}"; do
    b=$(per_rank "$p")
    used=$((p * threads))
    note="$used of $cores cores"
    [ "$used" -gt "$cores" ] && note="OVERSUBSCRIBED: $p ranks x $threads thread(s) on $cores cores ($(awk -v u="$used" \
        -v c="$cores" 'BEGIN { printf "%.1f", u / c }') per core)"
    log "P=$p: batch $b per rank, global batch $((b * p)); $note"
    mkdir -p "$out/P$p"
    {
        echo "ranks=$p"
        echo "threads=$threads"
        echo "batch=$b"
        echo "cores=$cores"
        echo "oversubscribed=$([ "$used" -gt "$cores" ] && echo 1 || echo 0)"
    } >"$out/P$p/run.env"
    MEDNET_OUT=$out/P$p bash "$here/run_local.sh" -n "$p" -t "$threads" pretrain "$config" "${common[@]}" \
        train.batch="$b" "$@" >"$out/P$p/mednet.log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        log "P=$p: mednet ended with status $rc; its log: $out/P$p/mednet.log"
        tail -n 5 "$out/P$p/mednet.log" >&2
        status=1
        continue
    fi
    grep -m1 "step $total/$total" "$out/P$p/mednet.log" | sed 's/^/    /'
    if [ "$p" -ge 2 ] && [ -x "$bench" ]; then
        # Message sizes for the alpha-beta fit of the network model: a latency-bound one and two bandwidth-bound.
        OMP_NUM_THREADS=1 mpirun -n "$p" --bind-to none "${root_args[@]}" "$bench" 0.004 1 8 \
            >"$out/P$p/allreduce.txt" 2>&1 || log "P=$p: bench_allreduce failed (see $out/P$p/allreduce.txt)"
    fi
done
depth_runs=()
for d in "${depths[@]}"; do
    b=$(per_rank "$(printf '%s\n' "${counts[@]}" | sort -n | head -n 1)")   # the smallest run's per-rank batch
    log "resnet$d on 1 rank (compute for the projection): batch $b"
    mkdir -p "$out/depth$d/P1"
    MEDNET_OUT=$out/depth$d/P1 bash "$here/run_local.sh" -n 1 -t "$threads" pretrain "$config" "${common[@]}" \
        train.batch="$b" "$@" model.depth="$d" >"$out/depth$d/P1/mednet.log" 2>&1 ||
        { log "resnet$d: mednet failed; its log: $out/depth$d/P1/mednet.log"; status=1; }
    depth_runs+=("$out/depth$d")
done
[ "$status" -eq 0 ] || exit "$status"
collect_args=()
[ ${#depth_runs[@]} -gt 0 ] && collect_args=(--depth-runs "$(IFS=,; echo "${depth_runs[*]}")")
collect=$repo/benchmarks/scaling_collect.py
[ -r "$collect" ] || collect=$repo/tools/scaling_collect.py   # an installed copy: share/mednet/{jobs,tools}
/usr/bin/python3 "$collect" "$out" "${collect_args[@]}"
