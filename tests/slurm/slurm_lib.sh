# shellcheck shell=bash
# slurm_lib.sh: helpers of the Slurm test scripts (sourced; they run inside tests/slurm/slurm_harness.sh).
#   check DESCRIPTION COMMAND...   run COMMAND, print "ok: ..." or "FAIL: ..."; a failure sets fail=1 and counts nfail
#   job_field ID FIELD             a field of `scontrol show job` (JobState, Restarts, ExitCode, ...)
#   wait_job ID TIMEOUT_S [MIN_RESTARTS]
#                                  poll until the job reaches a final state (COMPLETED only after MIN_RESTARTS
#                                  requeues); leaves it in $state and $restarts.  Polling, because sbatch --wait
#                                  polls at growing intervals, adding seconds.
# shellcheck disable=SC2034  # fail is read by the sourcing scripts
fail=0 nfail=0
check() {
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; nfail=$((nfail + 1)); fi
}
job_field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
wait_job() {
    local _
    for _ in $(seq 1 $(($2 * 5))); do
        state=$(job_field "$1" JobState)
        restarts=$(job_field "$1" Restarts)
        case "$state" in
        COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
            if [ "$state" != COMPLETED ] || [ "${restarts:-0}" -ge "${3:-0}" ]; then return 0; fi ;;
        esac
        sleep 0.2
    done
}
