#!/usr/bin/env bash
# test_compare_transfer.sh MEDNET CORPUS WORKDIR MPIEXEC...: jobs/compare_transfer.sh end to end, tiny.
# A 4-step pre-training on the mricron corpus exported to safetensors (the encoder the comparison starts from),
# then the comparison with 2 seeds x 4 steps per arm; checks that the table, the CSV, the JSON and the PNG exist and
# parse (4 runs, Dice in [0, 1], the early Dice at 25 % of the steps, the acceptance verdict, a PNG of non-zero size), that benchmarks/plot_metrics.py draws a run's log, and that
# the collector refuses a folder without runs (exit 1, naming it).
set -u
mednet=$1 corpus=$2 work=$3
shift 3
mpiexec=("$@")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fail() { echo "FAIL: $*"; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/../lib/workdir.sh"
mn_workdir "$work" || exit 1
timeout 300 "${mpiexec[@]}" -n 2 "$mednet" pretrain "$root/configs/pretrain_mricron.ini" corpus.path="$corpus" \
    train.out_dir=pre train.steps=4 train.eval_batches=0 train.checkpoint_every=0 > pre.log 2>&1 ||
    { cat pre.log; fail "pre-training"; }
"$mednet" export pre/ckpt-4.h5 enc.safetensors --encoder > export.log 2>&1 || { cat export.log; fail "export"; }
SEEDS=2 STEPS=4 EVAL_EVERY=2 EVAL_BATCHES=1 THRESHOLD=0.2 MEDNET="$mednet" LAUNCH="${mpiexec[*]} -n 2" \
    timeout 900 bash "$root/jobs/compare_transfer.sh" enc.safetensors "$corpus" cmp > cmp.log 2>&1 ||
    { cat cmp.log; fail "compare_transfer.sh exited with $?"; }
cat cmp.log
grep -q "enc.safetensors: [0-9]* encoder tensors loaded" cmp/pretrained/seed1/log.txt ||
    fail "the pretrained arm did not load the encoder"
grep -q "encoder tensors loaded" cmp/scratch/seed1/log.txt && fail "the scratch arm loaded an encoder"
python3 - cmp/summary <<'PY' || fail "the summary does not parse"
import csv, json, struct, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(d + "/table.csv")))
assert len(rows) == 4 and {r["arm"] for r in rows} == {"scratch", "pretrained"}, rows
for r in rows:
    assert r["steps"] == "4" and all(0 <= float(r[k]) <= 1
                                     for k in ("dice_step0", "dice_early", "dice_final", "dice_best")), r
    assert float(r["dice_best"]) >= float(r["dice_final"]), r
    assert r["early_step"] == "2", r  # 25 % of 4 steps: the first evaluation at or after step 1 (every 2 steps)
s = json.load(open(d + "/summary.json"))
assert s["arms"]["scratch"]["runs"] == 2 and s["paired"]["pairs"] == 2, s["arms"]
acc = s["acceptance"]
assert acc["met"] is False, acc  # 2 seeds per arm: the rule asks for at least 3
assert abs(acc["early_lead"] - (s["arms"]["pretrained"]["early_mean"] - s["arms"]["scratch"]["early_mean"])) < 1e-12
text = open(d + "/table.txt").read()
assert "final (mean ± sd)" in text and "paired by seed" in text and "-> NOT met" in text, text
png = open(d + "/dice.png", "rb").read()
assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
w, h = struct.unpack(">II", png[16:24])
assert w > 100 and h > 100, (w, h)
print("table: 4 runs, Dice in [0, 1]; summary.json: 2 pairs; dice.png %dx%d" % (w, h))
PY
python3 "$root/benchmarks/plot_metrics.py" cmp/pretrained/seed1/metrics.jsonl --out plots > plot.log 2>&1 ||
    { cat plot.log; fail "plot_metrics.py"; }
for f in loss dice; do
    [ "$(head -c 4 plots/$f.png | tail -c 3)" = PNG ] || fail "plots/$f.png is not a PNG"
done
mkdir -p empty
python3 "$root/benchmarks/compare_collect.py" empty > empty.log 2>&1
st=$?
[ $st -eq 1 ] && grep -q "empty/scratch: no seed" empty.log || { cat empty.log; fail "empty folder: status $st"; }
echo "PASS"
