#!/usr/bin/env bash
# bench_startup.sh [-s "50 200"] [-r "1 2 4"] [-o DIR] [-k]: pre-training start-up against corpus size and ranks.
#
# For each corpus size (total volumes; default 50 and 200) it generates a synthetic corpus from the real mricron
# volumes (`mednet synth configs/corpus_mricron.ini --spacing 4`, 2 ranks), builds it (`mednet prep`, 2 ranks), and
# starts a one-step pre-training run (resnet10, crop 32, batch 2 per rank, 1 thread per rank, no evaluation, no
# checkpoint) on each rank count.  mednet does not record its start-up itself, so this script stamps rank 0's log
# lines with the wall clock as they arrive and reads the first step's times from metrics.jsonl:
#   init   launch -> the banner line (mpirun, MPI_Init, config, BLIS kernel choice from its cache)
#   corpus banner -> the data line (output folder and lock, corpus open and metadata broadcast, shard plan, reader)
#   model  data line -> the model line (model creation and its memory plan, parameter broadcast)
#   rest   model line -> start of step 1 (sampler, metrics plan line)
#   batch  the first step's data time (the first batch: its chunks read from the corpus, crops cut)
#   total  launch -> start of step 1's compute = init + corpus + model + rest + batch
# The reference, measured in the same run: `mednet info` under the same launcher (MPI start-up alone).
# 1,000 volumes: bench_startup.sh -s "50 1000" (synth writes about 10 subjects/s on 2 cores at 4 mm; prep about
# as fast).  Needs a built tree (build/, or MEDNET_BIN).  -k keeps DIR (default: a temporary folder).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sizes="50 200" ranks="1 2 4" out="" keep=0
while getopts "s:r:o:k" opt; do
  case $opt in
    s) sizes=$OPTARG ;;
    r) ranks=$OPTARG ;;
    o) out=$OPTARG ;;
    k) keep=1 ;;
    *) echo "usage: $0 [-s SIZES] [-r RANKS] [-o DIR] [-k]" >&2; exit 2 ;;
  esac
done
mednet=${MEDNET_BIN:-$root/build/mednet}
[ -x "$mednet" ] || { echo "bench_startup: no mednet at $mednet (build first or set MEDNET_BIN)" >&2; exit 1; }
if [ -z "$out" ]; then
  out=$(mktemp -d /tmp/mednet-startup.XXXXXX)
  [ "$keep" -eq 1 ] || trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
export OMP_NUM_THREADS=1
ini=$root/configs/corpus_mricron.ini
ndatasets=$(grep -c '^\[' "$ini")
ndatasets=$((ndatasets - 1)) # every section but [corpus]
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }
"$mednet" info | grep -E "^CPU|^BLIS kernels"
echo "corpus sizes (volumes): $sizes; ranks: $ranks; $(getconf _NPROCESSORS_ONLN) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"

results=$out/results.txt
: > "$results"
for size in $sizes; do
  per=$(((size + ndatasets - 1) / ndatasets))
  c=$out/c$size
  t0=$EPOCHREALTIME
  "${mpi[@]}" -n 2 "$mednet" synth "$ini" --out "$c" --subjects "$per" --spacing 4 --force --progress 100000 \
    > "$out/synth$size.log"
  t1=$EPOCHREALTIME
  "${mpi[@]}" -n 2 "$mednet" prep "$c/synth.ini" --output "$c/corpus.h5" --force > "$out/prep$size.log"
  t2=$EPOCHREALTIME
  nvol=$(grep -Eo '[0-9]+ volume\(s\) written' "$out/prep$size.log" | cut -d' ' -f1)
  awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$nvol" -v s="$size" \
    'BEGIN { printf "corpus %s: %d volumes; synth %.1f s (%.1f volumes/s, 2 ranks), prep %.1f s\n", s, n, b - a, n / (b - a), c - b }'
  for np in $ranks; do
    # Reference: MPI start-up and `mednet info` alone under the same launcher.
    r0=$EPOCHREALTIME
    "${mpi[@]}" -n "$np" "$mednet" info > /dev/null
    r1=$EPOCHREALTIME
    run=$out/run_${size}_$np
    rm -rf "$run"
    tl=$EPOCHREALTIME
    "${mpi[@]}" -n "$np" "$mednet" pretrain "$root/configs/pretrain_mricron.ini" corpus.path="$c/corpus.h5" \
      train.out_dir="$run" train.steps=1 train.log_every=1 train.eval_batches=0 train.checkpoint_every=0 \
      train.threads=1 train.resume=false 2>&1 | stamp > "$run.tlog"
    /usr/bin/python3 - "$run.tlog" "$run/metrics.jsonl" "$tl" "$r0" "$r1" "$nvol" "$np" >> "$results" <<'PY'
import json, sys
tlog, metrics, tl, r0, r1, nvol, np_ = sys.argv[1:]
t = {}
for line in open(tlog):
    ts, _, text = line.partition(" ")
    for key, pat in (("banner", "mednet "), ("data", "data: "), ("model", "model: "), ("step", "step 1/")):
        if text.startswith(pat) and key not in t:
            t[key] = float(ts)
step = [json.loads(l) for l in open(metrics) if '"t_step"' in l][0]
tl = float(tl)
init, corpus, model = t["banner"] - tl, t["data"] - t["banner"], t["model"] - t["data"]
start = t["step"] - step["t_step"] + step["t_data"]  # end of the first batch = start of step 1's compute
rest = start - step["t_data"] - t["model"]
print(f"{nvol} {np_} {init:.3f} {corpus:.3f} {model:.3f} {rest:.3f} {step['t_data']:.3f} {start - tl:.3f} "
      f"{float(r1) - float(r0):.3f}")
PY
  done
done
/usr/bin/python3 - "$results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("\npre-training start-up (s), resnet10, crop 32, batch 2 per rank, 1 thread per rank; rank 0's log lines stamped on arrival")
print(f"{'volumes':>7s} {'ranks':>5s} {'init':>7s} {'corpus':>7s} {'model':>7s} {'rest':>7s} {'batch':>7s} "
      f"{'total':>7s} {'ref info':>9s} {'total/ref':>9s}")
for v, p, i, c, m, r, b, tot, ref in rows:
    print(f"{v:>7s} {p:>5s} {float(i):7.3f} {float(c):7.3f} {float(m):7.3f} {float(r):7.3f} {float(b):7.3f} "
          f"{float(tot):7.3f} {float(ref):9.3f} {float(tot) / float(ref):9.2f}")
print("init: launch to banner; corpus: open, metadata, shard plan, reader; model: creation and broadcast; rest: to "
      "step 1; batch: the first batch; ref info: `mednet info` under the same launcher")
sizes = sorted({int(r[0]) for r in rows})
if len(sizes) >= 2:
    lo, hi = sizes[0], sizes[-1]
    print(f"\ngrowth from {lo} to {hi} volumes ({hi / lo:.1f}x), per rank count: corpus (open, plan, reader), "
          f"first batch and total")
    for p in sorted({int(r[1]) for r in rows}):
        a = [r for r in rows if int(r[0]) == lo and int(r[1]) == p][0]
        b = [r for r in rows if int(r[0]) == hi and int(r[1]) == p][0]
        g = lambda k: f"{float(a[k]):.3f} -> {float(b[k]):.3f} s ({float(b[k]) / float(a[k]):.2f}x)"
        print(f"  {p} rank(s): corpus {g(3)}, batch {g(6)}, total {g(7)}")
PY
