#!/usr/bin/env bash
# run_pretrain_test.sh CASE MEDNET CONFIG CORPUS WORKDIR MPIEXEC...: end-to-end tests of `mednet pretrain` on the
# real mricron corpus, run by ctest (tests/cmake/train.cmake).  Each case prints what it checked and exits
# non-zero on failure.
set -uo pipefail
case_name=$1 mednet=$2 config=$3 corpus=$4 work=$5
shift 5
mpiexec=("$@")
py=/usr/bin/python3
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAIL ($case_name): $*" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work" && cd "$work" || fail "cannot use $work"
common=(corpus.path="$corpus" train.eval_batches=0 train.log_every=1 train.checkpoint_every=0)

run() { # run NP OUT [overrides...]: mpirun NP ranks, output to OUT.log, status in $status
  local np=$1 out=$2
  shift 2
  timeout 300 "${mpiexec[@]}" -n "$np" "$mednet" pretrain "$config" "${common[@]}" train.out_dir="$out" "$@" \
    > "$out.log" 2>&1
  status=$?
}

case "$case_name" in
e2e)
  # Loss falls and every head's foreground Dice rises above the untrained model's, on 2 ranks.
  run 2 e2e train.steps=120 train.eval_batches=8 train.log_every=5 train.checkpoint_every=40
  cat e2e.log
  [ $status -eq 0 ] || fail "pretrain exited with $status"
  $py "$here/check_metrics.py" e2e/metrics.jsonl || fail "metrics check"
  [ -f e2e/latest ] || fail "no latest checkpoint pointer"
  ;;
resume)
  # 8 steps straight == 4 steps, stop, resume to 8: every array of the final checkpoint bitwise equal.
  run 2 straight train.steps=8 || true
  [ $status -eq 0 ] || { cat straight.log; fail "straight run exited with $status"; }
  run 2 split train.steps=4
  [ $status -eq 0 ] || { cat split.log; fail "first half exited with $status"; }
  run 2 split train.steps=8
  [ $status -eq 0 ] || { cat split.log; fail "resumed half exited with $status"; }
  grep -q "resumed from split/ckpt-4.h5 at step 4" split.log || { cat split.log; fail "did not resume from step 4"; }
  $py "$here/compare_ckpt.py" straight/ckpt-8.h5 split/ckpt-8.h5 || fail "resumed run differs"
  # A different P: allowed with a warning, shards re-assigned, the run continues from step 8.
  run 1 split train.steps=10
  [ $status -eq 0 ] || { cat split.log; fail "resume on 1 rank exited with $status"; }
  grep -q "written by 2 ranks on 1 ranks" split.log || { cat split.log; fail "no warning about the changed P"; }
  grep -q "resumed from split/ckpt-8.h5 at step 8" split.log || { cat split.log; fail "did not resume on 1 rank"; }
  echo "resume: bitwise identical after 4+4 steps on 2 ranks; resumed on 1 rank with a warning"
  ;;
replicas)
  # NP ranks: replica checksums compared after every step (a mismatch is an error, exit non-zero).
  np=${NP:-2}
  run "$np" rep train.steps=6 train.consistency_every=1 train.batch=2
  cat rep.log
  [ $status -eq 0 ] || fail "run on $np ranks exited with $status"
  [ "$(grep -c '^step ' rep.log)" -eq 6 ] || fail "expected 6 progress lines"
  ;;
