# shellcheck shell=bash
# mednet_job.sh: the shared body of jobs/pretrain.sbatch, finetune.sbatch and prep.sbatch (sourced, not run).
#
# Settings.  A job script must work under `sbatch --export=NONE`, where the job sees none of the submitting shell's
# variables, so every setting below can come in two ways: as an environment variable (sbatch's default
# --export=ALL), or as a NAME=value argument after the script name, which works with any --export:
#     sbatch --export=NONE -N 2 --ntasks-per-node=8 jobs/pretrain.sbatch MEDNET_CONFIG=... MEDNET_OUT=... [k=v ...]
# Arguments win over the environment.  Remaining arguments (section.key=value) go to mednet as overrides.
#   MEDNET_BIN        the mednet executable (default: <repo>/build/mednet of the tree holding this script, else
#                     <prefix>/bin/mednet of an installed share/mednet/jobs, else mednet on the PATH)
#   MEDNET_CONFIG     the configuration (INI)          (pretrain/finetune: required; prep: configs/corpus_mricron.ini)
#   MEDNET_OUT        output directory (pretrain/finetune: required)
#   MEDNET_CORPUS     the corpus file to write (prep: required)
#   MEDNET_OUT_KEY    the config key that receives MEDNET_OUT (default train.out_dir)
#   MEDNET_OVERRIDES  extra "section.key=value" overrides, space separated
#   MEDNET_SRUN_MPI   srun's --mpi plugin (e.g. pmix); unset: no --mpi, i.e. the site's MpiDefault
#   MEDNET_SRUN_ARGS  extra srun options, e.g. "--cpu-bind=cores"
#   MEDNET_LAUNCHER   what starts the ranks: `srun` (default), or the MPI library's launcher inside the allocation,
#                     e.g. "mpiexec.hydra" (MPICH, Intel MPI) or "mpirun" (Open MPI), run as `LAUNCHER -n $SLURM_NTASKS`
#                     (it takes the nodes and tasks per node from Slurm's variables; MEDNET_SRUN_* are then unused)
#   MEDNET_MODULES    environment modules to `module load` first, space separated (ignored, with a warning, where
#                     there is no module command)
# Partition, account, QOS, nodes, tasks and time: on the sbatch command line (-p, -A, -N, --ntasks-per-node, -t), or
# Slurm's own SBATCH_PARTITION / SBATCH_ACCOUNT / SBATCH_QOS / SBATCH_TIMELIMIT in the submitting shell (sbatch reads
# those itself, whatever --export says).  No script fixes a task or node count.
#
# Signals and requeue (pretrain, finetune).  mednet, on an agreed SIGUSR1 or SIGTERM, checkpoints at the next step
# boundary and rank 0 then leaves <MEDNET_OUT>/REQUEUE; the marker, not the exit status, says "progress saved"
# (launchers lose or rewrite a rank's exit status 99: MPICH's Hydra, srun --kill-on-bad-exit).  What Slurm 22.05
# delivers, and what this script makes of it:
#   pre-timeout  --signal=B:USR1@T: SIGUSR1 to the batch shell only.  The trap forwards it to the srun step; on the
#                marker the job is requeued.  (Also `scancel -b -s USR1 JOB`: "checkpoint and requeue me".)
#   preemption   with GraceTime, SIGTERM to the job steps only (the ranks), not to the batch shell; with
#                PreemptParameters=send_user_signal, the --signal USR1 to the batch shell instead.  Either way the
#                ranks checkpoint and the shell, not signalled itself, requeues on the marker.
#   scancel      a plain `scancel JOB` sends SIGTERM to the batch shell AND to every step.  The ranks still
#                checkpoint (forwarded TERM), but the job is NOT requeued: it ends CANCELLED.  Resubmit to resume.
# Rule: requeue iff the marker is there, the batch shell got no SIGTERM, and Slurm still reports the job RUNNING (a
# cancel marks it at once, before any signal).  The time limit itself is a SIGTERM too: leave T larger than one step
# plus one checkpoint write plus Slurm's lateness (up to a minute), or the job ends in TIMEOUT without a requeue.

