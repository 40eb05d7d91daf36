#!/usr/bin/env bash
# run_drill.sh CASE MEDNET CONFIG CORPUS WORKDIR MPIEXEC...: fault drills of `mednet pretrain` on the real mricron
# corpus, run by ctest (tests/cmake/drill.cmake, label `drill`).  Each case injects a fault a cluster really has
# (a rank killed or stopped, a full or read-only file system, a removed output folder, a corpus changed under the
# job, signals in every phase, damaged or foreign checkpoints), then prints and asserts the time from the fault to
# the end of the job and what survived, and that the run resumes from what survived.  README.md, "What each fault
# does to a run", lists the outcomes.  Faults are placed exactly with MEDNET_FAULT (DESIGN.md).
set -uo pipefail
case_name=$1 mednet=$2 config=$3 corpus=$4 work=$5
shift 5
mpiexec=("$@")
py=/usr/bin/python3
fail() { echo "FAIL (drill $case_name): $*" >&2; exit 1; }
hydra=0
grep -q "HYDRA\|MPICH" <<<"$(${mpiexec[0]} --version 2>&1)" && hydra=1
. "$(dirname "${BASH_SOURCE[0]}")/../lib/workdir.sh"
mn_workdir "$work" || fail "cannot use $work"
# Small and quick: 16^3 crops, SGD without momentum (a 70 MB checkpoint), a checkpoint every 2 steps.
common=(corpus.path="$corpus" train.eval_batches=0 train.log_every=1 train.checkpoint_every=2 sampler.crop=16
        optim.momentum=0)

stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }
# run OUT [overrides...]: 2 ranks into OUT, in the foreground; OUT.tlog (time-stamped) and OUT.log, $status, $t_end.
run() {
  local out=$1
  shift
  timeout 150 "${mpiexec[@]}" -n 2 "$mednet" pretrain "$config" "${common[@]}" train.out_dir="$out" "$@" 2>&1 |
    stamp > "$out.tlog"
  status=${PIPESTATUS[0]}
  t_end=$EPOCHREALTIME
  cut -d' ' -f2- "$out.tlog" > "$out.log"
}
# run_bg OUT [overrides...]: the same in the background; finish_bg waits for it.
run_bg() {
  local out=$1
  shift
  bg_out=$out
  { timeout 150 "${mpiexec[@]}" -n 2 "$mednet" pretrain "$config" "${common[@]}" train.out_dir="$out" "$@" 2>&1 |
      stamp > "$out.tlog"; echo "${PIPESTATUS[0]}" > "$out.status"; } &
  bg_pid=$!
}
finish_bg() {
  wait "$bg_pid"
  t_end=$EPOCHREALTIME
  status=$(cat "$bg_out.status")
  cut -d' ' -f2- "$bg_out.tlog" > "$bg_out.log"
}
# wait_line FILE PATTERN [SECONDS]: until a line of FILE matches PATTERN (grep -E); prints its time stamp.
wait_line() {
  local t
  for _ in $(seq 1 $((${3:-120} * 5))); do
    t=$(grep -E -m1 -- "$2" "$1" 2>/dev/null | cut -d' ' -f1)
    [ -n "$t" ] && { echo "$t"; return 0; }
    sleep 0.2
  done
  return 1
}
stamp_of() { grep -E -m1 -- "$2" "$1" | cut -d' ' -f1; } # stamp_of TLOG PATTERN: time of the first matching line
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
within() { awk -v d="$1" -v m="$2" 'BEGIN { exit !(d <= m) }'; }
has() { grep -Eq -- "$2" "$1" || { cat "$1"; fail "no line matching '$2' in $1"; }; }
latest_is() { [ "$(cat "$1/latest" 2>/dev/null)" = "$2" ] || { ls -la "$1"; fail "$1/latest is '$(cat "$1/latest" 2>/dev/null)', expected '$2'"; }; }
sums() { (cd "$1" && sha256sum ckpt-*.h5 latest 2>/dev/null); } # the checkpoints and pointer of a folder
survived() { echo "$(cd "$1" && ls ckpt-*.h5 2>/dev/null | tr '\n' ' ')+ latest -> $(cat "$1/latest" 2>/dev/null)"; }
# An agreed error: status 1, no MPI_Abort.
agreed() {
  [ "$status" -eq 1 ] || { cat "$1"; fail "$2: expected the agreed exit status 1, got $status"; }
  ! grep -q "MPI_ABORT" "$1" || { cat "$1"; fail "$2: ended in MPI_Abort"; }
}
# requeue STATUS OUT: the run asked for a requeue (the marker; status 99, or 0 where Hydra lost it).
requeue() { [ -s "$2/REQUEUE" ] && { [ "$1" -eq 99 ] || { [ "$1" -eq 0 ] && [ $hydra -eq 1 ]; }; }; }
# gone PID: the process is gone (or a zombie) within 10 s of the launcher's return; else it is killed and the
# drill fails.  mpirun can return while the last rank is still being torn down.
gone() {
  for _ in $(seq 1 50); do
    { ! kill -0 "$1" 2>/dev/null || [[ "$(ps -o stat= -p "$1")" == Z* ]]; } && return 0
    sleep 0.2
  done
  kill -KILL "$1"
  fail "process $1 outlived the job by more than 10 s"
}
pid_of_fault() { sed -n 's/.*MEDNET_FAULT: pid \([0-9]*\) .*/\1/p' "$1" | head -1; }
# freeze OUT: SIGSTOP the ranks of the background run writing to OUT (their command line starts with mednet's
# path), so that a fault applied to its files cannot race them; thaw: SIGCONT them.
freeze() {
  frozen=$(pgrep -f "^$mednet pretrain .*train.out_dir=$1( |\$)" | tr '\n' ' ')
  [ -n "$frozen" ] || { finish_bg; cat "$1.log"; fail "no running ranks for $1 (the run ended before the fault)"; }
  kill -STOP $frozen
}
thaw() { kill -CONT $frozen; }
resumes() { # resumes OUT FROM_STEP TO_STEP: a rerun resumes from ckpt-FROM and finishes
  run "$1" train.steps="$3"
  [ "$status" -eq 0 ] || { cat "$1.log"; fail "the rerun exited with $status"; }
  has "$1.log" "resumed from $1/ckpt-$2\.h5 at step $2"
}

case "$case_name" in
kill)
  # Rank 1 is SIGKILLed inside step 4 (the other rank is in the step's collectives).
  MEDNET_FAULT=kill:1:4 run kl train.steps=50
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || { cat kl.log; fail "status $status: expected a failed job, no hang"; }
  t_fault=$(stamp_of kl.tlog "MEDNET_FAULT: pid [0-9]+ sends itself SIGKILL in step 4")
  [ -n "$t_fault" ] || { cat kl.log; fail "the fault was not injected"; }
  has kl.log "signal 9|SIGNAL: 9|Killed|KILLED"
  dt=$(secs "$t_fault" "$t_end")
  within "$dt" 30 || fail "the job took $dt s to end after the SIGKILL"
  gone "$(sed -n 's/^pid=//p' kl/.mednet.lock)"
  latest_is kl ckpt-2.h5
  left=$(survived kl) job_status=$status
  resumes kl 2 4
  echo "kill: rank 1 SIGKILLed in step 4; the launcher ended the job (status $job_status) $dt s later; survived:" \
    "$left; the rerun resumed from step 2 and finished"
  ;;
