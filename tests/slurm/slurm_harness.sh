#!/bin/bash
# slurm_harness.sh: run a command against a private Slurm started here (one node, or N nodes in network namespaces)
# and always stopped on exit.
#
#   tests/slurm/slurm_harness.sh [--cpus N] [--nodes N] COMMAND [ARGS...]
#
# Starts, under a fresh temporary directory: munged with its own key, socket, pid, log and seed files; slurmctld and
# slurmd (Debian's Slurm 22.05) with a generated slurm.conf (CPUs=N advertised per node through
# SlurmdParameters=config_overrides, MpiDefault=pmix, no accounting, random free ports so that two harnesses can run
# side by side).  Waits until every node is idle, then runs COMMAND with
#   SLURM_CONF     the generated slurm.conf (sbatch, srun, squeue, scontrol, sinfo all read it)
#   MN_SLURM_DIR   the temporary directory (put job output there)
#   MN_SLURM_NODES the node names, space separated
# and exits with COMMAND's status.  cred_expire=10 (default 120): slurmctld holds a requeued job back for
# cred_expire + 1 s, which would otherwise dominate the requeue test; sched_interval=2 (default 60) starts it as
# soon as it may.  Two partitions for the preemption test: `test` (default, PriorityTier=1, GraceTime
# MN_SLURM_GRACE, default 20 s) and `urgent` (PriorityTier=2), PreemptType=preempt/partition_prio with PreemptMode
# MN_SLURM_PREEMPT_MODE (default REQUEUE): an `urgent` job preempts `test` jobs.  Job ids start at a pid-derived
# FirstJobId and TmpFS is private to the harness, so that the PMIx plugin's per-step folders (named after the job
# id) never collide with another harness's.
#
# --nodes 1 (the default): this host is the controller and the only node (slurmd in the host's namespaces).
# --nodes N (N >= 2): N compute nodes mn-node1..N on this one machine, each a real "other host" to the software on
# it.  (Debian's Slurm 22.05 does run in multiple-slurmd mode: `slurmd -N v1` and `slurmd -N v2` with per-node Port=
# and %n in the spool, pid and log paths both register idle.  But such nodes share one host name, one network stack
# and one /tmp: the software on them sees one host.)  So each slurmd runs in namespaces of its own:
#   network  `ip netns add mn<tag>-n<i>` with a veth pair: eth0 inside (10.A.B.<i>/24), the other end on a bridge
#            mn<tag>br in the host namespace that holds 10.A.B.254, the controller's address (A.B derived from the
#            pid, skipping subnets in use).  Each node has its own loopback and sees the others only over the veths,
#            so MPI between nodes goes over TCP (Open MPI's tcp BTL; shared memory only within a node).
#   UTS      its own host name, mn-node<i> (slurmd finds its NodeName from it; the ranks see it).
#   mount    a private mount namespace (`unshare --mount`), in which the node's own folder
#            <dir>/nodes/mn-node<i> is bind-mounted on <dir>/node (SlurmdSpoolDir, SlurmdPidFile, SlurmdLogFile and
#            TmpFS are under <dir>/node: one slurm.conf, per-node files) and a generated hosts file on /etc/hosts
#            (the node names and the controller, for launchers that resolve host names, e.g. MPICH's Hydra).
#            The nodes share one kernel, hence one boot id: UCX (MPICH's ch4:ucx here) takes that for one machine
#            and joins ranks of different nodes through shared memory; Open MPI's ob1 goes by the node names and
#            uses tcp.  MN_SLURM_OWN_BOOT_ID=1 gives each node a boot id of its own (bind-mounted on
#            /proc/sys/kernel/random/boot_id), so that UCX uses tcp between the nodes too; with it, MPICH jobs
#            exchanged data over tcp but a run checkpointing on SIGUSR1 hung at exit (seen 2 of 2), so it is off.
# The controller, munged (a Unix socket, reachable from every namespace) and COMMAND stay in the host namespace.
#
# On any exit (success, failure, ^C) the trap cancels the remaining jobs, stops the daemons by the PIDs in their
# pid files (never by name), ends whatever is still running inside this harness's namespaces (`ip netns pids`, i.e.
# only processes in namespaces it created), deletes the namespaces, the veth pairs and the bridge, then removes the
# directory (MN_SLURM_KEEP=1 keeps it); the daemon logs are printed when COMMAND failed.
# COMMAND is stopped after MN_SLURM_TIMEOUT seconds (default 200), below ctest's timeout: ctest kills a timed-out
# test with SIGKILL, which no trap survives, and the daemons (detached) and namespaces would outlive it.
# Needs root (SlurmUser=root; namespaces).
set -u
cpus=4
nodes=1
while [ $# -gt 0 ]; do
    case $1 in
    --cpus) cpus=$2; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--cpus N] [--nodes N] COMMAND [ARGS...]" >&2; exit 2; }
