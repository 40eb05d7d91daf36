#!/bin/bash
# test_scaling_study.sh MEDNET BENCH_DIR CONFIG CORPUS WORKDIR: a real local weak-scaling sweep (P = 1, 2, a tiny
# resnet10 run of 1 warm-up + 3 measured steps) through jobs/scaling_study.sh, then checks what the collector
# made of it: one table row per P with the right global batch, positive throughput, efficiency 100% at P = 1, a
# bus bandwidth at P = 2, the checkpoint column, and three valid PNG files (signature, IHDR size).  Also: the
# collector on a folder without metrics fails with one message naming the file.
set -u
mednet=$1 bench=$2 config=$3 corpus=$4 work=$5
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$(dirname "${BASH_SOURCE[0]}")/../lib/workdir.sh"
mn_workdir "$work" || exit 1
fail=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MEDNET_BIN=$mednet MEDNET_BENCH_DIR=$bench timeout 600 bash "$repo/jobs/scaling_study.sh" local -o "$work/study" \
    -w 1 -s 3 -b 1 "$config" 1 2 -- corpus.path="$corpus" sampler.crop=16 >"$work/study.out" 2>&1
rc=$?
cat "$work/study.out"
[ "$rc" -eq 0 ] || { echo "FAIL: scaling_study.sh exited with $rc"; exit 1; }
/usr/bin/python3 - "$work/study" <<'PY' || fail=1
import csv, json, struct, sys
d = sys.argv[1]
ok = True
def check(cond, what):
    global ok
    print(("ok: " if cond else "FAIL: ") + what)
    ok = ok and cond
rows = list(csv.DictReader(open(f"{d}/summary/table.csv")))
check([r["P"] for r in rows] == ["1", "2"], f"one table row per P (got {[r['P'] for r in rows]})")
check([r["global_batch"] for r in rows] == ["1", "2"], "weak scaling: global batch = P x 1")
check(all(float(r["samples_per_s"]) > 0 for r in rows), "positive samples/s")
check(abs(float(rows[0]["efficiency"]) - 1) < 1e-9, "efficiency 1 at the smallest run")
check(0 < float(rows[1]["efficiency"]) < 2, f"efficiency at P=2 plausible ({float(rows[1]['efficiency']):.3f})")
check(all(float(r["compute"]) > 0 and float(r["comm"]) >= 0 and float(r["ckpt"]) > 0 for r in rows),
      "compute > 0, exposed comm >= 0, checkpoint > 0")
check(float(rows[1]["busbw_step"]) > 0 and float(rows[1]["busbw_bench"]) > 0, "bus bandwidth at P=2 (step and bench)")
text = open(f"{d}/summary/table.txt").read()
check("projection (ring all-reduce" in text and "4096" in text, "projection table to 4096 ranks printed")
check("mean |error|" in text, "projection validated against the P=2 run")
for name in ("throughput", "time_split", "projection"):
    b = open(f"{d}/summary/{name}.png", "rb").read()
    w, h = struct.unpack(">II", b[16:24]) if len(b) > 24 else (0, 0)
    check(b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR" and w >= 400 and h >= 300 and len(b) > 5000,
          f"{name}.png is a PNG of {w}x{h}, {len(b)} bytes")
sys.exit(0 if ok else 1)
PY
grep -q "P=2: batch 1 per rank, global batch 2" "$work/study.out" && echo "ok: the sweep states each run's batch and cores" ||
    { echo "FAIL: no per-run line"; fail=1; }
mkdir -p "$work/empty/P1"
out=$(/usr/bin/python3 "$repo/benchmarks/scaling_collect.py" "$work/empty" 2>&1)
rc=$?
echo "$out"
if [ "$rc" -eq 1 ] && echo "$out" | grep -q "empty/P1/metrics.jsonl: no metrics"; then
    echo "ok: a run folder without metrics is one error naming the file"
else
    echo "FAIL: collector on a folder without metrics: status $rc"
    fail=1
fi
exit "$fail"
