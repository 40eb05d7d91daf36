#!/bin/bash
# test_reducer_pattern.sh NPROCS PROGRAM LAUNCHER... : run test_reducer_pattern under Open MPI's PML monitoring and
# check, from the per-peer byte counts it writes at MPI_Finalize, that the bucketed reducer uses a bandwidth-optimal
# all-reduce and not a tree rooted at one rank.
#
# The monitoring PML (Open MPI >= 3.0, ompi/mca/common/monitoring) wraps the selected PML and counts every message
# sent, per destination, including those that the non-blocking collectives (libnbc) post; with
# pml_monitoring_enable 1 point-to-point and collective traffic are summed.  Each rank writes PREFIX.<rank>.prof
# with lines "E <from> <to> <B> bytes <n> msgs sent <size histogram>".  (Its MPI_T counters cannot be used from
# inside the program: with Debian's Open MPI 4.1.4 the pml_monitoring_* performance variables are invalid by the
# time MPI_T can see them.)
#
# Checked, with B = the gradient bytes times the number of steps: for P a power of two, every rank sends at most
# and receives at most 1.1 x 2(P-1)/P x B (what ring or reduce-scatter + all-gather moves per rank), and the
# busiest rank (sent + received) moves at most 1.25x the least busy.  libnbc's binomial reduce to rank 0 then
# broadcast, which it picks for an in-place MPI_Iallreduce, fails both at P = 4: ranks 0 and 1 send 2 B, ranks 0
# and 2 receive 2 B (optimum 1.5 B), rank 0 moves 4 B and rank 3 2 B.  (Bytes through rank 0 against the average,
# 4/3 at P = 4, would not separate the two.)  At P = 2 both move B each way; for other P the fold-in steps of
# reduce-scatter + all-gather unbalance the ranks, so only the table is printed.
# Exit 77 (skipped) when the launcher is not Open MPI's or has no PML monitoring.
set -u
np=$1 prog=$2
shift 2
if ! command -v ompi_info >/dev/null || ! ompi_info | grep -q 'MCA pml: monitoring'; then
    echo "test_reducer_pattern: SKIPPED: no Open MPI PML monitoring component (ompi_info | grep monitoring)"
    exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
timeout 120 "$@" -n "$np" --mca pml_monitoring_enable 1 --mca pml_monitoring_enable_output 3 \
    --mca pml_monitoring_filename "$dir/prof" "$prog" >"$dir/out" 2>&1
rc=$?
cat "$dir/out"
if [ "$rc" -ne 0 ]; then echo "FAIL: the driver exited with status $rc"; exit 1; fi
line=$(grep '^pattern: bytes' "$dir/out") || { echo "FAIL: no 'pattern:' line from the driver"; exit 1; }
bytes=$(echo "$line" | awk '{print $3 * $5}')
nprof=$(ls "$dir"/prof.*.prof 2>/dev/null | wc -l)
if [ "$nprof" -ne "$np" ]; then echo "FAIL: $nprof monitoring files for $np ranks"; exit 1; fi
pow2=0
[ "$np" -ge 2 ] && [ $((np & (np - 1))) -eq 0 ] && pow2=1
cat "$dir"/prof.*.prof | awk -v np="$np" -v B="$bytes" -v pow2="$pow2" '
    function bad(p, what, v) {
        printf "FAIL: rank %d %s %.2f x the gradient, more than 1.1 x %.2f: not a bandwidth-optimal all-reduce "\
               "(a tree rooted at one rank?)\n", p, what, v / B, opt
    }
    $1 == "E" || $1 == "I" { m[$2, $3] += $4; sent[$2] += $4; recv[$3] += $4 }
    END {
        opt = 2 * (np - 1) / np; lim = 1.1 * opt * B
        printf "test_reducer_pattern: %d ranks, bytes sent over the whole run (PML monitoring) in units of the "\
               "gradient bytes x steps (%.1f MiB); ring / reduce-scatter+all-gather optimum %.2f each way\n",
               np, B / 1048576, opt
        printf "  rank |"; for (q = 0; q < np; q++) printf("  to %2d", q); printf(" |   sent   recv\n")
        fail = 0; mx = 0; mn = -1
        for (p = 0; p < np; p++) {
            printf "  %4d |", p
            for (q = 0; q < np; q++) printf(" %6.3f", m[p, q] / B)
            printf " | %6.3f %6.3f\n", sent[p] / B, recv[p] / B
            t = sent[p] + recv[p]; if (t > mx) mx = t; if (mn < 0 || t < mn) mn = t
            if (pow2 && sent[p] > lim) { bad(p, "sent", sent[p]); fail = 1 }
            if (pow2 && recv[p] > lim) { bad(p, "received", recv[p]); fail = 1 }
        }
        if (mn <= 0) { print "FAIL: a rank moved no bytes: is the monitoring working?"; exit 1 }
        if (pow2 && mx > 1.25 * mn) {
            printf "FAIL: the busiest rank moves %.2f x the bytes of the least busy (limit 1.25)\n", mx / mn
            fail = 1
        }
        if (pow2)
            printf "  limits: every rank sends and receives <= %.2f x the gradient, busiest / least busy <= 1.25 "\
                   "(measured %.2f)\n", 1.1 * opt, mx / mn
        else
            printf "  %d ranks is not a power of two: bounds not checked (busiest / least busy %.2f)\n", np, mx / mn
        exit fail
    }'
fail=$?
[ "$fail" -eq 0 ] && echo "test_reducer_pattern: all checks passed"
exit $fail