signal)
  # SIGUSR1 mid-run: a valid checkpoint, exit status 99, and the resumed run finishes from it.
  "${mpiexec[@]}" -n 2 "$mednet" pretrain "$config" "${common[@]}" train.out_dir=sig train.steps=400 > sig.log 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do grep -q '^step 3/' sig.log 2>/dev/null && break; sleep 0.5; done
  grep -q '^step 3/' sig.log || { kill -9 $pid; cat sig.log; fail "run did not start"; }
  kill -USR1 $pid
  wait $pid
  status=$?
  cat sig.log
  [ $status -eq 99 ] || fail "expected exit status 99 after SIGUSR1, got $status"
  grep -q "caught SIGUSR1" sig.log || fail "no message about the signal"
  ck=$(cat sig/latest) || fail "no latest pointer"
  step=$(echo "$ck" | sed -n 's/.*ckpt-\([0-9]*\)\.h5.*/\1/p')
  [ -n "$step" ] && [ "$step" -gt 0 ] && [ "$step" -lt 400 ] || fail "unexpected checkpoint '$ck'"
  run 2 sig train.steps=$((step + 3))
  [ $status -eq 0 ] || { cat sig.log; fail "resume after the signal exited with $status"; }
  grep -q "resumed from sig/ckpt-$step.h5 at step $step" sig.log || { cat sig.log; fail "did not resume"; }
  echo "signal: checkpoint at step $step, exit 99, resumed and finished"
  ;;
finetune)
  # Pre-train briefly, then fine-tune on the target dataset from that encoder, and from scratch: both run, the
  # fine-tuned Dice rises above the initial model's, and the encoder really came from the checkpoint.
  run 2 pre train.steps=10
  [ $status -eq 0 ] || { cat pre.log; fail "pre-training exited with $status"; }
  ftcfg=$(dirname "$config")/finetune_mricron.ini
  timeout 300 "${mpiexec[@]}" -n 2 "$mednet" finetune "$ftcfg" corpus.path="$corpus" train.out_dir=ft \
    train.init_encoder=pre/ckpt-10.h5 train.steps=40 > ft.log 2>&1
  status=$?
  cat ft.log
  [ $status -eq 0 ] || fail "finetune exited with $status"
  grep -q "encoder initialised from pre/ckpt-10.h5" ft.log || fail "encoder not initialised from the checkpoint"
  grep -q "inia19_neuromaps" ft.log || fail "did not train on the target dataset"
  $py - ft/metrics.jsonl <<'PY' || fail "fine-tuned Dice did not rise"
import json, sys
ev = {r["eval"]: r["mean_dice"] for r in map(json.loads, open(sys.argv[1])) if "eval" in r}
print(f"fine-tuning Dice {ev['untrained']:.4f} -> {ev['trained']:.4f}")
sys.exit(0 if ev["trained"] > ev["untrained"] else 1)
PY
  ;;
nan)
  # A diverging run (lr 1000): the ranks agree to skip the non-finite steps (default) or to stop (abort policy).
  run 2 nan train.steps=20 optim.lr=1000
  [ $status -eq 0 ] || { cat nan.log; fail "skip policy: exited with $status"; }
  grep -q "non-finite loss or gradient at step .*update skipped" nan.log || { cat nan.log; fail "no step skipped"; }
  run 2 nan2 train.steps=20 optim.lr=1000 train.nan_policy=abort
  [ $status -eq 1 ] || { cat nan2.log; fail "abort policy: expected the agreed exit status 1, got $status"; }
  grep -q "non-finite loss or gradient at step .*nan_policy = abort" nan2.log || { cat nan2.log; fail "no message"; }
  echo "nan: skipped with a warning; with nan_policy=abort every rank stopped with the message (exit 1)"
  ;;
badconfig)
  # An unknown key and a bad value: one clear message, non-zero exit, no hang, on 2 ranks.
  run 2 bad train.stpes=5
  grep -q "unknown key.*stpes" bad.log || { cat bad.log; fail "no unknown-key message"; }
  [ $status -ne 0 ] || fail "unknown key accepted"
  run 2 bad optim.lr=-1
  grep -q "lr" bad.log && [ $status -ne 0 ] || { cat bad.log; fail "negative lr accepted"; }
  run 2 bad corpus.path=/nonexistent/corpus.h5
  grep -q "/nonexistent/corpus.h5" bad.log && [ $status -ne 0 ] || { cat bad.log; fail "missing corpus"; }
  echo "bad config: unknown key, bad value and missing corpus rejected with messages"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "$case_name: passed"
