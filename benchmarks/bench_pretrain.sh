#!/usr/bin/env bash
# bench_pretrain.sh [STEPS]: the full pre-training step on the mricron corpus, 1 rank x 2 threads vs 2 ranks x 1
# thread, and the share of the encoder all-reduce hidden behind the backward pass in the 2-rank run.
# Prints the median step time (after 3 warm-up steps), samples/s per global batch, the compute / communication
# split, and the hidden share, from each run's metrics.jsonl.  Needs a built tree (build/) and runs in /tmp.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
steps=${1:-30}
work=$(mktemp -d /tmp/mednet-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mednet=${MEDNET_BIN:-$root/build/mednet}
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
OMP_NUM_THREADS=1 "${mpi[@]}" -n 2 "$mednet" prep "$root/configs/corpus_mricron.ini" --output "$work/corpus.h5" \
  > /dev/null
common=(corpus.path="$work/corpus.h5" train.steps="$steps" train.log_every=1 train.eval_batches=0
        train.checkpoint_every=0 train.consistency_every=0)
# Global batch 4 in both: 1 rank x batch 4, or 2 ranks x batch 2.
OMP_NUM_THREADS=2 "${mpi[@]}" -n 1 "$mednet" pretrain "$root/configs/pretrain_mricron.ini" "${common[@]}" \
  train.out_dir="$work/r1" train.threads=2 train.batch=4 > "$work/r1.log"
OMP_NUM_THREADS=1 "${mpi[@]}" -n 2 "$mednet" pretrain "$root/configs/pretrain_mricron.ini" "${common[@]}" \
  train.out_dir="$work/r2" train.threads=1 train.batch=2 > "$work/r2.log"
grep -m1 "BLIS kernels" "$work/r2.log"
/usr/bin/python3 - "$work/r1/metrics.jsonl" "$work/r2/metrics.jsonl" <<'PY'
import json, statistics, sys
def summary(path):
    rows = [json.loads(l) for l in open(path) if '"t_step"' in l][3:]
    med = lambda k: statistics.median(r[k] for r in rows)
    return dict(step=med("t_step"), sps=med("samples_per_s"), comp=med("t_compute"), comm=med("t_comm"),
                hidden=med("hidden"), n=len(rows))
a, b = summary(sys.argv[1]), summary(sys.argv[2])
print(f"{'configuration':28s} {'step s':>8s} {'samples/s':>10s} {'compute s':>10s} {'comm s':>8s} {'hidden':>7s}")
for name, s in (("1 rank x 2 threads, batch 4", a), ("2 ranks x 1 thread, batch 2", b)):
    print(f"{name:28s} {s['step']:8.3f} {s['sps']:10.2f} {s['comp']:10.3f} {s['comm']:8.3f} {100*s['hidden']:6.0f}%")
print(f"2 ranks / 1 rank step-time ratio: {b['step']/a['step']:.2f} (median of {a['n']} steps after warm-up)")
PY