case $nodes in [1-9] | [1-9][0-9]) ;; *) echo "slurm_harness: --nodes takes 1..99, not '$nodes'" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "slurm_harness: must run as root (SlurmUser=root, private munged)" >&2; exit 2; }
for exe in munged slurmctld slurmd sbatch srun sinfo squeue scontrol scancel; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || {
        echo "slurm_harness: '$exe' not found; install:" \
            "apt-get install --no-install-recommends slurmctld slurmd slurm-client munge" >&2
        exit 2
    }
done
export PATH="$PATH:/usr/sbin"
if [ "$nodes" -gt 1 ]; then
    for exe in ip unshare; do
        command -v "$exe" >/dev/null 2>&1 || {
            echo "slurm_harness: --nodes $nodes needs '$exe' (apt-get install iproute2 util-linux)" >&2
            exit 2
        }
    done
fi

T=$(mktemp -d /tmp/mn-slurm.XXXXXX) || exit 2
chmod 755 "$T"   # munge's socket directory must be reachable by everyone
mkdir -p "$T/state" "$T/munge"
chmod 755 "$T/munge"
host=$(hostname)
log() { echo "[slurm_harness $(date -u +%T)] $*"; }

stop_pid() { # stop_pid PID NAME: TERM, wait up to 10 s, then KILL
    local pid=$1 name=$2 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name (pid $pid) did not stop on SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null
}
stop_pid_file() { # stop_pid_file FILE NAME
    [ -s "$1" ] || return 0
    stop_pid "$(cat "$1")" "$2"
}

# Names of this harness's network objects (interface names: at most 15 characters).
tag=$(printf %x $$)
bridge=mn${tag}br
node_names=()
netns_made=()   # namespaces created so far (cleanup deletes exactly these)
if [ "$nodes" -eq 1 ]; then
    node_names=("$host")
else
    for i in $(seq 1 "$nodes"); do node_names+=("mn-node$i"); done
fi
node_dir() { # the folder a node's slurmd keeps its spool, pid file, log and TmpFS in (seen from the host)
    if [ "$nodes" -eq 1 ]; then echo "$T/node"; else echo "$T/nodes/$1"; fi
}

