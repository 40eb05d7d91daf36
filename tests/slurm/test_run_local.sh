#!/bin/bash
# test_run_local.sh SIGPROG JOBSDIR: jobs/run_local.sh with the sigprog stand-in on 2 ranks: SIGUSR1 to the script
# is forwarded to the ranks, which checkpoint and exit with 99; the same command run again resumes and exits 0.
set -u
sigprog=$1 jobs=$2
T=$(mktemp -d /tmp/mn-runlocal.XXXXXX)
trap 'rm -rf "$T"' EXIT
export MEDNET_BIN=$sigprog MEDNET_OUT=$T/out
fail=0
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi; }

bash "$jobs/run_local.sh" -n 2 -t 1 pretrain /dev/null >"$T/run1.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "fresh start" "$T/run1.log" && break; sleep 0.1; done
sleep 0.5
kill -USR1 "$pid"
wait "$pid"
rc=$?
cat "$T/run1.log"
check "first run exits with the requeue status 99 (got $rc)" [ "$rc" -eq 99 ]
check "the script forwarded the signal" grep -q "caught SIGUSR1; asking the ranks to checkpoint" "$T/run1.log"
check "the ranks checkpointed" grep -q "sigprog: SIGUSR1 received; checkpointed step" "$T/run1.log"
check "latest exists" [ -s "$MEDNET_OUT/latest" ]

timeout 60 bash "$jobs/run_local.sh" -n 2 pretrain /dev/null >"$T/run2.log" 2>&1
rc=$?
cat "$T/run2.log"
check "second run exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "second run resumed" grep -q "sigprog: resumed from .*ckpt-[0-9]*.h5" "$T/run2.log"
exit "$fail"
