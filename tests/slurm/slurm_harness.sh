#!/bin/bash
# slurm_harness.sh: run a command against a private, single-node Slurm started here and always stopped on exit.
#
#   tests/slurm/slurm_harness.sh [--cpus N] COMMAND [ARGS...]
#
# Starts, under a fresh temporary directory: munged with its own key, socket, pid, log and seed files; slurmctld and
# slurmd (Debian's Slurm 22.05) with a generated slurm.conf (this host as controller and only node, CPUs=N
# advertised through SlurmdParameters=config_overrides, MpiDefault=pmix, no accounting, random free ports so that
# two harnesses can run side by side).  Waits until the node is idle, then runs COMMAND with
#   SLURM_CONF     the generated slurm.conf (sbatch, srun, squeue, scontrol, sinfo all read it)
#   MN_SLURM_DIR   the temporary directory (put job output there)
# and exits with COMMAND's status.  cred_expire=10 (default 120): slurmctld holds a requeued job back for
# cred_expire + 1 s, which would otherwise dominate the requeue test; sched_interval=2 (default 60) starts it as
# soon as it may.  Two partitions for the preemption test: `test` (default, PriorityTier=1, GraceTime
# MN_SLURM_GRACE, default 20 s) and `urgent` (PriorityTier=2), PreemptType=preempt/partition_prio with PreemptMode
# MN_SLURM_PREEMPT_MODE (default REQUEUE): an `urgent` job preempts `test` jobs.  Job ids start at a pid-derived
# FirstJobId and TmpFS is the temporary directory, so that the PMIx plugin's per-step folders (named after the job
# id) never collide with another harness's.  On any exit (success, failure, ^C) the trap
# cancels the remaining jobs and stops the three daemons by the PIDs in their pid files (never by name), then
# removes the directory (MN_SLURM_KEEP=1 keeps it); the daemon logs are printed when COMMAND failed.
# COMMAND is stopped after MN_SLURM_TIMEOUT seconds (default 200), below ctest's timeout: ctest kills a timed-out
# test with SIGKILL, which no trap survives, and the daemons (detached) would outlive it.
# Needs root (SlurmUser=root).
set -u
cpus=4
if [ "${1:-}" = "--cpus" ]; then cpus=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: $0 [--cpus N] COMMAND [ARGS...]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "slurm_harness: must run as root (SlurmUser=root, private munged)" >&2; exit 2; }
for exe in munged slurmctld slurmd sbatch srun sinfo squeue scontrol scancel; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || {
        echo "slurm_harness: '$exe' not found; install:" \
            "apt-get install --no-install-recommends slurmctld slurmd slurm-client munge" >&2
        exit 2
    }
done
export PATH="$PATH:/usr/sbin"

T=$(mktemp -d /tmp/mn-slurm.XXXXXX) || exit 2
chmod 755 "$T"   # munge's socket directory must be reachable by everyone
mkdir -p "$T/state" "$T/spool" "$T/munge"
chmod 755 "$T/munge"
host=$(hostname)
log() { echo "[slurm_harness $(date -u +%T)] $*"; }

stop_pid_file() { # stop_pid_file FILE NAME: TERM, wait up to 10 s, then KILL
    local f=$1 name=$2 pid i
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name (pid $pid) did not stop on SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null
}

status=1
cmd_pid=
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$cmd_pid" ] && kill -0 "$cmd_pid" 2>/dev/null; then
        log "stopping the command (pid $cmd_pid)"
        kill -TERM "$cmd_pid" 2>/dev/null
        wait "$cmd_pid" 2>/dev/null
    fi
    if [ -s "$T/slurmctld.pid" ] && kill -0 "$(cat "$T/slurmctld.pid")" 2>/dev/null; then
        # Jobs of this private cluster only (SLURM_CONF points at it); let their steps end before slurmd goes.
        ids=$(squeue -h -o %i 2>/dev/null)
        if [ -n "$ids" ]; then
            log "cancelling leftover jobs: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null
            for _ in $(seq 1 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
        fi
    fi
    stop_pid_file "$T/slurmd.pid" slurmd
    stop_pid_file "$T/slurmctld.pid" slurmctld
    stop_pid_file "$T/munged.pid" munged
    if [ "$status" -ne 0 ]; then
        for f in slurmctld.log slurmd.log munged.log; do
            [ -s "$T/$f" ] && { echo "---- last lines of $f"; tail -n 25 "$T/$f"; }
        done
    fi
    if [ "${MN_SLURM_KEEP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'status=130; exit' INT TERM

# ---- munge ------------------------------------------------------------------------------------------------------
dd if=/dev/urandom of="$T/munge.key" bs=1024 count=1 status=none
chmod 0400 "$T/munge.key"
munged --key-file="$T/munge.key" --socket="$T/munge/munge.sock" --pid-file="$T/munged.pid" \
    --log-file="$T/munged.log" --seed-file="$T/munge.seed" || { log "munged failed to start"; exit; }

# ---- slurm.conf -------------------------------------------------------------------------------------------------
# Two free ports near a pid-derived base (ctld, slurmd).
pick_port() {
    local p=$1
    while ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$p\$"; do p=$((p + 2)); done
    echo "$p"
}
base=$((20000 + ($$ % 5000) * 2))
ctld_port=$(pick_port "$base")
slurmd_port=$(pick_port $((ctld_port + 1)))
# Job ids unique to this harness, and its own TmpFS: the PMIx plugin keeps per-step folders named after the job id
# (/tmp/spmix_appdir_<uid>_<job>.<step>), so that two harnesses (or a step killed earlier) cannot collide.
first_job_id=$(( ($$ % 60000) * 1000 + 1 ))
mkdir -p "$T/tmp"
mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
cat >"$T/slurm.conf" <<CONF
ClusterName=mntest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.sock,cred_expire=10
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
FirstJobId=$first_job_id
TmpFS=$T/tmp
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=${MN_SLURM_PREEMPT_MODE:-REQUEUE}
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=${MN_SLURM_GRACE:-20}
PartitionName=urgent Nodes=$host Default=NO MaxTime=INFINITE State=UP PriorityTier=2
CONF
export SLURM_CONF="$T/slurm.conf"
export MN_SLURM_DIR="$T"
# Jobs must not inherit the settings of an outer allocation.
unset SLURM_JOB_ID SLURM_JOBID SLURM_NTASKS SLURM_NPROCS SLURM_STEP_NUM_TASKS SLURM_CPUS_PER_TASK

# ---- daemons ----------------------------------------------------------------------------------------------------
slurmctld -c -f "$SLURM_CONF" || { log "slurmctld failed to start"; exit; }
slurmd -f "$SLURM_CONF" || { log "slurmd failed to start"; exit; }
state=
for _ in $(seq 1 300); do
    state=$(sinfo -h -o %T 2>/dev/null | head -n 1)
    [ "$state" = idle ] && break
    sleep 0.1
done
if [ "$state" != idle ]; then log "node never became idle (state '$state')"; exit; fi
log "Slurm up in $T: node $host idle with $cpus CPUs, ports $ctld_port/$slurmd_port"

# ---- the command ------------------------------------------------------------------------------------------------
# In the background so that a TERM/INT to the harness runs its trap at once (bash defers traps while a foreground
# child runs); the trap stops the command first.
timeout --signal=TERM --kill-after=10 "${MN_SLURM_TIMEOUT:-200}" "$@" &
cmd_pid=$!
wait "$cmd_pid"
status=$?
cmd_pid=
[ "$status" -eq 124 ] && log "command timed out after ${MN_SLURM_TIMEOUT:-200} s"
log "command exited with status $status"
exit "$status"