status=1
cmd_pid=
cleanup() {
    trap - EXIT INT TERM
    local n ns pids
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
    for n in "${node_names[@]}"; do stop_pid_file "$(node_dir "$n")/slurmd.pid" "slurmd of $n"; done
    stop_pid_file "$T/slurmctld.pid" slurmctld
    stop_pid_file "$T/munged.pid" munged
    # Whatever still runs in a namespace of ours (a slurmstepd, a rank) is ours: end it by pid, then drop the
    # namespace (its veth end goes with it, and the host end with that) and the bridge.
    for ns in "${netns_made[@]}"; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        if [ -n "$pids" ]; then
            log "ending processes left in $ns: $(echo "$pids" | tr "\n" " ")"
            for p in $pids; do stop_pid "$p" "process in $ns"; done
        fi
        ip netns del "$ns" 2>/dev/null || log "could not delete network namespace $ns"
    done
    for i in $(seq 1 "${#netns_made[@]}"); do ip link del "mn${tag}h$i" 2>/dev/null; done
    ip link show "$bridge" >/dev/null 2>&1 && { ip link del "$bridge" || log "could not delete bridge $bridge"; }
    if [ "$status" -ne 0 ]; then
        for f in "$T/slurmctld.log" "$T/munged.log" "$T"/node/slurmd.log "$T"/nodes/*/slurmd.log; do
            [ -s "$f" ] && { echo "---- last lines of ${f#"$T"/}"; tail -n 25 "$f"; }
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

# ---- network (--nodes >= 2) ---------------------------------------------------------------------------------------
ctld_addr=127.0.0.1
node_addrs=(127.0.0.1)
if [ "$nodes" -gt 1 ]; then
    # A /24 in 10.128.0.0/9 derived from the pid, moved on while any address in it is in use here.
    a=$((128 + ($$ / 250) % 120)) b=$(($$ % 250))
    while ip -4 addr show | grep -q "inet 10\.$a\.$b\."; do b=$(((b + 1) % 250)); done
    net=10.$a.$b
    ctld_addr=$net.254
    node_addrs=()
    ip link add "$bridge" type bridge || { log "cannot create bridge $bridge"; exit; }
    ip addr add "$ctld_addr/24" dev "$bridge" && ip link set "$bridge" up || { log "cannot set up $bridge"; exit; }
    {
        echo "127.0.0.1 localhost"
        echo "$ctld_addr $host"
        for i in $(seq 1 "$nodes"); do echo "$net.$i mn-node$i"; done
    } >"$T/hosts"
    for i in $(seq 1 "$nodes"); do
        ns=mn$tag-n$i
        ip netns add "$ns" || { log "cannot create network namespace $ns"; exit; }
        netns_made+=("$ns")
        ip link add "mn${tag}h$i" type veth peer name "mn${tag}n$i" &&
            ip link set "mn${tag}n$i" netns "$ns" &&
            ip link set "mn${tag}h$i" master "$bridge" &&
            ip link set "mn${tag}h$i" up &&
            ip -n "$ns" link set "mn${tag}n$i" name eth0 &&
            ip -n "$ns" addr add "$net.$i/24" dev eth0 &&
            ip -n "$ns" link set eth0 up &&
            ip -n "$ns" link set lo up || { log "cannot wire $ns to $bridge"; exit; }
        node_addrs+=("$net.$i")
    done
    log "network: bridge $bridge $ctld_addr/24, nodes ${node_addrs[*]} in namespaces ${netns_made[*]}"
fi
mkdir -p "$T/node"
for n in "${node_names[@]}"; do mkdir -p "$(node_dir "$n")/spool" "$(node_dir "$n")/tmp"; done
if [ "$nodes" -gt 1 ] && [ "${MN_SLURM_OWN_BOOT_ID:-0}" = 1 ]; then
    # A boot id of its own per node: UCX (under MPICH's ch4:ucx) takes two processes with the same boot id for one
    # machine and connects them through shared memory, whatever the host names say.
    for n in "${node_names[@]}"; do cat /proc/sys/kernel/random/uuid >"$(node_dir "$n")/boot_id"; done
fi

# ---- slurm.conf -------------------------------------------------------------------------------------------------
# Two free ports near a pid-derived base (ctld, slurmd).  Every slurmd listens on the same port, each in its own
# network namespace.
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
mem=$(awk -v n="$nodes" '/MemTotal/ {print int($2 / 1024 / 2 / n)}' /proc/meminfo)
node_list=$(IFS=,; echo "${node_names[*]}")
cat >"$T/slurm.conf" <<CONF
ClusterName=mntest
SlurmctldHost=$host($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.sock,cred_expire=10
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/node/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/node/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/node/slurmd.log
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
TmpFS=$T/node/tmp
KillWait=5
MinJobAge=300
InactiveLimit=0
PreemptType=preempt/partition_prio
PreemptMode=${MN_SLURM_PREEMPT_MODE:-REQUEUE}
PartitionName=test Nodes=$node_list Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=${MN_SLURM_GRACE:-20}
PartitionName=urgent Nodes=$node_list Default=NO MaxTime=INFINITE State=UP PriorityTier=2
CONF
for i in $(seq 1 "$nodes"); do
    echo "NodeName=${node_names[$((i - 1))]} NodeAddr=${node_addrs[$((i - 1))]} CPUs=$cpus RealMemory=$mem" \
        "State=UNKNOWN" >>"$T/slurm.conf"
done
export SLURM_CONF="$T/slurm.conf"
export MN_SLURM_DIR="$T"
export MN_SLURM_NODES="${node_names[*]}"
# Jobs must not inherit the settings of an outer allocation.
unset SLURM_JOB_ID SLURM_JOBID SLURM_NTASKS SLURM_NPROCS SLURM_STEP_NUM_TASKS SLURM_CPUS_PER_TASK

# ---- daemons ----------------------------------------------------------------------------------------------------
slurmctld -c -f "$SLURM_CONF" || { log "slurmctld failed to start"; exit; }
if [ "$nodes" -eq 1 ]; then
    slurmd -f "$SLURM_CONF" || { log "slurmd failed to start"; exit; }
else
    for i in $(seq 1 "$nodes"); do
        n=${node_names[$((i - 1))]}
        # In the node's network namespace, with a private mount namespace (its folder on <dir>/node, its hosts
        # file) and its own UTS namespace (its host name); slurmd daemonises and stays in them.  Not `ip netns exec`:
        # it mounts a fresh /sys without /sys/fs/cgroup, and slurmd 22.05 will not start without it.
        # shellcheck disable=SC2016  # expanded by the inner shell
        nsenter --net="/run/netns/mn$tag-n$i" unshare --mount --propagation private --uts -- /bin/sh -c \
            'hostname "$1" && mount --bind "$2" "$3" && mount --bind "$4" /etc/hosts &&
             { [ ! -s "$2/boot_id" ] || mount --bind "$2/boot_id" /proc/sys/kernel/random/boot_id; } &&
             exec slurmd -f "$5"' \
            sh "$n" "$(node_dir "$n")" "$T/node" "$T/hosts" "$SLURM_CONF" || { log "slurmd of $n failed to start"; exit; }
    done
fi
state=
for _ in $(seq 1 300); do
    state=$(sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ')
    [ "$state" = "idle " ] && break
    sleep 0.1
done
if [ "$state" != "idle " ]; then log "nodes never all became idle (states: $state)"; exit; fi
log "Slurm up in $T: $nodes node(s) ${node_names[*]} idle with $cpus CPUs each, ports $ctld_port/$slurmd_port"
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