stop)
  # Rank 1 stops (SIGSTOP) inside step 3.  Without the watchdog the launcher waits for ever; with it the job ends
  # within train.watchdog_s + 3 s grace + the launcher's clean-up, naming rank 1.
  MEDNET_FAULT=stop:1:3 run_bg st0 train.steps=50 train.watchdog_s=0
  t_fault=$(wait_line st0.tlog "MEDNET_FAULT: pid [0-9]+ sends itself SIGSTOP") || { finish_bg; cat st0.log; fail "no fault"; }
  stopped=$(pid_of_fault st0.tlog)
  sleep 10
  kill -0 "$bg_pid" 2>/dev/null || { finish_bg; cat st0.log; fail "without the watchdog the job ended by itself"; }
  state=$(ps -o stat= -p "$stopped")
  kill -KILL "$stopped"
  finish_bg
  [[ "$state" == T* ]] || fail "rank 1 (pid $stopped) was in state '$state', expected stopped (T)"
  echo "  without the watchdog: still hung 10 s after the SIGSTOP (rank 1 in state $state), ended only by an" \
    "outside SIGKILL (status $status)"
  MEDNET_FAULT=stop:1:3 run st train.steps=50 train.watchdog_s=8
  t_fault=$(stamp_of st.tlog "MEDNET_FAULT: pid [0-9]+ sends itself SIGSTOP in step 3")
  [ -n "$t_fault" ] || { cat st.log; fail "the fault was not injected"; }
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || { cat st.log; fail "status $status: expected a failed job"; }
  has st.log "mednet watchdog: no progress for [0-9]+ s in the training step of step 3"
  has st.log "mednet watchdog: rank\(s\) 1 did not arrive"
  [ "$(grep -c 'did not arrive (stopped' st.log)" -eq 1 ] || { cat st.log; fail "the verdict is not printed once"; }
  dt=$(secs "$t_fault" "$t_end")
  within "$dt" 30 || fail "the job took $dt s to end after the SIGSTOP (watchdog_s = 8)"
  gone "$(pid_of_fault st.tlog)"
  latest_is st ckpt-2.h5
  left=$(survived st) job_status=$status
  resumes st 2 4
  echo "stop: rank 1 SIGSTOPped in step 3; the watchdog (8 s) named it and the job ended (status $job_status) $dt s" \
    "after the stop; survived: $left; the rerun resumed from step 2 and finished"
  ;;