MN_EXIT_REQUEUE=99   # must equal MN_EXIT_REQUEUE in include/mednet/signals.h

mn_log() { echo "[$mn_job_name $(date -u +%FT%TZ)] $*"; }

# mn_job_settings NAME ARGS...: read NAME=value settings from ARGS (the rest land in mn_args), set defaults, load
# modules, set threads and the environment of the ranks.  `mn_here` must hold this file's folder.
mn_job_settings() {
    : "${mn_here:?the job script sets mn_here to the folder of mednet_job.sh}"
    mn_job_name=$1
    shift
    mn_args=()
    local a
    for a in "$@"; do
        case $a in
        MEDNET_BIN=* | MEDNET_CONFIG=* | MEDNET_OUT=* | MEDNET_CORPUS=* | MEDNET_OUT_KEY=* | MEDNET_OVERRIDES=* | \
            MEDNET_SRUN_MPI=* | MEDNET_SRUN_ARGS=* | MEDNET_LAUNCHER=* | MEDNET_MODULES=*)
            export "${a%%=*}=${a#*=}" ;;
        *) mn_args+=("$a") ;;
        esac
    done
    if [ -z "${MEDNET_BIN:-}" ]; then
        # A source tree's build, an installed prefix (share/mednet/jobs -> bin), or the PATH.
        MEDNET_BIN=$mn_here/../build/mednet
        [ -x "$MEDNET_BIN" ] || MEDNET_BIN=$mn_here/../../../bin/mednet
        [ -x "$MEDNET_BIN" ] || MEDNET_BIN=$(command -v mednet || echo "$mn_here/../build/mednet")
    fi
    MEDNET_OUT_KEY=${MEDNET_OUT_KEY:-train.out_dir}
    MEDNET_OVERRIDES=${MEDNET_OVERRIDES:-}
    MEDNET_SRUN_ARGS=${MEDNET_SRUN_ARGS:-}
    MEDNET_SRUN_MPI=${MEDNET_SRUN_MPI:-}
    MEDNET_LAUNCHER=${MEDNET_LAUNCHER:-srun}
    if [ -n "${MEDNET_MODULES:-}" ]; then
        # Under --export=NONE the shell function `module` may be missing: try the usual init scripts.
        if ! type module >/dev/null 2>&1; then
            for f in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh "${MODULESHOME:-/nonexistent}/init/bash"; do
                # shellcheck disable=SC1090
                [ -r "$f" ] && . "$f" && break
            done
        fi
        if type module >/dev/null 2>&1; then
            # shellcheck disable=SC2086  # a list of modules
            module load $MEDNET_MODULES || { mn_log "module load $MEDNET_MODULES failed"; exit 1; }
        else
            mn_log "warning: no module command here; MEDNET_MODULES='$MEDNET_MODULES' not loaded"
        fi
    fi
    if [ ! -x "$MEDNET_BIN" ]; then
        mn_log "MEDNET_BIN '$MEDNET_BIN' is not an executable (set MEDNET_BIN, or build <repo>/build/mednet)"
        exit 1
    fi
    # One rank per task, SLURM_CPUS_PER_TASK threads per rank (BLIS and OpenMP); no oversubscription of cores.
    export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
    export BLIS_NUM_THREADS=$OMP_NUM_THREADS
    # Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch: without this each rank's step gets one
    # CPU and, with CPU binding, all its threads share one core.
    [ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
    # Parallel file systems (Lustre, GPFS) often lack the POSIX locks HDF5 1.10+ takes on open.
    export HDF5_USE_FILE_LOCKING=FALSE
    # `sbatch --export=NONE` leaves SLURM_EXPORT_ENV=NONE behind, which srun would obey too: the ranks would not see
    # the variables above (nor PATH, nor the modules' libraries).  The job's own environment is the one to pass on.
    export SLURM_EXPORT_ENV=ALL
    if [ "$MEDNET_LAUNCHER" = srun ]; then
        mn_launch=(srun --kill-on-bad-exit=1)
        [ -n "$MEDNET_SRUN_MPI" ] && mn_launch+=(--mpi="$MEDNET_SRUN_MPI")
        # shellcheck disable=SC2206  # MEDNET_SRUN_ARGS and MEDNET_OVERRIDES are word lists on purpose
        mn_launch+=($MEDNET_SRUN_ARGS)
    else
        # The MPI library's own launcher inside the allocation (Hydra's mpiexec, Open MPI's mpirun): it reads the
        # nodes and tasks per node from Slurm's variables and starts its daemons or proxies with srun itself.
        if [ -n "$MEDNET_SRUN_MPI$MEDNET_SRUN_ARGS" ]; then
            mn_log "warning: MEDNET_LAUNCHER='$MEDNET_LAUNCHER': MEDNET_SRUN_MPI and MEDNET_SRUN_ARGS are not used"
        fi
        # shellcheck disable=SC2206  # a command line
        mn_launch=($MEDNET_LAUNCHER -n "${SLURM_NTASKS:-1}")
    fi
    # shellcheck disable=SC2206,SC2034  # used by the job scripts
    mn_overrides=($MEDNET_OVERRIDES)
}

