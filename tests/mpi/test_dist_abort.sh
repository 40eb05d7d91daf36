#!/bin/bash
# test_dist_abort.sh NPROCS MPIEXEC... : run test_dist_abort under the MPI launcher and check that the job ended
# with a non-zero status, within 20 seconds, printing the failing rank's message and the abort line.
# Usage: test_dist_abort.sh <nprocs> <program> <launcher and its options...>
set -u
np=$1 prog=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(($(date +%s%N) / 1000000))
timeout 60 "$@" -n "$np" "$prog" >"$out" 2>&1
rc=$?
elapsed_ms=$(($(date +%s%N) / 1000000 - start))
cat "$out"
last=$((np - 1))
fail=0
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then echo "FAIL: exit status $rc (expected a non-zero abort status, not 0 or a timeout)"; fail=1; fi
grep -q "\[rank $last\] .*cannot open corpus '/nonexistent/mednet/corpus.h5'" "$out" || { echo "FAIL: no error line from rank $last"; fail=1; }
grep -q "\[rank $last\] mednet: fatal error MN_ERR_IO on this rank; aborting the job" "$out" || { echo "FAIL: no abort line from rank $last"; fail=1; }
if grep -q "passed the barrier" "$out"; then echo "FAIL: a rank passed the barrier"; fail=1; fi
if [ "$elapsed_ms" -gt 20000 ]; then echo "FAIL: the job took ${elapsed_ms} ms to end (limit 20 s)"; fail=1; fi
echo "test_dist_abort np=$np: exit status $rc after ${elapsed_ms} ms"
[ "$fail" -eq 0 ] && echo "test_dist_abort: all checks passed"
exit $fail