disk_full)
  # The output folder on a 100 MB tmpfs: ckpt-2 (70 MB) fits, ckpt-4 does not.  The run's folder is df, a link into
  # the tmpfs, so that the drill's own logs (df.log, df.tlog) stay outside it and see every line.
  mkdir -p fs && mount -t tmpfs -o size=100m drill-tmpfs fs || fail "cannot mount a tmpfs (needs root)"
  mn_at_exit 'umount -l "$work/fs" 2>/dev/null'
  mkdir -p fs/df && ln -sfn fs/df df || fail "cannot link df to the tmpfs"
  run df train.steps=6
  agreed df.log "full file system, train.checkpoint_failure = stop"
  has df.log "No space left on device"
  has df.log "checkpoint 'df/ckpt-4\.h5' was not written; the previous checkpoint and 'latest' are untouched"
  has df.log "stopping: the checkpoint of step 4 could not be written \(train.checkpoint_failure = stop\); the newest checkpoint on disk is df/ckpt-2\.h5"
  t_fail=$(stamp_of df.tlog "No space left on device")
  dt=$(secs "$t_fail" "$t_end")
  latest_is df ckpt-2.h5
  ! ls df/*.tmp >/dev/null 2>&1 || fail "a temporary file was left behind"
  before=$(sums df)
  echo "  stop: exit 1 on every rank $dt s after the write failed; survived: $(survived df)"
  # train.checkpoint_failure = continue: the rerun resumes from ckpt-2, trains on past the failed checkpoints, and
  # stops only when the last one (step 8) fails too.
  run df train.steps=8 train.checkpoint_failure=continue
  agreed df.log "full file system, train.checkpoint_failure = continue"
  has df.log "resumed from df/ckpt-2\.h5 at step 2"
  has df.log "checkpoint of step 4 failed \(above\): training goes on \(train.checkpoint_failure = continue\)"
  has df.log "^step 8/8"
  has df.log "stopping: the checkpoint of step 8 could not be written; the newest checkpoint on disk is df/ckpt-2\.h5"
  [ "$(sums df)" = "$before" ] || fail "ckpt-2.h5 or latest changed"
  echo "disk_full: stop ends the job with exit 1 and keeps ckpt-2 + latest; continue trains on to step 8, then" \
    "exit 1 with ckpt-2 + latest unchanged"
  ;;
outdir)
  # The output folder removed after the checkpoint of step 20: the run takes it again and saves its work there.
  # The ranks are frozen while the folder goes (freeze), so that the removal cannot race a file they create (at 35
  # ms a step, rm -rf once met a new file and left the folder, its lock gone); twenty steps to the next checkpoint
  # leave room for this script's polling.
  run_bg od train.steps=40 train.checkpoint_every=20
  wait_line od.tlog "^[0-9.]+ checkpoint: od/ckpt-20\.h5" > /dev/null || { finish_bg; cat od.log; fail "no checkpoint"; }
  freeze od
  t_fault=$EPOCHREALTIME
  rm -rf od
  thaw
  finish_bg
  [ "$status" -eq 0 ] || { cat od.log; fail "exited with $status after its folder was removed"; }
  has od.log "the output folder od \(or its lock .mednet.lock\) was removed while this run held it"
  has od.log "checkpoint: od/ckpt-40\.h5"
  latest_is od ckpt-40.h5
  [ ! -e od/.mednet.lock ] || fail "the lock was left behind"
  [ -e od/metrics.jsonl ] || fail "metrics.jsonl was not reopened in the recreated folder"
  echo "  removed: the run retook the folder and finished (exit 0) $(secs "$t_fault" "$t_end") s later;" \
    "survived: $(survived od)"
  # The output folder made read-only (a read-only bind mount: root ignores file modes) after ckpt-20, the ranks
  # frozen meanwhile.
  run_bg ro train.steps=60 train.checkpoint_every=20
  wait_line ro.tlog "^[0-9.]+ checkpoint: ro/ckpt-20\.h5" > /dev/null || { finish_bg; cat ro.log; fail "no checkpoint"; }
  freeze ro
  mount --bind ro ro && mount -o remount,ro,bind ro || { thaw; finish_bg; fail "cannot make ro/ read-only"; }
  thaw
  t_fault=$EPOCHREALTIME
  mn_at_exit 'umount -l "$work/ro" 2>/dev/null'
  finish_bg
  umount -l ro
  agreed ro.log "read-only output folder"
  has ro.log "Read-only file system"
  has ro.log "stopping: the checkpoint of step 40 could not be written"
  latest_is ro ckpt-20.h5
  left=$(survived ro)
  resumes ro 20 22
  echo "outdir: removed -> retaken and finished; read-only -> exit 1 $(secs "$t_fault" "$t_end") s after the" \
    "remount, survived: $left, resumed from step 20"
  ;;
corpus)
  # The corpus truncated, then overwritten by another corpus, while a job trains on it.  The small shard is in the
  # chunk cache after the first step (data.cache_mb = 0), so the job finishes; a rerun refuses the damaged file, then
  # the other corpus.
  cp "$corpus" mine.h5
  timeout 120 "${mpiexec[@]}" -n 2 "$mednet" prep "$(dirname "$config")/corpus_mricron.ini" --output other.h5 \
    --force corpus.name=another > prep.log 2>&1 || { cat prep.log; fail "cannot prepare the other corpus"; }
  run_bg cp train.steps=6 corpus.path="$work/mine.h5"
  wait_line cp.tlog "^[0-9.]+ step 1/" > /dev/null || { finish_bg; cat cp.log; fail "did not start"; }
  truncate -s $(($(stat -c %s mine.h5) / 2)) mine.h5
  finish_bg
  [ "$status" -eq 0 ] || { cat cp.log; fail "the job exited with $status after its corpus was truncated"; }
  latest_is cp ckpt-6.h5
  before=$(sums cp)
  run cp train.steps=8 corpus.path="$work/mine.h5"
  agreed cp.log "truncated corpus"
  has cp.log "mine\.h5"
  cp other.h5 mine.h5
  run cp train.steps=8 corpus.path="$work/mine.h5"
  agreed cp.log "another corpus"
  has cp.log "checkpoint cp/ckpt-6\.h5 was written for corpus [0-9a-f]+, but .*mine\.h5 is corpus [0-9a-f]+"
  [ "$(sums cp)" = "$before" ] || fail "the checkpoints changed"
  echo "corpus: truncated mid-run -> the job finished (exit 0, shard cached); the rerun refused the truncated" \
    "file and then the other corpus (exit 1); survived: $(survived cp), unchanged"
  ;;
signals)
  # SIGUSR1 and SIGTERM in every phase: set-up, the first step, a checkpoint write (rank 0 writing, rank 1
  # waiting), an evaluation.  Every time: the requeue status, the marker naming the newest checkpoint, no step
  # after the signal.
  for sig in usr1 term; do
    SIG=SIG${sig^^}
    n=0
    for phase in setup step ckpt0 ckpt1 eval; do
      out=$sig-$phase
      case $phase in
      setup) MEDNET_FAULT=signal_setup:1:0:$sig run "$out" train.steps=20 ;;
      step) MEDNET_FAULT=signal_step:1:1:$sig run "$out" train.steps=20 ;;
      ckpt0) MEDNET_FAULT=signal_ckpt:0:2:$sig run "$out" train.steps=20 ;;
      ckpt1) MEDNET_FAULT=signal_ckpt:1:2:$sig run "$out" train.steps=20 ;;
      eval) MEDNET_FAULT=signal_eval:1:2:$sig run "$out" train.steps=20 train.eval_every=2 train.eval_batches=1 \
              train.checkpoint_every=0 ;;
      esac
      requeue "$status" "$out" || { cat "$out.log"; fail "$sig in $phase: status $status, no requeue marker"; }
      t_sig=$(stamp_of "$out.tlog" "MEDNET_FAULT: raising $SIG")
      [ -n "$t_sig" ] || { cat "$out.log"; fail "$sig in $phase: not raised"; }
      case $phase in
      setup) has "$out.log" "caught $SIG at step 0: nothing trained yet, no checkpoint"
             [ ! -e "$out/latest" ] || fail "$sig in set-up: a checkpoint was written" ;;
      step) has "$out.log" "caught $SIG at step 1: writing a checkpoint"; latest_is "$out" ckpt-1.h5 ;;
      ckpt*) has "$out.log" "caught $SIG at step 2: the checkpoint of this step is on disk"
             latest_is "$out" ckpt-2.h5 ;;
      eval) has "$out.log" "caught $SIG at step 2: writing a checkpoint"; latest_is "$out" ckpt-2.h5 ;;
      esac
      ! grep -Eq "^step ([3-9]|1[0-9])/" "$out.log" || { cat "$out.log"; fail "$sig in $phase: trained on"; }
      [ "$phase" = setup ] || has "$out/REQUEUE" "checkpoint: $out/$(cat "$out/latest")"
      echo "  $SIG in $phase: requeue status $status $(secs "$t_sig" "$t_end") s after the signal; survived:" \
        "$(survived "$out")"
      n=$((n + 1))
    done
  done
  resumes usr1-ckpt0 2 3
  echo "signals: SIGUSR1 and SIGTERM in set-up, step, checkpoint write (rank 0 and 1) and evaluation: checkpoint," \
    "marker and requeue status each time; a rerun resumed"
  ;;
checkpoints)
  # Rank 0 killed between the rename of ckpt-4.h5 and the update of latest: ckpt-4 is complete, latest names ckpt-2.
  MEDNET_FAULT=ckpt_kill:0:4 run ck train.steps=50
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || { cat ck.log; fail "status $status: expected a killed job"; }
  t_fault=$(stamp_of ck.tlog "MEDNET_FAULT: pid [0-9]+ killed between the rename of checkpoint 4")
  [ -n "$t_fault" ] || { cat ck.log; fail "the fault was not injected"; }
  dt=$(secs "$t_fault" "$t_end")
  latest_is ck ckpt-2.h5
  [ -f ck/ckpt-4.h5 ] && [ ! -e ck/latest.tmp ] && [ ! -e ck/ckpt-4.h5.tmp ] || { ls -la ck; fail "unexpected files"; }
  echo "  killed between rename and latest: the job ended $dt s later; survived: $(survived ck)"
  resumes ck 2 4
  has ck.log "ck/ckpt-4\.h5 is newer than ck/latest \(ckpt-2\.h5\): a checkpoint write was interrupted"
  latest_is ck ckpt-4.h5
  before=$(sums ck)
  # A corrupt latest pointer: refused, naming the newest checkpoint as the way out; nothing written.
  cp ck/latest latest.good
  printf 'ckpt-\x01garbage' > ck/latest
  run ck train.steps=6
  agreed ck.log "corrupt latest"
  has ck.log "ck/latest' should name a checkpoint file 'ckpt-<step>\.h5' but contains 'ckpt-\?garbage'"
  has ck.log "HINT: the newest checkpoint here is ckpt-4\.h5"
  cp latest.good ck/latest
  [ "$(sums ck)" = "$before" ] || fail "a refused run changed the checkpoints"
  echo "  corrupt latest: refused (exit 1) with a hint naming ckpt-4.h5; checkpoints unchanged"
  # Checkpoints from another corpus, of another depth, of a newer format: copies with one attribute changed.
  for kind in corpus depth format; do
    mkdir -p "x_$kind" && cp ck/ckpt-4.h5 "x_$kind/" && echo ckpt-4.h5 > "x_$kind/latest"
    $py - "x_$kind/ckpt-4.h5" "$kind" <<'PY' || fail "cannot edit the copy"
import sys
import h5py
import numpy as np
path, kind = sys.argv[1:3]
with h5py.File(path, "r+") as f:
    if kind == "corpus":
        f.attrs["corpus_checksum"] = np.bytes_("0badc0de")
    elif kind == "depth":
        text = f.attrs["config"].decode()
        assert "depth = 10" in text
        f.attrs["config"] = np.bytes_(text.replace("depth = 10", "depth = 18"))
    else:
        f.attrs["format"] = np.bytes_("mednet-checkpoint-2")
        f.attrs["mednet_version"] = np.bytes_("9.0.0")
PY
    b=$(sums "x_$kind")
    run "x_$kind" train.steps=6
    agreed "x_$kind.log" "checkpoint of another $kind"
    case $kind in
    corpus) has x_corpus.log "checkpoint x_corpus/ckpt-4\.h5 was written for corpus 0badc0de, but .* is corpus" ;;
    depth) has x_depth.log "x_depth/ckpt-4\.h5 holds a resnet18 encoder; model\.depth is 10" ;;
    format) has x_format.log "x_format/ckpt-4\.h5' was written by a newer mednet \(9\.0\.0, checkpoint format 2\)" ;;
    esac
    [ "$(sums "x_$kind")" = "$b" ] || fail "the refused run changed x_$kind/"
    echo "  checkpoint of another $kind: refused (exit 1) with a message naming the file; unchanged"
  done
  echo "checkpoints: interrupted pointer update recovered from ckpt-2; corrupt latest, another corpus, another" \
    "depth and a newer format refused without touching any checkpoint"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "drill $case_name: passed"