# mn_job_state: the job's state as slurmctld reports it now (RUNNING, COMPLETING, ...), or "" outside Slurm.
mn_job_state() {
    [ -n "${SLURM_JOB_ID:-}" ] || return 0
    scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | tr ' ' '\n' | sed -n 's/^JobState=//p' | head -n 1
}

# mn_job_run_requeueable COMMAND...: run COMMAND (srun ..., or MEDNET_LAUNCHER ...) in the background with the
# signal traps, wait for it, then requeue the job or exit with its status by the rule above.  Never returns.
mn_job_run_requeueable() {
    local marker=$MEDNET_OUT/REQUEUE step_pid='' got_usr1=0 got_term=0 rc state
    # A marker left by an earlier run (cancelled, or killed before it could start) must not requeue this one.
    rm -f "$marker"
    trap 'got_usr1=1; mn_log "caught SIGUSR1 (time limit near, or preemption); forwarding it to the job step";
          [ -n "$step_pid" ] && kill -s USR1 "$step_pid" 2>/dev/null' USR1
    trap 'got_term=1; mn_log "caught SIGTERM (cancelled); forwarding it to the job step: it checkpoints, no requeue";
          [ -n "$step_pid" ] && kill -s TERM "$step_pid" 2>/dev/null' TERM
    if [ "${mn_early_usr1:-0}" = 1 ]; then
        mn_log "warning: SIGUSR1 came before the run started (a time limit shorter than the --signal lead time?);" \
            "ignored: the run goes on to the time limit"
    fi
    "$@" &
    step_pid=$!
    # `wait` returns early (status > 128) when a trapped signal arrives; keep waiting until the step has ended.
    while :; do
        wait "$step_pid"
        rc=$?
        if [ "$rc" -gt 128 ] && kill -0 "$step_pid" 2>/dev/null; then continue; fi
        break
    done
    if [ ! -f "$marker" ]; then
        mn_log "job step ended with status $rc"
        exit "$rc"
    fi
    mn_log "the run left $marker: $(head -n 1 "$marker") ($(sed -n 's/^checkpoint: //p' "$marker"))"
    state=$(mn_job_state)
    if [ "$got_term" -eq 1 ] || { [ -n "$state" ] && [ "$state" != RUNNING ]; }; then
        mn_log "job ${SLURM_JOB_ID:-?} was cancelled (state ${state:-?}): not requeueing; resubmit to resume"
        exit "$MN_EXIT_REQUEUE"
    fi
    if [ -z "${SLURM_JOB_ID:-}" ]; then
        mn_log "not under Slurm: run the same command again to resume"
        exit "$MN_EXIT_REQUEUE"
    fi
    mn_log "requeueing job $SLURM_JOB_ID (step status $rc$([ "$got_usr1" -eq 1 ] && echo ", after SIGUSR1"))"
    scontrol requeue "$SLURM_JOB_ID" || { mn_log "scontrol requeue failed; resubmit by hand to resume"; exit 1; }
    exit 0
}
